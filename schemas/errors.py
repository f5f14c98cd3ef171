"""Validation errors that name every bad field at once."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from meterline.exceptions import MeterlineError


@dataclass(frozen=True)
class FieldProblem:
    field: str  # dotted path, e.g. "data.input_tokens"
    rule: str  # what the value broke, in words

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidEventError(MeterlineError, ValueError):
    """A usage event broke the contract. `problems` lists each field and rule."""

    def __init__(self, problems: list[FieldProblem]):
        self.problems = problems
        super().__init__("invalid usage event: " + "; ".join(str(p) for p in problems))

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]

    @classmethod
    def from_validation_error(cls, error: ValidationError, prefix: str = "") -> InvalidEventError:
        problems = []
        from meterline.schemas.usage import PATTERN_RULES  # usage.py imports this module

        for item in error.errors(include_url=False):
            path = ".".join(str(part) for part in item["loc"]) or "event"
            rule = item["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators' words
            if item["type"] == "string_pattern_mismatch":
                rule = PATTERN_RULES.get(str((item.get("ctx") or {}).get("pattern")), rule)
            problems.append(FieldProblem(prefix + path, rule))
        return cls(problems)

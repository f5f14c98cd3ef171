"""Errors the pricing domain raises on purpose, each carrying what a caller needs to act."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meterline.exceptions import MeterlineError


class PricingError(MeterlineError):
    """Base class of every pricing, plan, cycle and invoice error."""


class UnknownModelError(PricingError):
    """The model is not in the price book and the book has no default model.

    The stream dead-letters the event with this message; nothing is ever priced at zero silently.
    """

    def __init__(self, model: str, known: Sequence[str] = ()) -> None:
        self.model = model
        self.known = tuple(known)
        hint = f" (known: {', '.join(sorted(self.known)[:12])}{', ...' if len(self.known) > 12 else ''})" if known else ""
        super().__init__(f"unknown model {model!r}: not in the price book and no default_model is set{hint}")


class UnknownPlanError(PricingError):
    """A plan id that the catalogue does not define."""

    def __init__(self, plan: str, known: Sequence[str] = ()) -> None:
        self.plan = plan
        self.known = tuple(known)
        super().__init__(f"unknown plan {plan!r} (known: {', '.join(sorted(self.known))})")


class InvalidUsageError(PricingError):
    """Usage figures that cannot be rated, e.g. more cached input tokens than input tokens."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class ConfigProblem:
    """One mistake in a configuration file: the dotted path of the bad key and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ConfigError(PricingError):
    """A price book or plans file is wrong; `problems` lists every mistake found, not just the first."""

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        count = len(self.problems)
        super().__init__(f"{source}: {count} problem{'s' if count != 1 else ''}\n{lines}")

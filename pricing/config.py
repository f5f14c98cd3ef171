"""Reading the YAML configuration: exact decimals, and every mistake reported with its dotted path.

YAML would turn `0.30` into a binary float; the loader below builds a `Decimal` from the
number's own text instead, so a price in a file is exactly the price in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from meterline.pricing.exceptions import ConfigError, ConfigProblem

M = TypeVar("M", bound=BaseModel)


class DecimalLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe YAML loader that reads every float literal as a `Decimal` from its text.

    libyaml's parser when PyYAML has it (its wheels do): a full LiteLLM book loads ~5x faster.
    """


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | str:
    text = str(loader.construct_scalar(node))
    try:
        value = Decimal(text.replace("_", ""))
    except InvalidOperation:
        return text  # `.inf`, `.nan`: left as text so validation rejects it with its path
    return value if value.is_finite() else text


DecimalLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def default_path(name: str) -> Path:
    """The shipped default file `name` (``prices.yaml`` or ``plans.yaml``)."""
    return Path(str(resources.files("meterline.pricing").joinpath("defaults", name)))


def read_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with exact decimals; a syntax error becomes a `ConfigError` with its line."""
    try:
        return yaml.load(text, Loader=DecimalLoader)  # noqa: S506 - DecimalLoader is a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        reason = getattr(error, "problem", None) or str(error)
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {reason}")]) from None


def read_yaml(path: Path) -> Any:
    """Read a YAML file; a missing file is a `ConfigError`, not a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), [ConfigProblem("file", f"cannot read: {error.strerror or error}")]) from None
    return read_yaml_text(text, str(path))


def dotted(loc: Sequence[int | str]) -> str:
    """`('plans', 'pro', 'limits', 0)` -> `plans.pro.limits[0]`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _reason(error: Any) -> str:
    """Short reasons people read at a glance, falling back to pydantic's own message."""
    kind, ctx = error["type"], error.get("ctx") or {}
    short: dict[str, Callable[[], str]] = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "missing": lambda: "is required",
        "extra_forbidden": lambda: "unknown key",
        "decimal_parsing": lambda: "must be a number",
        "finite_number": lambda: "must be a finite number",
        "decimal_type": lambda: "must be a number",
    }
    return short[kind]() if kind in short else str(error["msg"])


def problems_from(error: ValidationError, prefix: Sequence[int | str] = ()) -> list[ConfigProblem]:
    """Every pydantic error as a `ConfigProblem` with the dotted path of its key."""
    problems = []
    for item in error.errors():
        # Validator wrappers (`function-after[...]`) can appear in a location; no user wrote that key.
        loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        problems.append(ConfigProblem(dotted([*prefix, *loc]), _reason(item)))
    return problems


def validate(model: type[M], data: Any, source: str) -> M:
    """Validate `data` as `model`, or raise a `ConfigError` listing every problem."""
    if data is None:
        raise ConfigError(source, [ConfigProblem("file", "is empty")])
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, problems_from(error)) from None

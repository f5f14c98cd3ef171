"""Reading the YAML configuration: exact decimals, and every mistake reported with its dotted path.

YAML would turn `0.30` into a binary float; the loader below builds a `Decimal` from the
number's own text instead, so a price in a file is exactly the price in memory. A validated file
can be cached as JSON (`load_cached`): YAML parsing is most of the time a large book takes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from meterline.pricing.exceptions import ConfigError, ConfigProblem

M = TypeVar("M", bound=BaseModel)


@cache
def _decimal_loader() -> type:
    """A safe YAML loader that reads every float literal as a `Decimal` from its text.

    libyaml's parser when PyYAML has it (its wheels do): a full LiteLLM book loads ~5x faster.
    Made on first use: a command whose files are all cached never imports PyYAML.
    """
    import yaml

    class DecimalLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    def construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | str:
        text = str(loader.construct_scalar(node))
        try:
            value = Decimal(text.replace("_", ""))
        except InvalidOperation:
            return text  # `.inf`, `.nan`: left as text so validation rejects it with its path
        return value if value.is_finite() else text

    DecimalLoader.add_constructor("tag:yaml.org,2002:float", construct_decimal)
    return DecimalLoader


def default_path(name: str) -> Path:
    """The shipped default file `name` (``prices.yaml`` or ``plans.yaml``)."""
    return Path(str(resources.files("meterline.pricing").joinpath("defaults", name)))


def read_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with exact decimals; a syntax error becomes a `ConfigError` with its line."""
    import yaml

    try:
        return yaml.load(text, Loader=_decimal_loader())  # noqa: S506 - a SafeLoader
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


def load_cached(path: Path, model: type[M], cache_dir: Path | None, parse: Callable[[], M],
                inputs: Sequence[Path] = ()) -> M:
    """`parse()`, or, with `cache_dir`, what it returned for the same files last time.

    The entry is keyed by the path, size and modification time of `path`, of the other files
    the result depends on (`inputs`) and of this package's code (which defines what is valid).
    Only a result that validated is cached, so every mistake is still reported from the file
    itself. A full LiteLLM book: ~0.3 s to parse, ~0.04 s from the cache.
    """
    entry = _cache_entry(path, inputs, cache_dir) if cache_dir is not None else None
    if entry is not None:
        try:
            return model.model_validate_json(entry.read_bytes())
        except (OSError, ValueError):
            pass  # absent, unreadable or damaged: parse the file
    value = parse()
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(value.model_dump_json(), encoding="utf-8")
            partial.replace(entry)  # atomic: a reader sees a whole entry or none
        except OSError:
            pass  # a read-only cache only costs time
    return value


def _cache_entry(path: Path, inputs: Sequence[Path], cache_dir: Path) -> Path | None:
    try:
        stamps = [_stamp(file.resolve()) for file in (path, *inputs)]
    except OSError:
        return None  # read_yaml reports it
    key = "\n".join([*stamps, *_code_stamps()])
    return cache_dir / "pricing" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


@cache
def _code_stamps() -> tuple[str, ...]:
    return tuple(_stamp(file) for file in sorted(Path(__file__).parent.glob("*.py")))


def _stamp(file: Path) -> str:
    """What changes when the file does: its path, size and modification time (one stat)."""
    stat = file.stat()
    return f"{file}|{stat.st_size}|{stat.st_mtime_ns}"

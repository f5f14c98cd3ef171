"""Build our price book from LiteLLM's model price map (`model_prices_and_context_window.json`).

LiteLLM prices per token as JSON numbers; we read them with `parse_float=Decimal` so
`2.5e-06` stays exactly 0.0000025, and multiply by 1,000 exactly. Entries that are not
priced per input and output token (images, audio, rerank...) and the `sample_spec` entry
are skipped and counted, never guessed. Tiered prices (LiteLLM's `..._above_200k_tokens`
keys) are not imported: a call is priced at the base rate whatever its size. A price with
more than 12 decimals per 1,000 tokens (the price book's rule; in LiteLLM's map, float noise
such as `8.900000000000001E-7`, or a repeating decimal) is rounded half-even to 12 decimals,
at most half a unit of 10^-15 USD per token, and counted in `rounded_prices`.

LiteLLM names a model as each provider does (`claude-opus-4-20250514`,
`anthropic.claude-opus-4-20250514-v1:0`, `bedrock/us.anthropic...`), while plans and
services often use the undated name (`claude-opus-4`). So each imported model also gets, as
an alias, its *base name*: its name without a provider path (`bedrock/`), region or vendor
prefixes without digits (`us.`, `anthropic.`), a version suffix (`-v1:0`) and a date
(`-20250514`, `-2024-08-06`, `@20240620`). A base name that is itself a model stays that
model. One shared by several models goes to the one named most like the model's maker names
it: a name that lost only a date or version, before one that lost a region or vendor prefix
(Bedrock's `anthropic.`), before one under a provider path (a reseller's `gmi/anthropic/`);
then the shortest, then the first in the file. The others are listed in `ambiguous_aliases`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import yaml

from meterline.pricing.exceptions import ConfigError, ConfigProblem
from meterline.pricing.money import CONFIG_DECIMAL_PLACES, THOUSAND
from meterline.pricing.price_book import price_book_from_text

TOKEN_MODES = frozenset({"chat", "completion", "responses"})


@dataclass(frozen=True)
class LiteLLMImport:
    """The price book YAML, which entries were skipped and why, and what the import adjusted."""

    yaml_text: str
    models: int
    skipped: dict[str, str] = field(default_factory=dict)
    aliases: int = 0
    rounded_prices: int = 0
    ambiguous_aliases: dict[str, list[str]] = field(default_factory=dict)  # base name -> models not chosen


_PROVIDER_PATH = re.compile(r"^.*/")
_PLAIN_PREFIXES = re.compile(r"^(?:[a-z_-]+\.)+(?=[a-z])")  # "us.anthropic." but not "gpt-4." (digits)
_VERSION = re.compile(r"-v\d+(?::\d+)?$|:\d+$")
_DATE = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8})$")


def base_name(model: str) -> str:
    """`bedrock/us.anthropic.claude-opus-4-20250514-v1:0` -> `claude-opus-4` (see the module's docstring)."""
    name = _PLAIN_PREFIXES.sub("", _PROVIDER_PATH.sub("", model))
    return _DATE.sub("", _VERSION.sub("", name))


def _naming_distance(model: str) -> tuple[bool, bool, int]:
    return bool(_PROVIDER_PATH.match(model)), bool(_PLAIN_PREFIXES.match(_PROVIDER_PATH.sub("", model))), len(model)


def base_name_aliases(models: Collection[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """model -> its aliases, and base name -> the models that also had it but were not chosen."""
    candidates: dict[str, list[str]] = {}
    for model in models:
        base = base_name(model)
        if base and base != model and base not in models:
            candidates.setdefault(base, []).append(model)
    aliases: dict[str, list[str]] = {}
    ambiguous: dict[str, list[str]] = {}
    for base, owners in candidates.items():
        chosen = min(owners, key=_naming_distance)  # min() keeps the first of equals: file order breaks ties
        aliases.setdefault(chosen, []).append(base)
        if len(owners) > 1:
            ambiguous[base] = [owner for owner in owners if owner != chosen]
    return aliases, ambiguous


_PRICE_QUANTUM = Decimal(1).scaleb(-CONFIG_DECIMAL_PLACES)
_ROUNDING = Context(prec=76, rounding=ROUND_HALF_EVEN)  # the one place a price is rounded, on purpose


def _per_1k(value: Any) -> tuple[str, bool]:
    """The price per 1,000 tokens as text, and whether it had to be rounded to fit the price book."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"not a number: {value!r}")
    if value < 0:
        raise ValueError(f"negative: {value}")
    exact = Decimal(value) * THOUSAND
    fitted = exact.quantize(_PRICE_QUANTUM, context=_ROUNDING) if -exact.as_tuple().exponent > CONFIG_DECIMAL_PLACES \
        else exact  # type: ignore[operator]
    return format(fitted.normalize(), "f"), fitted != exact


def parse_litellm(text: str | bytes, source: str = "<litellm>") -> dict[str, Any]:
    """Parse the JSON with exact decimals; a bad file is a `ConfigError`."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(source, [ConfigProblem("file", f"not valid JSON: {error}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("file", "must be a JSON object of model name -> prices")])
    return data


def convert_litellm(
    data: Mapping[str, Any],
    *,
    modes: Collection[str] = TOKEN_MODES,
    providers: Collection[str] = (),
    source: str = "<litellm>",
) -> LiteLLMImport:
    """Convert LiteLLM's price map to our YAML price book.

    Keeps entries whose `mode` is in `modes` (missing mode counts as chat) and, when
    `providers` is given, whose `litellm_provider` is one of them.
    """
    models: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    rounded = 0
    for name, entry in data.items():
        if name == "sample_spec":
            continue
        if not isinstance(entry, dict):
            skipped[name] = "not an object"
            continue
        mode = entry.get("mode", "chat")
        provider = entry.get("litellm_provider")
        if mode not in modes:
            skipped[name] = f"mode {mode}"
        elif providers and provider not in providers:
            skipped[name] = f"provider {provider}"
        elif "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
            skipped[name] = "not priced per input and output token"
        else:
            try:
                price: dict[str, Any] = {"provider": provider} if provider else {}
                keys = {"input_per_1k": "input_cost_per_token", "cached_input_per_1k": "cache_read_input_token_cost",
                        "output_per_1k": "output_cost_per_token"}
                for ours, theirs in keys.items():
                    if entry.get(theirs) is not None:
                        price[ours], was_rounded = _per_1k(entry[theirs])
                        rounded += was_rounded
            except ValueError as error:
                problems.append(ConfigProblem(name, str(error)))
                continue
            models[name] = price
    if problems:
        raise ConfigError(source, problems)
    if not models:
        raise ConfigError(source, [ConfigProblem("file", "no model is priced per input and output token")])
    aliases, ambiguous = base_name_aliases(models)
    for model, names in aliases.items():
        models[model]["aliases"] = names
    document = {"version": 1, "currency": "USD", "default_model": None, "models": models}
    header = f"# Price book generated by `meterline pricing import-litellm` from {source}: USD per 1,000 tokens.\n"
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    price_book_from_text(text, "generated price book")  # our own output must load; fail here, not later
    return LiteLLMImport(text, len(models), skipped, sum(map(len, aliases.values())), rounded, ambiguous)

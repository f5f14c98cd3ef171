"""The price book: what each provider charges us, per 1,000 tokens, in exact decimals.

File format (``prices.yaml``)::

    version: 1
    currency: USD
    default_model: null          # or a model name: unknown models are priced as that one
    models:
      gpt-4o:
        provider: openai
        input_per_1k: 0.0025     # USD per 1,000 input tokens
        output_per_1k: 0.01
        cached_input_per_1k: 0.00125   # optional; absent = cached input costs as input
        aliases: [gpt-4o-2024-08-06]

`cached_input_tokens` are the part of `input_tokens` served from the provider's prompt
cache (OpenAI's convention); see README.md.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from meterline.pricing.config import default_path, load_cached, read_yaml, read_yaml_text, validate
from meterline.pricing.exceptions import ConfigError, ConfigProblem, InvalidUsageError, UnknownModelError
from meterline.pricing.money import CONFIG_DECIMAL_PLACES, EXACT

# USD per 1,000 tokens. The dearest models list well under $1; past $10,000 a price is a typo.
MAX_PRICE_PER_1K = Decimal(10_000)
PricePer1k = Field(ge=0, le=MAX_PRICE_PER_1K, decimal_places=CONFIG_DECIMAL_PLACES)


_ONE = Decimal(1)


def tidy(value: Decimal) -> Decimal:
    """The same number without trailing zeros (0.0030 -> 0.003) and never in exponent form (10, not 1E+1)."""
    return value.quantize(_ONE, context=EXACT) if value == value.to_integral_value() else value.normalize(EXACT)


class ModelPrice(BaseModel):
    """Provider prices of one model, in USD per 1,000 tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str | None = None
    input_per_1k: Decimal = PricePer1k
    output_per_1k: Decimal = PricePer1k
    cached_input_per_1k: Decimal | None = Field(default=None, ge=0, le=MAX_PRICE_PER_1K,
                                                decimal_places=CONFIG_DECIMAL_PLACES)
    aliases: tuple[str, ...] = ()

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> Decimal:
        """USD cost of one call, exact under `money.EXACT`; cached tokens are a subset of `input_tokens`."""
        if cached_input_tokens > input_tokens:
            raise InvalidUsageError(
                "cached_input_tokens",
                f"{cached_input_tokens} is more than input_tokens {input_tokens}; cached tokens are part of the input",
            )
        per_input, per_cached, per_output = self._per_token
        return tidy((input_tokens - cached_input_tokens) * per_input + cached_input_tokens * per_cached
                    + output_tokens * per_output)

    @cached_property
    def _per_token(self) -> tuple[Decimal, Decimal, Decimal]:
        """USD per input, cached input and output token: exact (a shift of the decimal point), and no
        division per event. `tidy` makes the cost the same number, written the same, as per 1,000 / 1,000."""
        cached = self.input_per_1k if self.cached_input_per_1k is None else self.cached_input_per_1k
        return (self.input_per_1k.scaleb(-3, EXACT), cached.scaleb(-3, EXACT), self.output_per_1k.scaleb(-3, EXACT))


class PriceBook(BaseModel):
    """Every model we can price. Look models up with `price_of`, never with `models[...]`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    currency: Literal["USD"] = "USD"
    default_model: str | None = None
    models: dict[str, ModelPrice] = Field(min_length=1)

    def problems(self) -> list[ConfigProblem]:
        """Mistakes that span keys: a default or an alias that does not resolve to one model."""
        found: list[ConfigProblem] = []
        if self.default_model is not None and self.default_model not in self.models:
            found.append(ConfigProblem("default_model", f"{self.default_model!r} is not in models"))
        owner: dict[str, str] = {}
        for name, price in self.models.items():
            for index, alias in enumerate(price.aliases):
                path = f"models.{name}.aliases[{index}]"
                if alias in self.models:
                    found.append(ConfigProblem(path, f"{alias!r} is already a model name"))
                elif alias in owner:
                    found.append(ConfigProblem(path, f"{alias!r} is already an alias of {owner[alias]!r}"))
                owner.setdefault(alias, name)
        return found

    @cached_property
    def _canonical(self) -> dict[str, str]:
        """Every name and alias -> the model it prices as: one lookup per event, however large the book."""
        names = {alias: name for name, price in self.models.items() for alias in price.aliases}
        names.update((name, name) for name in self.models)  # a name wins over an alias (problems() flags it)
        return names

    def resolve(self, model: str) -> str:
        """The canonical name `model` is priced as (itself, via an alias, or the default model)."""
        name = self._canonical.get(model)
        if name is not None:
            return name
        if self.default_model is not None:
            return self.default_model
        raise UnknownModelError(model, list(self.models))

    def names(self) -> list[str]:
        """Every model name and alias."""
        return list(self._canonical)

    def knows(self, model: str) -> bool:
        """True when `model` is a name or an alias (the default model does not count)."""
        return model in self._canonical

    def price_of(self, model: str) -> ModelPrice:
        """The prices of `model`; raises `UnknownModelError` when it cannot be priced."""
        return self.models[self.resolve(model)]


def parse_price_book(data: object, source: str) -> PriceBook:
    """Validate already-parsed YAML as a price book, or raise a `ConfigError` listing every problem."""
    book = validate(PriceBook, data, source)
    if problems := book.problems():
        raise ConfigError(source, problems)
    return book


def load_price_book(path: Path | None = None, cache_dir: Path | None = None) -> PriceBook:
    """Load a price book file; `None` loads the shipped defaults (`cache_dir`: see `config.load_cached`)."""
    path = path or default_path("prices.yaml")
    return load_cached(path, PriceBook, cache_dir, lambda: parse_price_book(read_yaml(path), str(path)))


def price_book_from_text(text: str, source: str = "<text>") -> PriceBook:
    """Parse a price book from YAML text (tests, and the LiteLLM import's self-check)."""
    return parse_price_book(read_yaml_text(text, source), source)

"""Rating one usage event: its provider cost in USD and its credits, exactly.

Provider cost is the caller's reported `cost_usd` when the event carries one (the caller saw
the provider's bill, we only see a price list), else the price book's. Credits always come
from the declared credit rules, never from the reported cost, so two customers making the
same call are charged the same credits. README.md has the rule in one paragraph.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from meterline.pricing.catalogue import Catalogue, default_catalogue, load_catalogue
from meterline.pricing.plans import CreditRules
from meterline.pricing.money import THOUSAND
from meterline.pricing.price_book import PriceBook

if TYPE_CHECKING:  # pricing reads events, never builds them: `pricing quote` need not load the schema
    from meterline.schemas import UsageEvent


class Rating(NamedTuple):
    """The outcome of rating one call (a tuple: the worker makes one per event).

    `rule` names the credit rule that applied: ``action:<tier>`` or ``tokens``.
    `model` is the price-book model the call was priced as (an alias or the default model
    resolve to it); `cost_source` says where `provider_cost_usd` came from.
    """

    provider_cost_usd: Decimal
    credits: Decimal
    rule: str
    model: str = ""
    cost_source: Literal["reported", "price_book"] = "price_book"


class Rater:
    """Rates usage with one price book and one set of credit rules (pure, thread-safe, reusable)."""

    def __init__(self, prices: PriceBook, credits: CreditRules) -> None:
        self.prices = prices
        self.rules = credits
        # Per-model credit overrides may name an alias; key them by the canonical name.
        self._per_model = {prices.resolve(name): value for name, value in credits.models.items()}
        # Every name and alias -> (the model it prices as, its prices, its credits per 1,000 tokens):
        # one lookup per event instead of three.
        self._tariffs = {name: (canonical, prices.models[canonical], self.credits_per_1k(canonical))
                         for name in prices.names() for canonical in (prices.resolve(name),)}

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue) -> Rater:
        return cls(catalogue.prices, catalogue.credits)

    @classmethod
    def from_files(cls, prices: Path | None = None, plans: Path | None = None) -> Rater:
        """Load and cross-check both files (`None` = shipped default); raises `ConfigError`."""
        return cls.from_catalogue(load_catalogue(prices, plans))

    def credits_per_1k(self, model: str) -> Decimal:
        """Credits per 1,000 tokens for `model` under the token rule."""
        return self._per_model.get(self.prices.resolve(model), self.rules.per_1k_tokens)

    def rate(self, event: UsageEvent) -> Rating:
        """Rate a validated usage event; raises `UnknownModelError` or `InvalidUsageError`."""
        data = event.data
        return self._rate(data.model, data.input_tokens, data.output_tokens, data.cached_input_tokens, data.action,
                          data.cost_usd)

    def rate_usage(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cached_input_tokens: int = 0,
        action: str | None = None,
        reported_cost_usd: Decimal | None = None,
    ) -> Rating:
        """Rate one call given as figures (what `meterline pricing quote` does).

        Exact when run under `money.EXACT`, as the worker's batches and `pricing quote` are: the
        arithmetic uses the caller's Decimal context, so the hot path pays for no context switch.
        """
        return self._rate(model, input_tokens, output_tokens, cached_input_tokens, action, reported_cost_usd)

    def _rate(self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int,
              action: str | None, reported_cost_usd: Decimal | None) -> Rating:
        tariff = self._tariffs.get(model)
        if tariff is None:  # not a name nor an alias: the default model, or UnknownModelError
            tariff = self._tariffs[self.prices.resolve(model)]  # an error even for action tiers
        canonical, prices, per_1k = tariff
        # Computed even when a cost is reported: it validates the token figures either way.
        book_cost = prices.cost(input_tokens, output_tokens, cached_input_tokens)
        tier = self.rules.actions.get(action) if action is not None else None
        if tier is not None:
            credits, rule = tier.credits, f"action:{action}"
        else:
            credits, rule = Decimal(input_tokens + output_tokens) / THOUSAND * per_1k, "tokens"
        if reported_cost_usd is not None:
            return Rating(reported_cost_usd, credits, rule, canonical, "reported")
        return Rating(book_cost, credits, rule, canonical, "price_book")


@lru_cache(maxsize=1)
def default_rater() -> Rater:
    """A `Rater` over the shipped default price book and plans, built once per process."""
    return Rater.from_catalogue(default_catalogue())

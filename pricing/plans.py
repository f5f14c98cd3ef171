"""The plan catalogue (``plans.yaml``): credit rules and plans, defined once.

Rating, invoices and the public pricing page all read this one file, so they cannot drift
(quota enforcement reads its limits and degradation chains too: processors/holds.py). Each section below documents its keys; README.md states the rules in prose.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from meterline.pricing.exceptions import ConfigProblem, UnknownPlanError
from meterline.pricing.money import CONFIG_DECIMAL_PLACES
from meterline.pricing.price_book import PriceBook

Interval = Literal["month", "year"]


# Bounds that keep one event's credits within what the warehouse and exact sums hold
# (pricing/money.py): a credit is a unit of a product, not of a currency's smallest coin.
MAX_CREDITS_PER_1K = Decimal(10**6)
MAX_CREDITS_PER_ACTION = Decimal(10**9)
CreditsPer1k = Annotated[Decimal, Field(gt=0, le=MAX_CREDITS_PER_1K, decimal_places=CONFIG_DECIMAL_PLACES)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenProfile(_Frozen):
    """A typical call, used only by `plans check` to put a provider cost on a credit."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


class ActionTier(_Frozen):
    """A per-request tier: every event with this `action` costs `credits`, whatever its tokens."""

    credits: Decimal = Field(gt=0, le=MAX_CREDITS_PER_ACTION, decimal_places=CONFIG_DECIMAL_PLACES)
    typical: TokenProfile


class CreditRules(_Frozen):
    """How usage becomes credits. The rule that applies is stated in README.md."""

    target_ratio: Decimal = Field(default=Decimal(3), gt=0, description="revenue : provider cost per credit")
    per_1k_tokens: CreditsPer1k = Field(default=Decimal(1), description="credits per 1,000 tokens")
    models: dict[str, CreditsPer1k] = Field(default_factory=dict, description="per-model credits per 1,000 tokens")
    actions: dict[str, ActionTier] = Field(default_factory=dict)
    token_mix: TokenProfile = TokenProfile(input_tokens=750, output_tokens=250)

    def problems(self, prices: PriceBook) -> list[ConfigProblem]:
        found = [ConfigProblem(f"credits.models.{model}", "is not in the price book")
                 for model in self.models if not prices.knows(model)]
        found += [ConfigProblem(f"credits.models.{model}", f"must be > 0, got {value}")
                  for model, value in self.models.items() if value <= 0]
        if self.token_mix.input_tokens + self.token_mix.output_tokens == 0:
            found.append(ConfigProblem("credits.token_mix", "must have some tokens"))
        return found


class Overage(_Frozen):
    """What happens past the included credits: refuse (`hard_cap`) or charge per credit."""

    mode: Literal["hard_cap", "charge"]
    price_per_credit: Decimal | None = Field(default=None, ge=0)


class Rollover(_Frozen):
    """Unused included credits: `expire` at cycle end, or `rollover` up to `max_credits` for `max_cycles`."""

    mode: Literal["expire", "rollover"] = "expire"
    max_credits: Decimal | None = Field(default=None, ge=0)
    max_cycles: int | None = Field(default=None, ge=1)


class Burst(_Frozen):
    """Short spikes: `multiplier` x the steady rate for `seconds` before throttling."""

    multiplier: Decimal = Field(default=Decimal(2), ge=1)
    seconds: int = Field(default=60, ge=0)


class Limits(_Frozen):
    """Rate limits as margin protection."""

    concurrent_requests: int = Field(ge=1)
    requests_per_minute: int = Field(ge=1, description="steady-state rate")
    burst: Burst = Burst()

    @property
    def burst_requests_per_minute(self) -> Decimal:
        return self.requests_per_minute * self.burst.multiplier


class Plan(_Frozen):
    """One plan: price per cycle, included credits, overage, rollover, limits, degradation chain."""

    name: str = Field(min_length=1)
    description: str = ""
    price: Decimal = Field(ge=0, description="USD per billing cycle")
    interval: Interval = "month"
    included_credits: Decimal = Field(ge=0)
    overage: Overage
    rollover: Rollover = Rollover()
    limits: Limits
    degradation: dict[str, str] = Field(default_factory=dict, description="model -> cheaper model")
    features: tuple[str, ...] = ()

    @property
    def hard_cap(self) -> bool:
        return self.overage.mode == "hard_cap"

    def fallback(self, model: str) -> str | None:
        """The cheaper model a request for `model` would fall back to, or None.

        `plans check` checks that a fallback is cheaper; reserve() routes a request to it when the
        requested model would be refused for balance or rate (processors/holds.py).
        """
        return self.degradation.get(model)

    def chain(self, model: str) -> list[str]:
        """`model` then each fallback in turn; the catalogue guarantees this ends."""
        path = [model]
        while (step := self.degradation.get(path[-1])) is not None and step not in path:
            path.append(step)
        return path

    def problems(self, prefix: str, prices: PriceBook) -> list[ConfigProblem]:
        """Mistakes across keys of this plan, each with its dotted path."""
        found: list[ConfigProblem] = []
        over, roll = self.overage, self.rollover
        if over.mode == "charge" and over.price_per_credit is None:
            found.append(ConfigProblem(f"{prefix}.overage.price_per_credit", "is required when mode is charge"))
        if over.mode == "hard_cap" and over.price_per_credit is not None:
            found.append(ConfigProblem(f"{prefix}.overage.price_per_credit", "set, but mode is hard_cap (nothing is charged past the cap)"))
        if roll.mode == "expire":
            for key in ("max_credits", "max_cycles"):
                if getattr(roll, key) is not None:
                    found.append(ConfigProblem(f"{prefix}.rollover.{key}", "set, but mode is expire (credits do not roll over)"))
        else:
            found += [ConfigProblem(f"{prefix}.rollover.{key}", "is required when mode is rollover")
                      for key in ("max_credits", "max_cycles") if getattr(roll, key) is None]
        return found + self._chain_problems(f"{prefix}.degradation", prices)

    def _chain_problems(self, prefix: str, prices: PriceBook) -> list[ConfigProblem]:
        found: list[ConfigProblem] = []
        for source, target in self.degradation.items():
            for model in (source, target):
                if not prices.knows(model):
                    found.append(ConfigProblem(f"{prefix}.{source}", f"{model!r} is not in the price book"))
        if found:
            return found
        # Cycles are judged on canonical names, so an alias cannot hide a loop.
        canonical = {prices.resolve(s): prices.resolve(t) for s, t in self.degradation.items()}
        reported: set[frozenset[str]] = set()
        for source in self.degradation:
            path = [prices.resolve(source)]
            while (step := canonical.get(path[-1])) is not None:
                if step in path:
                    loop = path[path.index(step):] + [step]
                    if frozenset(loop) not in reported:
                        reported.add(frozenset(loop))
                        found.append(ConfigProblem(f"{prefix}.{source}", f"cycle: {' -> '.join(loop)}"))
                    break
                path.append(step)
        return found


class PlanFile(_Frozen):
    """The whole ``plans.yaml``."""

    version: Literal[1] = 1
    credits: CreditRules = CreditRules()
    plans: dict[str, Plan] = Field(min_length=1)

    def problems(self, prices: PriceBook) -> list[ConfigProblem]:
        found = self.credits.problems(prices)
        for plan_id, plan in self.plans.items():
            found += plan.problems(f"plans.{plan_id}", prices)
        return found

    def plan(self, plan_id: str) -> Plan:
        """The plan called `plan_id`, or `UnknownPlanError`."""
        try:
            return self.plans[plan_id]
        except KeyError:
            raise UnknownPlanError(plan_id, list(self.plans)) from None

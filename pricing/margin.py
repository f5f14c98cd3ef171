"""The credit-to-cost check: does each credit bring `target_ratio` times what it costs us?

For one credit: ratio = revenue per credit / provider cost per credit, and gross margin =
1 - cost / revenue. $0.003 of cost behind a $0.01 credit is a 3.33:1 ratio, a 70 % margin.
A call's cost per credit is its provider cost divided by the credits it is charged, so a
flat tier whose calls grow more expensive shows up here as a lower ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from meterline.pricing.catalogue import Catalogue
from meterline.pricing.invoice import compute_invoice
from meterline.pricing.plans import Plan, TokenProfile
from meterline.pricing.rating import Rater


@dataclass(frozen=True)
class CreditMargin:
    """Revenue and cost of one credit; `ratio` is None when the cost is zero, `gross_margin` when revenue is."""

    revenue_per_credit: Decimal
    cost_per_credit: Decimal
    target_ratio: Decimal

    @property
    def ratio(self) -> Decimal | None:
        return None if self.cost_per_credit == 0 else self.revenue_per_credit / self.cost_per_credit

    @property
    def gross_margin(self) -> Decimal | None:
        return None if self.revenue_per_credit == 0 else 1 - self.cost_per_credit / self.revenue_per_credit

    @property
    def below_target(self) -> bool:
        return self.revenue_per_credit < self.target_ratio * self.cost_per_credit


def credit_margin(revenue_per_credit: Decimal, cost_per_credit: Decimal, target_ratio: Decimal = Decimal(3)) -> CreditMargin:
    """The margin of one credit sold at `revenue_per_credit` that costs `cost_per_credit` to serve."""
    return CreditMargin(revenue_per_credit, cost_per_credit, target_ratio)


def call_margin(revenue_per_credit: Decimal, cost: Decimal, credits: Decimal, target_ratio: Decimal = Decimal(3)) -> CreditMargin:
    """The margin of one call charged `credits` that cost `cost`: its cost per credit is cost / credits."""
    return credit_margin(revenue_per_credit, cost / credits if credits else cost, target_ratio)


def plan_revenue_per_credit(plan: Plan) -> Decimal | None:
    """The least a credit on `plan` earns: included credits (fee / included) or overage, whichever is lower.

    None for a plan that earns nothing (a free plan).
    """
    candidates = []
    if plan.included_credits > 0 and plan.price > 0:
        candidates.append(plan.price / plan.included_credits)
    if plan.overage.mode == "charge" and plan.overage.price_per_credit:
        candidates.append(plan.overage.price_per_credit)
    return min(candidates) if candidates else None


@dataclass(frozen=True)
class MarginRow:
    """One model x tier: the typical call, its cost and credits, and the credit margin."""

    model: str
    tier: str
    call: TokenProfile
    call_cost: Decimal
    credits: Decimal
    margin: CreditMargin


@dataclass(frozen=True)
class MarginReport:
    """Every model x tier priced against one revenue per credit (`revenue_from` says whose)."""

    revenue_from: str
    rows: tuple[MarginRow, ...]
    cheaper_fallback_problems: tuple[str, ...] = ()

    @property
    def flagged(self) -> tuple[MarginRow, ...]:
        return tuple(row for row in self.rows if row.margin.below_target)


def revenue_basis(catalogue: Catalogue, credit_price: Decimal | None = None, plan_id: str | None = None) -> tuple[Decimal, str]:
    """The revenue per credit to check against: explicit price, one plan's, or the lowest of any paying plan."""
    if credit_price is not None:
        return credit_price, f"credit price ${credit_price}"
    plans = {plan_id: catalogue.plan(plan_id)} if plan_id else catalogue.plans
    paying = [(revenue, pid) for pid, plan in plans.items() if (revenue := plan_revenue_per_credit(plan)) is not None]
    if not paying:
        return Decimal(0), f"plan {plan_id} (earns nothing per credit)" if plan_id else "no paying plan"
    revenue, pid = min(paying)
    return revenue, f"plan {pid}, lowest revenue per credit"


def check_margins(catalogue: Catalogue, credit_price: Decimal | None = None, plan_id: str | None = None) -> MarginReport:
    """Price every model x tier (the token rule and each action tier) against one revenue per credit."""
    rater = Rater.from_catalogue(catalogue)
    rules = catalogue.credits
    revenue, source = revenue_basis(catalogue, credit_price, plan_id)
    tiers: list[tuple[str, TokenProfile, str | None]] = [("tokens", rules.token_mix, None)]
    tiers += [(name, tier.typical, name) for name, tier in rules.actions.items()]
    rows = []
    for model in catalogue.prices.models:
        for tier_name, call, action in tiers:
            rating = rater.rate_usage(model, call.input_tokens, call.output_tokens, action=action)
            margin = call_margin(revenue, rating.provider_cost_usd, rating.credits, rules.target_ratio)
            rows.append(MarginRow(model, tier_name, call, rating.provider_cost_usd, rating.credits, margin))
    return MarginReport(source, tuple(rows), tuple(fallback_problems(catalogue)))


def fallback_problems(catalogue: Catalogue) -> list[str]:
    """Degradation steps that do not make a typical call cheaper (legal, but defeat their purpose)."""
    mix = catalogue.credits.token_mix
    prices = catalogue.prices

    def cost(model: str) -> Decimal:
        return prices.price_of(model).cost(mix.input_tokens, mix.output_tokens)

    return [f"plans.{pid}.degradation.{src}: {dst} is not cheaper than {src} (${cost(dst)} vs ${cost(src)} per typical 1,000 tokens)"
            for pid, plan in catalogue.plans.items() for src, dst in plan.degradation.items() if cost(dst) >= cost(src)]


def plan_that_covers(catalogue: Catalogue, credits_used: Decimal, provider_cost: Decimal, interval: str,
                     other_than: str) -> tuple[str, Decimal] | None:
    """The plan (other than `other_than`, billed every `interval`) whose invoice for `credits_used`
    is the lowest above `provider_cost`, with that total; None when no plan would cover it.

    On a hard-cap plan the invoice is its fee: the cap stops usage past its credits, so the cost
    stops growing too.
    """
    covering = sorted((compute_invoice(plan_id, plan, credits_used).total, plan_id)
                      for plan_id, plan in catalogue.plans.items() if plan_id != other_than and plan.interval == interval)
    return next(((plan_id, total) for total, plan_id in covering if total > provider_cost), None)

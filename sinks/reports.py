"""Operator reports over the rated events: the power law of cost per user, the users who carry it
(heavy, top with their model mix, spiking against their own week), the model mix, each billing
entity's cycle and the ones that cost more than they pay.

Dedupe-correct: every query reads `rated_events FINAL`, one row per (org, user, request id)
whether ClickHouse has merged a re-sent or replayed copy yet or not; duplicates live in their own
table and are never summed here. A period is half-open `[start, end)` on the event's time.

Quantiles are exact, lower nearest rank: over n users sorted by cost ascending, the q-quantile is
the cost at position floor(q * n) (0-based, the last one for q * n >= n - 1): ClickHouse's
`quantileExact`. The top 1 % are the ceil(n / 100) costliest users.
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from operator import itemgetter
from typing import Any, NamedTuple

from meterline.pricing.catalogue import Catalogue
from meterline.pricing.cycles import Cycle
from meterline.pricing.invoice import cycle_charge
from meterline.schemas.subscription import Subscription, default_subscription
from meterline.sinks.queries import RATED_EVENTS, Query
from meterline.sinks.warehouse import Warehouse
from meterline.subscriptions import CycleTermsOf, billing_cycle, cycle_terms

LEVELS = (0.5, 0.9, 0.99, 0.999)


# What DateTime64(3) holds: a period reaching past it is clamped (no event can lie outside).
FIRST_INSTANT = datetime(1900, 1, 1, tzinfo=timezone.utc)
LAST_INSTANT = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)


def _stored(instant: datetime) -> datetime:
    return min(max(instant, FIRST_INSTANT), LAST_INSTANT)


def _period_filter(org_id: str | None) -> str:
    org = " AND org_id = {org:String}" if org_id else ""
    return "event_time >= {start:DateTime64(3, 'UTC')} AND event_time < {end:DateTime64(3, 'UTC')}" + org


def _period_parameters(start: datetime, end: datetime, org_id: str | None) -> dict[str, Any]:
    return {"start": _stored(start), "end": _stored(end), **({"org": org_id} if org_id else {})}


def _per_user(start: datetime, end: datetime, org_id: str | None) -> Query:
    """One row per user of the period: provider cost, credits, events, and the model of their costliest event."""
    sql = (f"SELECT org_id, user_id, sum(provider_cost_usd) AS cost, sum(credits) AS credits, count() AS events, "
           f"argMax(model, provider_cost_usd) AS top_model FROM {RATED_EVENTS} FINAL "
           f"WHERE {_period_filter(org_id)} GROUP BY org_id, user_id")
    return sql, _period_parameters(start, end, org_id)


def cost_distribution_query(start: datetime, end: datetime, org_id: str | None = None) -> Query:
    per_user, parameters = _per_user(start, end, org_id)
    levels = ", ".join(str(level) for level in LEVELS)
    sql = (f"SELECT count() AS users, sum(cost) AS total, quantilesExact({levels})(cost) AS quantiles, "
           "arraySum(arraySlice(arrayReverseSort(groupArray(cost)), 1, toUInt64(ceil(count() / 100)))) AS top_cost "
           f"FROM ({per_user})")
    return sql, parameters


def heavy_users_query(start: datetime, end: datetime, org_id: str | None = None, times_median: Decimal = Decimal(10),
                      limit: int = 20) -> Query:
    per_user, parameters = _per_user(start, end, org_id)
    # One pass over the users: the median and the list come from the same aggregation (a CTE used
    # twice was computed twice: 2.4x slower over 10 M events).
    sql = ("SELECT user.1, user.2, user.3, user.4, user.5, user.6, median FROM ("
           "SELECT groupArray((org_id, user_id, cost, credits, events, top_model)) AS users, "
           f"quantileExact(0.5)(cost) AS median FROM ({per_user})) ARRAY JOIN users AS user "
           "WHERE user.3 > median * {times:Decimal(38, 6)} ORDER BY user.3 DESC, user.1, user.2 LIMIT {limit:UInt32}")
    return sql, {**parameters, "times": times_median, "limit": limit}


@dataclass(frozen=True)
class CostDistribution:
    """Provider cost per user over a period (USD, exact)."""

    users: int
    total_cost: Decimal
    quantiles: dict[float, Decimal]  # level -> cost per user
    top_1pct_cost: Decimal  # what the ceil(users / 100) costliest users cost together

    @property
    def top_1pct_share(self) -> Decimal | None:
        return self.top_1pct_cost / self.total_cost if self.total_cost else None

    @property
    def p99_over_median(self) -> Decimal | None:
        median = self.quantiles.get(0.5)
        return self.quantiles[0.99] / median if median else None

    def as_row(self) -> dict[str, Any]:
        return {"users": self.users, "total_cost_usd": self.total_cost,
                **{f"p{level * 100:g}_usd": self.quantiles.get(level) for level in LEVELS},
                "top_1pct_share": self.top_1pct_share, "p99_over_median": self.p99_over_median}


@dataclass(frozen=True)
class HeavyUser:
    org_id: str
    user_id: str
    cost: Decimal
    credits: Decimal
    events: int
    top_model: str  # the model of their costliest event
    times_median: Decimal | None

    def as_row(self) -> dict[str, Any]:
        return {"org_id": self.org_id, "user_id": self.user_id, "cost_usd": self.cost, "credits": self.credits,
                "events": self.events, "top_model": self.top_model, "times_median": self.times_median,
                "suggestion": MOVE_UP}


def cost_distribution(warehouse: Warehouse, start: datetime, end: datetime, org_id: str | None = None) -> CostDistribution:
    users, total, quantiles, top = warehouse.query(cost_distribution_query(start, end, org_id))[0]
    if not users:
        return CostDistribution(0, Decimal(0), {}, Decimal(0))
    return CostDistribution(int(users), Decimal(total), {level: Decimal(value) for level, value in zip(LEVELS, quantiles)},
                            Decimal(top))


def heavy_users(warehouse: Warehouse, start: datetime, end: datetime, org_id: str | None = None,
                times_median: Decimal = Decimal(10), limit: int = 20) -> list[HeavyUser]:
    """Users whose cost is above `times_median` x the median user's, costliest first."""
    rows = warehouse.query(heavy_users_query(start, end, org_id, times_median, limit))
    return [HeavyUser(org, user, Decimal(cost), Decimal(credits), int(events), model,
                      Decimal(cost) / Decimal(median) if median else None)
            for org, user, cost, credits, events, model, median in rows]


def top_users_query(start: datetime, end: datetime, org_id: str | None = None, limit: int = 20) -> Query:
    sql = ("SELECT org_id, user_id, sum(cost) AS total, sum(credits), sum(events), groupArray((model, cost, events)) "
           "FROM (SELECT org_id, user_id, model, sum(provider_cost_usd) AS cost, sum(credits) AS credits, count() AS events "
           f"FROM {RATED_EVENTS} FINAL WHERE {_period_filter(org_id)} GROUP BY org_id, user_id, model) "
           "GROUP BY org_id, user_id ORDER BY total DESC, org_id, user_id LIMIT {limit:UInt32}")
    return sql, {**_period_parameters(start, end, org_id), "limit": limit}


def model_mix_query(start: datetime, end: datetime, org_id: str | None = None) -> Query:
    sql = ("SELECT model, count(), sum(input_tokens), sum(output_tokens), sum(credits), sum(provider_cost_usd) AS cost "
           f"FROM {RATED_EVENTS} FINAL WHERE {_period_filter(org_id)} GROUP BY model ORDER BY cost DESC, model")
    return sql, _period_parameters(start, end, org_id)


def spikes_query(day: datetime, org_id: str | None = None, times_baseline: Decimal = Decimal(3),
                 limit: int = 20) -> Query:
    """Users whose cost in [day, day + 1 day) is above `times_baseline` x their mean daily cost over
    the BASELINE_DAYS before. Compared without dividing (day x days > before x k): exact."""
    day = _stored(day)  # so the week before and the day after exist
    start = day - timedelta(days=BASELINE_DAYS)
    sql = ("SELECT org_id, user_id, sumIf(provider_cost_usd, event_time >= {day:DateTime64(3, 'UTC')}) AS today, "
           "sumIf(provider_cost_usd, event_time < {day:DateTime64(3, 'UTC')}) AS before, "
           "countIf(event_time >= {day:DateTime64(3, 'UTC')}) AS events "
           f"FROM {RATED_EVENTS} FINAL WHERE {_period_filter(org_id)} GROUP BY org_id, user_id "
           "HAVING before > 0 AND today * {days:UInt32} > before * {times:Decimal(38, 6)} "
           "ORDER BY today / before DESC, org_id, user_id LIMIT {limit:UInt32}")
    return sql, {**_period_parameters(start, day + timedelta(days=1), org_id), "day": day,
                 "days": BASELINE_DAYS, "times": times_baseline, "limit": limit}


# What to do about an outlier. A user far above the median, month after month, is a customer the
# plan no longer fits; a sudden jump against the user's own week is a runaway loop, a leaked key
# or abuse, until someone looks.
MOVE_UP = "move to a higher plan"
RATE_LIMIT = "rate-limit"
BASELINE_DAYS = 7


@dataclass(frozen=True)
class ModelShare:
    model: str
    events: int
    cost: Decimal
    share: Decimal | None  # of the whole's cost


@dataclass(frozen=True)
class TopUser:
    org_id: str
    user_id: str
    cost: Decimal
    credits: Decimal
    events: int
    models: list[ModelShare]  # costliest first

    def as_row(self) -> dict[str, Any]:
        mix = ", ".join(m.model if m.share is None else f"{m.model} {m.share:.0%}" for m in self.models)
        return {"org_id": self.org_id, "user_id": self.user_id, "cost_usd": self.cost, "credits": self.credits,
                "events": self.events, "model_mix": mix}


@dataclass(frozen=True)
class ModelUsage:
    model: str
    events: int
    input_tokens: int
    output_tokens: int
    credits: Decimal
    cost: Decimal
    share: Decimal | None

    def as_row(self) -> dict[str, Any]:
        return {"model": self.model, "events": self.events, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "credits": self.credits, "cost_usd": self.cost,
                "cost_share": None if self.share is None else round(self.share, 4)}


@dataclass(frozen=True)
class Spike:
    org_id: str
    user_id: str
    day_cost: Decimal
    baseline: Decimal  # mean daily cost over the BASELINE_DAYS before
    events: int  # on the day

    @property
    def times_baseline(self) -> Decimal:
        return self.day_cost / self.baseline

    def as_row(self) -> dict[str, Any]:
        return {"org_id": self.org_id, "user_id": self.user_id, "day_cost_usd": self.day_cost,
                "baseline_usd_per_day": self.baseline, "times_baseline": round(self.times_baseline, 2),
                "events": self.events, "suggestion": RATE_LIMIT}


def _share(part: Decimal, whole: Decimal) -> Decimal | None:
    return part / whole if whole else None


def top_users(warehouse: Warehouse, start: datetime, end: datetime, org_id: str | None = None,
              limit: int = 20) -> list[TopUser]:
    """The `limit` costliest users of the period, each with the share of their cost per model."""
    found = []
    for org, user, total, credits, events, models in warehouse.query(top_users_query(start, end, org_id, limit)):
        total = Decimal(total)
        mix = sorted((ModelShare(model, int(n), Decimal(cost), _share(Decimal(cost), total)) for model, cost, n in models),
                     key=lambda m: (-m.cost, m.model))
        found.append(TopUser(org, user, total, Decimal(credits), int(events), mix))
    return found


def model_mix(warehouse: Warehouse, start: datetime, end: datetime, org_id: str | None = None) -> list[ModelUsage]:
    """Each model's events, tokens, credits and provider cost in the period, costliest first."""
    rows = warehouse.query(model_mix_query(start, end, org_id))
    total = sum((Decimal(row[5]) for row in rows), Decimal(0))
    return [ModelUsage(model, int(n), int(tokens_in), int(tokens_out), Decimal(credits), Decimal(cost),
                       _share(Decimal(cost), total)) for model, n, tokens_in, tokens_out, credits, cost in rows]


def spikes(warehouse: Warehouse, day: datetime, org_id: str | None = None, times_baseline: Decimal = Decimal(3),
           limit: int = 20) -> list[Spike]:
    """Users whose cost on the UTC day starting at `day` is above `times_baseline` x their own mean
    daily cost over the BASELINE_DAYS before, steepest first. A user with no cost in those days
    has no baseline and is not a spike (heavy_users finds a new user who costs a lot)."""
    rows = warehouse.query(spikes_query(day, org_id, times_baseline, limit))
    return [Spike(org, user, Decimal(today), Decimal(before) / BASELINE_DAYS, int(events))
            for org, user, today, before, events in rows]


class CycleUsage(NamedTuple):
    """One billing entity's current cycle: an org pooling its users, or one user on their own plan.

    A NamedTuple: a cycle report makes one per user (a frozen dataclass took 2.5 us of its 7).

    Revenue is the cycle's charge from the pricing domain (fee, prorated on a plan change, plus
    overage: `cycle_charge`), before grants and carried-over credits, which the warehouse does not hold yet.
    """

    entity: str  # "acme" (an org's pool) or "acme/alice"
    plan: str
    cycle_start: datetime
    cycle_end: datetime
    users: int
    events: int
    credits: Decimal
    input_tokens: int
    output_tokens: int
    provider_cost: Decimal
    included_credits: Decimal
    overage_credits: Decimal
    revenue: Decimal
    note: str = ""

    @property
    def margin(self) -> Decimal | None:
        return 1 - self.provider_cost / self.revenue if self.revenue else None

    def as_row(self) -> dict[str, Any]:
        return {"entity": self.entity, "plan": self.plan, "cycle_start": self.cycle_start.isoformat(),
                "cycle_end": self.cycle_end.isoformat(), "users": self.users, "events": self.events,
                "credits": self.credits, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "provider_cost_usd": self.provider_cost, "included_credits": self.included_credits,
                "overage_credits": self.overage_credits, "revenue_usd": self.revenue, "margin": self.margin,
                "note": self.note}


def _usage_in(start: datetime, end: datetime, org_id: str, only: list[str] | None, excluded: list[str]) -> Query:
    """Each user's usage totals in the period, in no particular order (Python sorts 100,000 rows in
    half the time ClickHouse took)."""
    users = (" AND user_id IN {only:Array(String)}" if only is not None
             else " AND user_id NOT IN {excluded:Array(String)}" if excluded else "")
    # Money as text: one row per user, and clickhouse-connect made a Decimal(76, 18) into a Decimal
    # ~4x slower than Decimal() parses its text (0.2 s of 0.7 over 100,000 users).
    sql = (f"SELECT user_id, count(), toString(sum(credits)), sum(input_tokens), sum(output_tokens), "
           f"toString(sum(provider_cost_usd)) "
           f"FROM {RATED_EVENTS} FINAL WHERE org_id = {{org:String}} AND event_time >= {{start:DateTime64(3, 'UTC')}} "
           "AND event_time < {end:DateTime64(3, 'UTC')}" + users + " GROUP BY user_id")
    return sql, {"org": org_id, "start": _stored(start), "end": _stored(end), "only": only or [], "excluded": excluded}


def _entity(name: str, of: CycleTermsOf, cycle: Cycle, users: int, events: int, credits: Decimal | str,
            input_tokens: int, output_tokens: int, cost: Decimal | str) -> CycleUsage:
    """One entity's cycle on its terms (`cycle_terms`), from its usage totals."""
    credits = Decimal(credits)
    beyond, revenue = cycle_charge(of.terms, credits)
    return CycleUsage(name, of.plan_id, cycle.start, cycle.end, users, events, credits, input_tokens, output_tokens,
                      Decimal(cost), of.terms.included_credits, beyond, revenue, of.note)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Make a large result without the garbage collector's full passes: each walks every object in
    the process, and a query's 100,000 rows plus the report's own set off several (0.1 s of 1.1).
    Rows hold no reference cycles; what else became garbage meanwhile is collected afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _each_user(org_id: str, of: CycleTermsOf, cycle: Cycle, rows: list[Sequence[Any]]) -> list[CycleUsage]:
    """Each user's cycle on the same terms, from their rows (user, events, credits, input, output,
    cost), in user order: `_entity` with what they share looked up once (0.25 s instead of 0.4 over
    100,000 users)."""
    terms, plan, note, included, start, end = of.terms, of.plan_id, of.note, of.terms.included_credits, cycle.start, cycle.end
    found = []
    for user, events, credits, input_tokens, output_tokens, cost in sorted(rows, key=itemgetter(0)):
        credits = Decimal(credits)
        beyond, revenue = cycle_charge(terms, credits)
        found.append(CycleUsage(f"{org_id}/{user}", plan, start, end, 1, events, credits, input_tokens, output_tokens,
                                Decimal(cost), included, beyond, revenue, note))
    return found


def _totals(rows: list[Sequence[Any]]) -> tuple[int, int, Decimal, int, int, Decimal]:
    """The usage totals of an entity's users, from their rows (user, events, credits, input, output, cost)."""
    _users, events, credits, input_tokens, output_tokens, cost = list(zip(*rows)) or [()] * 6  # no rows: no usage
    return (len(rows), sum(events), sum(map(Decimal, credits), Decimal(0)), sum(input_tokens), sum(output_tokens),
            sum(map(Decimal, cost), Decimal(0)))


def cycle_usage(warehouse: Warehouse, org_id: str, subscriptions: dict[str, Subscription], catalogue: Catalogue,
                default_plan: str, at: datetime) -> list[CycleUsage]:
    """Each billing entity of `org_id` in its cycle that contains `at`: the org's pool (or, with no
    org subscription, each user on the default plan, in calendar months) and each user with a
    subscription of their own (`schemas/subscription.py` says which applies)."""
    own = {key.partition("/")[2]: subscription for key, subscription in subscriptions.items()
           if key.startswith(f"{org_id}/") and subscription.since <= at}
    pool = subscriptions.get(org_id)
    found: list[CycleUsage] = []
    if pool is not None and pool.since <= at:
        cycle = billing_cycle(pool, catalogue, at)
        found.append(_entity(org_id, cycle_terms(pool, catalogue, cycle), cycle,
                             *_totals(warehouse.query(_usage_in(cycle.start, cycle.end, org_id, None, sorted(own))))))
    else:
        default = default_subscription(org_id, None, default_plan)
        cycle = billing_cycle(default, catalogue, at)
        of = cycle_terms(default, catalogue, cycle)  # the same for every user on it
        with _collector_paused():
            found.extend(_each_user(org_id, of, cycle, warehouse.query(_usage_in(cycle.start, cycle.end, org_id, None,
                                                                                 sorted(own)))))
    for user, subscription in sorted(own.items()):
        cycle = billing_cycle(subscription, catalogue, at)
        found.append(_entity(f"{org_id}/{user}", cycle_terms(subscription, catalogue, cycle), cycle,
                             *_totals(warehouse.query(_usage_in(cycle.start, cycle.end, org_id, [user], [])))))
    return found


@dataclass(frozen=True)
class Loss:
    """A billing entity whose provider cost this cycle is above its revenue."""

    usage: CycleUsage
    suggestion: str

    def as_row(self) -> dict[str, Any]:
        return {**self.usage.as_row(), "loss_usd": self.usage.provider_cost - self.usage.revenue,
                "suggestion": self.suggestion}


def negative_margins(usages: list[CycleUsage], catalogue: Catalogue, limit: int | None = None) -> list[Loss]:
    """The entities of a cycle report (`cycle_usage`) that cost more than they pay, the largest loss
    first (the `limit` largest, or all); each suggested the plan whose invoice for the same credits
    is the lowest that covers the cost, else a rate limit (no plan pays for this usage)."""
    from meterline.pricing.margin import plan_that_covers

    def largest_loss_first(usage: CycleUsage) -> tuple[Decimal, str]:
        return usage.revenue - usage.provider_cost, usage.entity

    losing = (usage for usage in usages if usage.provider_cost > usage.revenue)
    shown = sorted(losing, key=largest_loss_first) if limit is None else heapq.nsmallest(limit, losing, key=largest_loss_first)
    losses = []
    for usage in shown:  # a suggestion prices every other plan: only for the losses shown
        interval = catalogue.plan(usage.plan).interval
        covering = plan_that_covers(catalogue, usage.credits, usage.provider_cost, interval, other_than=usage.plan)
        suggestion = RATE_LIMIT if covering is None else f"{MOVE_UP}: {covering[0]} (${covering[1]} this cycle)"
        losses.append(Loss(usage, suggestion))
    return losses

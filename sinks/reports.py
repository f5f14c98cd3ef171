"""Operator reports over the rated events: the power law of cost per user, and the users who carry it.

Dedupe-correct: every query reads `rated_events FINAL`, one row per (org, user, request id)
whether ClickHouse has merged a re-sent or replayed copy yet or not; duplicates live in their own
table and are never summed here. A period is half-open `[start, end)` on the event's time.

Quantiles are exact, lower nearest rank: over n users sorted by cost ascending, the q-quantile is
the cost at position floor(q * n) (0-based, the last one for q * n >= n - 1): ClickHouse's
`quantileExact`. The top 1 % are the ceil(n / 100) costliest users.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from meterline.sinks.queries import RATED_EVENTS, Query
from meterline.sinks.warehouse import Warehouse

LEVELS = (0.5, 0.9, 0.99, 0.999)


def _per_user(start: datetime, end: datetime, org_id: str | None) -> Query:
    """One row per user of the period: provider cost, credits, events, and the model they spent most on."""
    org = " AND org_id = {org:String}" if org_id else ""
    sql = (f"SELECT org_id, user_id, sum(provider_cost_usd) AS cost, sum(credits) AS credits, count() AS events, "
           f"argMax(model, provider_cost_usd) AS top_model FROM {RATED_EVENTS} FINAL "
           "WHERE event_time >= {start:DateTime64(3, 'UTC')} AND event_time < {end:DateTime64(3, 'UTC')}" + org +
           " GROUP BY org_id, user_id")
    return sql, {"start": start, "end": end, **({"org": org_id} if org_id else {})}


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
    top_model: str
    times_median: Decimal | None

    def as_row(self) -> dict[str, Any]:
        return {"org_id": self.org_id, "user_id": self.user_id, "cost_usd": self.cost, "credits": self.credits,
                "events": self.events, "top_model": self.top_model, "times_median": self.times_median}


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

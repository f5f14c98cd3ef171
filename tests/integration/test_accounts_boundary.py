"""A generated stream across billing-cycle boundaries, with grants, re-sends, late events and corrections, through two
workers, one of them SIGKILLed while the boundary is in flight: every live account equals a
recomputation done here.

The recomputation is written out independently of processors/accounts.py, from the shipped plans:
Free includes 50 credits a calendar month, expires them, and burns a (non-expiring) top-up after
them; Pro includes 100 a cycle from its anchor and carries what is unused into the next cycle.
A second org is on Pro as a pool: its users' accounts are their shares of it (nothing carried),
and the pool's own account carries what all of them left unused.
Per user, records reach the worker in the order sent (one producer, keyed by user).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
from confluent_kafka import Producer

from meterline.producers import build_event
from meterline.schemas.subscription import Subscription
from meterline.settings import Settings
from meterline.subscriptions import publish
from tests.integration.pipeline import Pipeline, another_worker, running_pipeline, stop, wait_for

ORG = "org-boundary"
POOL_ORG = "org-boundary-pool"
MODEL = "gpt-4o-mini"
PRO_USERS = {f"u{n}" for n in range(0, 30, 3)}
POOL_USERS = {f"u{n}" for n in range(30, 40)}  # of POOL_ORG, the others of ORG


def org_of(user: str) -> str:
    return POOL_ORG if user in POOL_USERS else ORG


@dataclass
class Expected:
    """One user's live account as this test computes it."""

    pro: bool
    pooled: bool = False  # a share of the org's pool: it carries nothing of its own
    cycle_start: datetime | None = None
    used: Decimal = Decimal(0)
    carried: Decimal = Decimal(0)  # Pro: what the previous cycle left of its 100
    grants: list[Decimal] = field(default_factory=list)  # what is left of each grant, in the order given
    lifetime: Decimal = Decimal(0)

    def advance(self, cycle: datetime) -> None:
        """Close the live cycle if `cycle` is a later one (the two cycles here are adjacent)."""
        if self.cycle_start is not None and cycle <= self.cycle_start:
            return
        if self.cycle_start is not None and not self.pooled:
            if self.pro:
                self.carried = max(Decimal(100) - max(self.used - self.carried, Decimal(0)), Decimal(0))
            else:  # Free: the 50 included first, then each grant in turn
                beyond = max(self.used - 50, Decimal(0))
                for index, left in enumerate(self.grants):
                    take = min(beyond, left)
                    self.grants[index], beyond = left - take, beyond - take
                self.grants = [left for left in self.grants if left > 0]
        self.cycle_start, self.used = cycle, Decimal(0)

    def shown(self) -> tuple[str, Decimal, Decimal, Decimal, Decimal]:
        assert self.cycle_start is not None
        return self.cycle_start.isoformat(), self.used, self.carried, sum(self.grants, Decimal(0)), self.lifetime


def calendar_month(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def test_accounts_across_a_boundary_survive_a_sigkill(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # Pro's boundary two days ago, at a day every month has; its anchor one month earlier.
    boundary = (now - timedelta(days=2)).replace(minute=0, second=0)
    boundary = boundary.replace(day=min(boundary.day, 28))
    anchor = boundary.replace(month=boundary.month - 1) if boundary.month > 1 else boundary.replace(year=boundary.year - 1, month=12)
    publish(settings, [Subscription(org_id=ORG, user_id=user, plan="pro", since=anchor) for user in PRO_USERS]
            + [Subscription(org_id=POOL_ORG, plan="pro", since=anchor)])
    month = calendar_month(now)

    def cycle_of(user: str, at: datetime) -> datetime:
        if user in PRO_USERS or user in POOL_USERS:
            return boundary if at >= boundary else anchor
        return month if at >= month else calendar_month(month - timedelta(days=1))

    rng = random.Random(20261201)
    earliest = min(boundary, month) - timedelta(days=2)
    records: list[tuple[str, bytes]] = []
    expected = {f"u{n}": Expected(pro=f"u{n}" in PRO_USERS | POOL_USERS, pooled=f"u{n}" in POOL_USERS) for n in range(40)}
    pool_used: dict[datetime, Decimal] = defaultdict(Decimal)  # POOL_ORG's usage per cycle
    sent: dict[str, list[bytes]] = defaultdict(list)
    counted: dict[str, dict[str, tuple[datetime, int]]] = defaultdict(dict)  # user -> request id -> (time, tokens now)
    for n in range(3000):
        user = f"u{rng.randrange(40)}"
        mine = expected[user]
        # The stream's clock moves forward; some events come from 3 days before it (late, maybe).
        at = earliest + (now - timedelta(minutes=1) - earliest) * n / 3000
        if sent[user] and rng.random() < 0.1:  # a re-send: counted once
            records.append((user, rng.choice(sent[user])))
            continue
        if counted[user] and rng.random() < 0.04:  # a void or an amend of one of the user's counted events
            request_id = rng.choice(sorted(counted[user]))
            when, tokens = counted[user][request_id]
            new_tokens = None if rng.random() < 0.4 else rng.randrange(0, 4000)
            correction = {"type": "dev.meterline.correction.v1", "id": f"c{n}", "org_id": org_of(user), "user_id": user,
                          "request_id": request_id, "action": "void" if new_tokens is None else "amend",
                          "reason": "generated", "time": at.isoformat()}
            if new_tokens is not None:
                correction["amended"] = {"input_tokens": new_tokens}
                counted[user][request_id] = (when, new_tokens)
            else:
                del counted[user][request_id]
            records.append((user, orjson.dumps(correction)))
            difference = (Decimal(new_tokens or 0) - tokens) / 1000
            mine.lifetime += difference
            if cycle_of(user, when) == mine.cycle_start:
                mine.used += difference  # else its cycle is closed: a late correction, only the lifetime total moves
            if mine.pooled:
                pool_used[cycle_of(user, when)] += difference
            continue
        if not mine.pro and rng.random() < 0.03:  # a top-up for a Free user, dated by the stream's clock
            credits = Decimal(rng.randrange(1, 40))
            records.append((user, orjson.dumps({
                "type": "dev.meterline.grant.v1", "id": f"g{n}", "org_id": ORG, "user_id": user, "credits": str(credits),
                "reason": "generated", "time": at.isoformat()})))
            mine.advance(cycle_of(user, at))  # a grant dated in a closed cycle still goes to the live account
            mine.grants.append(credits)
            continue
        if rng.random() < 0.08:
            at -= timedelta(days=3)
        tokens = rng.randrange(1, 250 if mine.pooled else 4000)  # the pool's cycle 1 stays under its 100, any day
        value = build_event(org_of(user), user, MODEL, tokens, 0, request_id=f"r{n}", timestamp=at).to_json()
        sent[user].append(value)
        counted[user][f"r{n}"] = (at, tokens)
        records.append((user, value))
        credits = Decimal(tokens) / 1000
        mine.lifetime += credits
        cycle = cycle_of(user, at)
        mine.advance(cycle)
        if cycle == mine.cycle_start:
            mine.used += credits  # else late: its cycle is closed, only the lifetime total counts it
        if mine.pooled:
            pool_used[cycle] += credits  # the pool counts it in its cycle, whatever order the partitions arrive in
    for user, mine in expected.items():
        mine.advance(cycle_of(user, now))  # a balance read now shows now's cycle

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 5})
    with running_pipeline(settings, with_sink=False) as pipeline:
        other, process = another_worker(settings)
        try:
            for index, (user, value) in enumerate(records):
                producer.produce(settings.usage_topic, value, f"{org_of(user)}/{user}".encode())
                if index == len(records) // 2:
                    producer.flush()
                    time.sleep(0.5)
                    stop(process, kill=True)  # mid-stream, with the boundary's events in flight
                    other, process = another_worker(other)
            producer.flush()
            assert wait_for(lambda: _matches(pipeline, expected), timeout=180), _differences(pipeline, expected)
            # Pro's 100 a cycle: the pool carries what its users together left of cycle 1, at most 100.
            pool = (boundary.isoformat(), pool_used[boundary], max(Decimal(100) - pool_used[anchor], Decimal(0)))
            assert 0 < pool[2] < 100  # this seed leaves something, not everything, to carry
            assert wait_for(lambda: _pool_shown(pipeline) == pool, timeout=60), (_pool_shown(pipeline), pool)
        finally:
            stop(process)


def _pool_shown(pipeline: Pipeline) -> tuple[str, Decimal, Decimal] | None:
    try:
        pool = pipeline.org_balance(POOL_ORG)["pool"]
    except OSError:
        return None
    return pool["cycle_start"], Decimal(pool["used"]), Decimal(pool["carried"])


def _shown(pipeline: Pipeline, user: str) -> tuple[str, Decimal, Decimal, Decimal, Decimal]:
    body = pipeline.balance(org_of(user), user)
    return body["cycle_start"], Decimal(body["used"]), Decimal(body["carried"]), Decimal(body["grants"]), body["credits_used"]


def _differences_of(pipeline: Pipeline, expected: dict[str, Expected]) -> dict[str, tuple[object, object]]:
    found = {}
    for user, mine in expected.items():
        shown = _shown(pipeline, user)
        if shown != mine.shown():
            found[user] = (shown, mine.shown())
    return found


def _matches(pipeline: Pipeline, expected: dict[str, Expected]) -> bool:
    try:
        return not _differences_of(pipeline, expected)
    except OSError:
        return False


def _differences(pipeline: Pipeline, expected: dict[str, Expected]) -> str:
    try:
        return f"accounts off (shown, expected): {_differences_of(pipeline, expected)}"
    except OSError as error:
        return f"the workers do not answer: {error}"

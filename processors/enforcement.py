"""Reserve, release and commit on the worker that owns the user's partition (the rules: holds.py).

The owner is the single writer of its users' holds, and its event loop runs each decision
without an await between reading the user's holds and writing them: no two decisions for a user
interleave, so check-and-hold needs no lock. The caller hears "allowed" only once Kafka has the
hold (the holds table's changelog); a restart or a rebalance recovers it from there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meterline.pricing import PricingError, Rater
from meterline.processors import tables
from meterline.processors.accounts import Accounts
from meterline.pricing.plans import Plan
from meterline.processors.holds import Closed, Decision, Hold, Holds, Limits, Request, decide
from meterline.processors.pools import PoolState, pool_key
from meterline.processors.state import UserState
from meterline.processors.outbox import ConfirmedWriter, Outbox
from meterline.schemas import FieldProblem, InvalidEventError
from meterline.schemas.decision import decision_record
from meterline.schemas.usage import MAX_REQUEST_ID_CHARS, Identifier
from meterline.settings import Settings

log = logging.getLogger(__name__)

MAX_ESTIMATE = Decimal(10) ** 12  # credits; the bound on one event's credits is far below
MAX_REMEMBERED_REFUSALS = 10_000
REFUSAL_SECONDS = 60.0
DECIDING_SECONDS = 5.0


class ReserveBody(BaseModel):
    """What POST .../reservations takes. An estimate in credits, or in tokens (rated per model)."""

    model_config = ConfigDict(extra="forbid")

    # Printable ASCII without spaces, and no longer than a request id: it becomes the commit's request id.
    reservation_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS, pattern=r"^[\x21-\x7e]+$")
    model: str = Field(min_length=1, max_length=200)
    estimate: Decimal | None = Field(default=None, ge=0, le=MAX_ESTIMATE, allow_inf_nan=False)
    input_tokens: int | None = Field(default=None, ge=0, le=10**9)
    output_tokens: int | None = Field(default=None, ge=0, le=10**9)
    ttl_seconds: float | None = Field(default=None, gt=0, le=86_400)


class Subject(BaseModel):
    """The org and user of the path: what the commit's usage event must carry too."""

    org_id: str = Identifier
    user_id: str = Identifier


def check_subject(org_id: str, user_id: str) -> None:
    """InvalidEventError unless the path's org and user are ids an event could carry."""
    try:
        Subject(org_id=org_id, user_id=user_id)
    except ValidationError as error:
        raise InvalidEventError.from_validation_error(error) from None


def parse_reserve(raw: bytes) -> ReserveBody:
    """The request body, or InvalidEventError naming each bad field and its rule."""
    try:
        body = ReserveBody.model_validate_json(raw)
    except ValidationError as error:
        raise InvalidEventError.from_validation_error(error) from None
    if body.estimate is None and body.input_tokens is None and body.output_tokens is None:
        raise InvalidEventError([FieldProblem("estimate", "give an estimate in credits, or input_tokens / output_tokens")])
    return body


def user_partition(user_key: bytes, partitions: int) -> int:
    """The partition of the user's events (the SDK's murmur2 partitioner), hence of its state and holds."""
    return (murmur2(user_key) & 0x7FFFFFFF) % partitions


class Enforcer:
    """The owner's side of reserve / release / commit, over the holds table."""

    def __init__(self, settings: Settings, holds: faust.Table, states: faust.Table, accounts: Accounts, rater: Rater,
                 outbox: Outbox, counters: Counter[str]):
        self.settings = settings
        self.table = holds
        self.states = states
        self.accounts = accounts
        self.rater = rater
        self.outbox = outbox
        self.counters = counters
        self.writer = ConfirmedWriter(settings.kafka_bootstrap)
        self._last_call = -DECIDING_SECONDS
        # A refusal is answered again, unchanged, until its retry_after (at most a minute): a retry
        # of the same call is not a new request. Kept in memory only; after a restart it is decided anew.
        self._refusals: OrderedDict[tuple[bytes, str], tuple[float, Decision]] = OrderedDict()

    def deciding(self) -> bool:
        """Whether reservations came in lately: the engine then applies its batches in short steps."""
        return time.monotonic() - self._last_call < DECIDING_SECONDS

    @property
    def holders(self) -> dict[bytes, bytes]:
        """The users with a holds record on this worker (the batch checks its events against them)."""
        return self.table.data.data

    def holds_of(self, user_key: bytes) -> Holds:
        return Holds.from_bytes(self.table.data.data.get(user_key))

    def holds_key(self, org_id: str, user_id: str) -> bytes:
        """Where the user's holds live, and so who decides: the user's record, or the org's when the user
        draws on the org's pool (on the org's partition, beside the pool's record; no user key is an org id)."""
        if self.accounts.pooled(org_id, user_id, datetime.now(timezone.utc)):
            return org_id.encode()
        return f"{org_id}/{user_id}".encode()

    def _limits(self, org_id: str, user_id: str, key: bytes, now: float) -> tuple[Plan, Limits]:
        at = datetime.fromtimestamp(now, timezone.utc)
        if b"/" not in key:  # the org's pool: its plan's limits, its own account's balance
            pool = self.accounts.pool_limits(org_id, PoolState.from_bytes(self.states.data.data.get(pool_key(org_id))).account, at)
            if pool is not None:
                return pool
        return self.accounts.limits(org_id, user_id, UserState.from_bytes(self.states.data.data.get(key)).account, at)

    async def reserve(self, org_id: str, user_id: str, key: bytes, body: ReserveBody) -> Decision:
        """Decide on the holds at `key` (`holds_key`), hold, and return once Kafka has the hold.
        Raises InvalidEventError for an unknown model."""
        self._last_call = time.monotonic()
        now = time.time()
        remembered = self._refusals.get((key, body.reservation_id))
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        plan, limits = self._limits(org_id, user_id, key, now)
        estimates = self._estimates(body, plan.chain(body.model))
        request = Request(body.reservation_id, body.model, estimates, body.ttl_seconds or self.settings.reservation_ttl_seconds,
                          user_id if b"/" not in key else "")
        decision, after = decide(request, limits, self.holds_of(key), now)
        if after is not None:
            written = self._write(key, after)
        self._count(decision)
        if not decision.allowed or decision.degraded:
            self.outbox.put(self.settings.decisions_topic, None, key, decision_record(
                org_id, user_id, decision.reservation_id, "refused" if not decision.allowed else "degraded", decision.reason,
                decision.requested_model, decision.model, decision.plan, estimates[0][1] if not decision.allowed else decision.held,
                None, now))
        if not decision.allowed:
            self._remember_refusal(key, decision, now)
        if after is not None:
            await written
        return decision

    def _estimates(self, body: ReserveBody, chain: list[str]) -> tuple[tuple[str, Decimal], ...]:
        """The estimate at each model of the chain: rated from tokens, or credits scaled by each model's price."""
        try:
            if body.estimate is None:
                return tuple((model, self.rater.rate_usage(model, body.input_tokens or 0, body.output_tokens or 0).credits)
                             for model in chain)
            requested = self.rater.credits_per_1k(chain[0])
            return tuple((model, body.estimate if not requested else
                          body.estimate * self.rater.credits_per_1k(model) / requested) for model in chain)
        except PricingError as error:
            raise InvalidEventError([FieldProblem("model", str(error))]) from None

    async def release(self, key: bytes, reservation_id: str) -> dict[str, Any]:
        """Release an open hold at `key`; releasing twice, or after a commit, is harmless and says what happened."""
        now = time.time()
        before = self.holds_of(key).expired(now)
        after, found = before.close(reservation_id, "released", now)
        if found is None:
            return {"reservation_id": reservation_id, "released": False, "state": "unknown"}
        if isinstance(found, Closed):
            return {"reservation_id": reservation_id, "released": False, "state": found.outcome}
        await self._write(key, after)
        self.counters["reservations_released"] += 1
        return {"reservation_id": reservation_id, "released": True, "state": "released"}

    def commit(self, commits: Iterable[tuple[int, bytes, str, Decimal]], now: float) -> None:
        """Close the holds of a batch's events that carry a reservation id (the usage event is the commit).

        Written, not awaited: the batch's acknowledgement waits for `writer.flush()`. Also for a
        replayed or duplicate event, so a hold whose release a crash lost is closed on the replay.
        """
        for partition, key, request_id, credits in commits:
            after, found = self.holds_of(key).expired(now).close(request_id, "committed", now)
            if found is None:
                continue
            org_id, _, user_id = key.decode().partition("/")
            user_id = user_id or found.user_id
            if isinstance(found, Hold):
                self.counters["reservations_committed"] += 1
                if credits > found.credits:  # charged in full: the call happened; bounded by one request
                    self.counters["commits_over_estimate"] += 1
                    self._record_commit(org_id, user_id, key, "over_estimate", found, credits, now)
                self._write(key, after, partition)
            elif found.outcome == "expired":  # still charged (the call happened), flagged once
                self.counters["commits_after_expiry"] += 1
                self._record_commit(org_id, user_id, key, "committed_after_expiry", found, credits, now)
                closed = tuple(c._replace(outcome="committed") if c.reservation_id == request_id else c for c in after.closed)
                self._write(key, after._replace(closed=closed), partition)

    def _record_commit(self, org_id: str, user_id: str, key: bytes, outcome: str, hold: Hold | Closed,
                       charged: Decimal, now: float) -> None:
        self.outbox.put(self.settings.decisions_topic, None, key, decision_record(
            org_id, user_id, hold.reservation_id, outcome, hold.reason, hold.requested_model, hold.model, "",
            hold.credits, charged, now))

    def view(self, org_id: str, user_id: str, key: bytes) -> dict[str, Any]:
        """The user's open holds (at `key`) and what they hold, as GET .../reservations shows them."""
        now = time.time()
        live = [h for h in self.holds_of(key).live(now) if b"/" in key or h.user_id == user_id]
        return {"org_id": org_id, "user_id": user_id, "open": len(live), "held": str(sum((h.credits for h in live), Decimal(0))),
                "reservations": [{"reservation_id": h.reservation_id, "model": h.model, "requested_model": h.requested_model,
                                  "held": str(h.credits), "expires_at": h.expires_at} for h in live]}

    def _write(self, key: bytes, holds: Holds, partition: int | None = None) -> Any:
        """The user's holds record, to the local table and (through the confirmed writer) to its changelog."""
        if partition is None:
            partition = user_partition(key, self.settings.partitions)
        value = holds.to_bytes()
        tables.put(self.table, partition, key, value)
        return self.writer.put(self.table.changelog_topic.get_topic_name(), partition, key, value)

    def _count(self, decision: Decision) -> None:
        outcome = "refused" if not decision.allowed else "degraded" if decision.degraded else "allowed"
        self.counters[f"decisions_{outcome}" + (f"_{decision.reason}" if decision.reason and outcome != "allowed" else "")] += 1

    def _remember_refusal(self, key: bytes, decision: Decision, now: float) -> None:
        self._refusals[(key, decision.reservation_id)] = (now + min(decision.retry_after or REFUSAL_SECONDS, REFUSAL_SECONDS), decision)
        if len(self._refusals) > MAX_REMEMBERED_REFUSALS:
            self._refusals.popitem(last=False)

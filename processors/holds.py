"""Quota enforcement for one user: the open holds, the rate buckets and the decision. Pure: time comes in.

Rules (processors/README.md, "Reservations"):

- A reservation holds its estimate (credits) until the usage event carrying its id commits it,
  the app releases it, or its TTL passes. Open holds are the ones not yet past their TTL.
- Concurrency: open holds stay under the plan's concurrent request limit. Never degraded.
- Balance, on hard-cap plans: the remaining credits minus the open holds must cover the estimate.
  Overage plans may run into overage and are not checked.
- Rate: two token buckets, each request taking one token of both. The steady bucket refills at
  the plan's rate with room for `(multiplier - 1) x rate x seconds`; the peak one refills at
  `multiplier x rate` with room for one second of it. Together they allow `multiplier` x the
  steady rate for `seconds`, then the steady rate.
- Degradation: a request that would be refused for balance or rate, when the plan's chain has a
  cheaper model, is allowed on the first cheaper model whose estimate fits the balance. A
  degraded request takes no rate token: the buckets ration the expensive model, and the balance
  and the concurrency limit still bound the cheaper one.
- The same reservation id twice gets the same decision, and holds nothing more.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Literal, NamedTuple

import orjson

ZERO = Decimal(0)
MAX_CLOSED = 16  # closed reservations remembered per user, for idempotent retries (seconds apart, in practice)
CLOSED_SECONDS = 600.0
CONCURRENCY_RETRY_SECONDS = 1.0  # a slot frees when a call ends, which no one can predict

Reason = Literal["balance", "concurrency", "rate"]
Outcome = Literal["committed", "released", "expired"]


class Limits(NamedTuple):
    """What enforcement reads of the user's plan (pricing/plans.py) and account, at one instant."""

    plan_id: str
    concurrent_requests: int
    requests_per_minute: int
    burst_multiplier: float
    burst_seconds: float
    hard_cap: bool
    remaining: Decimal | None  # credits left in the cycle; None: not known on this partition (an org's pool)
    cycle_end: float  # epoch seconds: when a hard cap lifts

    @property
    def steady_per_second(self) -> float:
        return self.requests_per_minute / 60.0

    @property
    def steady_room(self) -> float:
        return max(1.0, (self.burst_multiplier - 1) * self.steady_per_second * self.burst_seconds)

    @property
    def peak_per_second(self) -> float:
        return self.burst_multiplier * self.steady_per_second

    @property
    def peak_room(self) -> float:
        return max(1.0, self.peak_per_second)


class Buckets(NamedTuple):
    steady: float
    peak: float
    at: float  # when they held these tokens, epoch seconds

    def refilled(self, limits: Limits, now: float) -> Buckets:
        elapsed = max(0.0, now - self.at)  # a clock that steps back refills nothing
        return Buckets(min(limits.steady_room, self.steady + elapsed * limits.steady_per_second),
                       min(limits.peak_room, self.peak + elapsed * limits.peak_per_second), max(now, self.at))

    def wait(self, limits: Limits) -> float:
        """Seconds until both buckets hold a whole token."""
        return max((1 - self.steady) / limits.steady_per_second, (1 - self.peak) / limits.peak_per_second, 0.0)


def full_buckets(limits: Limits, now: float) -> Buckets:
    return Buckets(limits.steady_room, limits.peak_room, now)


class Hold(NamedTuple):
    reservation_id: str
    credits: Decimal  # the estimate held, at `model`
    model: str  # the model allowed (the requested one, or a cheaper one)
    requested_model: str
    created_at: float
    expires_at: float
    reason: Reason | None = None  # why it was degraded
    user_id: str = ""  # in an org pool's record, whose it is


class Closed(NamedTuple):
    reservation_id: str
    outcome: Outcome
    model: str
    requested_model: str
    credits: Decimal  # what was held
    closed_at: float
    expires_at: float  # the TTL it had: a commit after it is flagged
    reason: Reason | None = None
    user_id: str = ""


class Decision(NamedTuple):
    reservation_id: str
    allowed: bool
    model: str
    requested_model: str
    reason: Reason | None = None  # why refused, or why degraded
    retry_after: float | None = None  # seconds, when refused
    held: Decimal = ZERO
    expires_at: float | None = None
    plan: str = ""
    state: str = "open"  # open, refused, or the outcome of a reservation already closed
    hard_cap: bool = False  # the plan's: the SDK refuses for such a user when no worker answers

    @property
    def degraded(self) -> bool:
        return self.allowed and self.model != self.requested_model

    def to_json(self) -> dict[str, object]:
        return {"reservation_id": self.reservation_id, "allowed": self.allowed, "model": self.model,
                "requested_model": self.requested_model, "degraded": self.degraded, "reason": self.reason,
                "retry_after": None if self.retry_after is None else round(self.retry_after, 3),
                "held": str(self.held), "expires_at": self.expires_at, "plan": self.plan, "state": self.state,
                "hard_cap": self.hard_cap}


class Request(NamedTuple):
    reservation_id: str
    model: str
    # The estimate in credits for each model of the chain, requested first (the engine rates them).
    estimates: tuple[tuple[str, Decimal], ...]
    ttl_seconds: float
    user_id: str = ""  # for an org pool's record


class Holds(NamedTuple):
    """One user's enforcement record: open holds, the latest closed ones, the buckets (None: full)."""

    open: tuple[Hold, ...] = ()
    closed: tuple[Closed, ...] = ()
    buckets: Buckets | None = None

    def live(self, now: float) -> tuple[Hold, ...]:
        return tuple(hold for hold in self.open if hold.expires_at > now)

    def held(self, now: float) -> Decimal:
        return sum((hold.credits for hold in self.live(now)), ZERO)

    def expired(self, now: float) -> Holds:
        """Holds past their TTL move to the closed ones; closed ones past their time are forgotten."""
        gone = [hold for hold in self.open if hold.expires_at <= now]
        if not gone and not self.closed:
            return self
        closed = self.closed + tuple(_closed(hold, "expired", hold.expires_at) for hold in gone)
        closed = tuple(c for c in closed if c.closed_at > now - CLOSED_SECONDS)[-MAX_CLOSED:]
        return Holds(self.live(now), closed, self.buckets)

    def find(self, reservation_id: str) -> Hold | Closed | None:
        for hold in self.open:
            if hold.reservation_id == reservation_id:
                return hold
        for closed in reversed(self.closed):
            if closed.reservation_id == reservation_id:
                return closed
        return None

    def close(self, reservation_id: str, outcome: Outcome, now: float) -> tuple[Holds, Hold | Closed | None]:
        """Close an open hold (committed or released); what it was, or the closed entry if already closed."""
        found = self.find(reservation_id)
        if not isinstance(found, Hold):
            return self, found
        remaining = tuple(hold for hold in self.open if hold.reservation_id != reservation_id)
        closed = (self.closed + (_closed(found, outcome, now),))[-MAX_CLOSED:]
        return Holds(remaining, closed, self.buckets), found

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "v": 1,
            "open": [[h.reservation_id, str(h.credits), h.model, h.requested_model, h.created_at, h.expires_at,
                      h.reason, h.user_id] for h in self.open],
            "closed": [[c.reservation_id, c.outcome, c.model, c.requested_model, str(c.credits), c.closed_at,
                        c.expires_at, c.reason, c.user_id] for c in self.closed],
            "buckets": None if self.buckets is None else list(self.buckets),
        })

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Holds:
        if not raw:
            return cls()
        value = orjson.loads(raw)
        buckets = value.get("buckets")
        return cls(tuple(Hold(r, Decimal(c), m, q, float(a), float(e), why, u) for r, c, m, q, a, e, why, u in value["open"]),
                   tuple(Closed(r, o, m, q, Decimal(c), float(a), float(e), why, u)
                         for r, o, m, q, c, a, e, why, u in value["closed"]),
                   None if buckets is None else Buckets(*(float(b) for b in buckets)))


def _closed(hold: Hold, outcome: Outcome, at: float) -> Closed:
    return Closed(hold.reservation_id, outcome, hold.model, hold.requested_model, hold.credits, at, hold.expires_at,
                  hold.reason, hold.user_id)


def decide(request: Request, limits: Limits, holds: Holds, now: float) -> tuple[Decision, Holds | None]:
    """The decision for `request`, and the user's record after it (None: nothing to write).

    Check and hold are one step: the caller applies the returned record before anything else
    reads the user's holds (the worker's event loop runs this without an await).
    """
    holds = holds.expired(now)
    found = holds.find(request.reservation_id)
    if found is not None:  # a retry: the same decision, nothing held twice
        state = "open" if isinstance(found, Hold) else found.outcome
        return Decision(request.reservation_id, True, found.model, found.requested_model, found.reason,
                        held=found.credits, expires_at=found.expires_at, plan=limits.plan_id, state=state,
                        hard_cap=limits.hard_cap), None
    live = holds.live(now)
    if len(live) >= limits.concurrent_requests:
        soonest = min(hold.expires_at for hold in live) - now
        return _refused(request, limits, "concurrency", min(CONCURRENCY_RETRY_SECONDS, soonest)), None
    buckets = (holds.buckets or full_buckets(limits, now)).refilled(limits, now)
    rate_allows = buckets.steady >= 1 and buckets.peak >= 1
    available = None if limits.remaining is None or not limits.hard_cap else limits.remaining - holds.held(now)
    first_refusal: Reason | None = None
    for step, (model, estimate) in enumerate(request.estimates):
        fits = available is None or estimate <= available
        if step == 0 and fits and rate_allows:
            buckets = Buckets(buckets.steady - 1, buckets.peak - 1, buckets.at)
        elif step == 0:
            first_refusal = "balance" if not fits else "rate"
            continue
        elif not fits:
            continue
        hold = Hold(request.reservation_id, estimate, model, request.model, now, now + request.ttl_seconds, first_refusal,
                    request.user_id)
        decision = Decision(request.reservation_id, True, model, request.model, first_refusal, held=estimate,
                            expires_at=hold.expires_at, plan=limits.plan_id, hard_cap=limits.hard_cap)
        return decision, Holds(holds.open + (hold,), holds.closed, buckets)
    assert first_refusal is not None
    if first_refusal == "rate":
        return _refused(request, limits, "rate", buckets.wait(limits)), None
    # Balance: it comes back when a hold ends, or when the cycle does.
    ends = [hold.expires_at for hold in live] or [limits.cycle_end]
    return _refused(request, limits, "balance", max(0.0, min(ends) - now)), None


def _refused(request: Request, limits: Limits, reason: Reason, retry_after: float) -> Decision:
    retry = retry_after if math.isfinite(retry_after) else None
    return Decision(request.reservation_id, False, request.model, request.model, reason, retry,
                    plan=limits.plan_id, state="refused", hard_cap=limits.hard_cap)

"""The account of a user's current billing cycle, kept in the user's state record.

Rules (each event is placed by its event time, never by when it arrives):

- An event belongs to the cycle that contains its event time, of the subscription in effect at
  that time: the user's own, else the org's, else the default plan (schemas/subscription.py).
- The live account is the user's latest cycle. An event of a later cycle closes it: the pricing
  domain's invoice math (`compute_invoice`) says which credits carry over, aged through any
  cycles without events, and the new account starts with them (a new subscriber starts with none).
- An event of an earlier cycle than the live one is *late*: it counts in the user's lifetime
  total and in the warehouse under its own cycle, flagged, and leaves the live account alone (the
  billing export turns it into an adjustment of the closed cycle).
- The account keeps what happened (used, cost, events, what was carried in); the terms (plan,
  included credits, proration) are read from the subscription when asked, so a plan change
  published mid-cycle shows at once.
- A subscription applies to the events a worker processes after it has read it. The worker reads
  the whole subscriptions topic before its first batch; one published later does not move events
  already counted in a live account (the warehouse's cycle report re-reads them by event time).

Under an org's subscription the account holds this user's share of the org's pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import orjson

from meterline.pricing.catalogue import Catalogue
from meterline.pricing.cycles import BillingSchedule, Cycle
from meterline.pricing.invoice import CarriedCredits, Grant, compute_invoice
from meterline.pricing.plans import Plan
from meterline.processors.holds import Limits
from meterline.schemas.subscription import Subscription, default_subscription, subscription_in_effect
from meterline.subscriptions import CycleTermsOf, billing_cycle, cycle_terms

ZERO = Decimal(0)
DEFAULT_SUBSCRIBER = ""  # the subscriber key of a user on the default plan
# Cycles walked at most when an account closes after a long silence: carried credits have lapsed
# long before (rollover keeps them a few cycles), so the walk stops early in practice.
MAX_CYCLES_WALKED = 1200
MAX_CACHED_DEFAULTS = 100_000  # entries of each per-worker cache, cleared whole when full


class UserStateLike(Protocol):
    """What org_share reads of a user's state record (processors/state.py imports this module)."""

    credits_used: Decimal
    events: int
    account: CycleAccount | None


class CycleAccount(NamedTuple):
    """One cycle of one user: what was used in it, and what was carried into it."""

    subscriber: str  # "" (default plan), "org" (the org's pool) or "org/user"
    start: datetime
    end: datetime
    used: Decimal = ZERO
    provider_cost: Decimal = ZERO
    events: int = 0
    carried: tuple[tuple[Decimal, int], ...] = ()  # (credits, cycles left) carried into this cycle
    grants: tuple[Grant, ...] = ()  # what was left of each grant when the cycle began, and those given in it

    def add(self, credits: Decimal, cost: Decimal) -> CycleAccount:
        return CycleAccount(self.subscriber, self.start, self.end, self.used + credits, self.provider_cost + cost,
                            self.events + 1, self.carried, self.grants)  # not _replace: once per event, ~3x cheaper

    def adjust(self, credits: Decimal, cost: Decimal, events: int) -> CycleAccount:
        """A correction of an event counted here: the differences it makes (negative for a void)."""
        return self._replace(used=self.used + credits, provider_cost=self.provider_cost + cost, events=self.events + events)

    def contains(self, subscriber: str, at: datetime) -> bool:
        return self.subscriber == subscriber and self.start <= at < self.end

    def to_json(self) -> dict[str, Any]:
        """For orjson.dumps, which writes the two datetimes itself, as isoformat() would for these UTC
        instants (every cycle bound is in UTC: pricing/cycles.py), ~2x quicker once per user and batch."""
        return {"subscriber": self.subscriber, "start": self.start, "end": self.end,
                "used": str(self.used), "provider_cost": str(self.provider_cost), "events": self.events,
                "carried": [[str(credits), cycles] for credits, cycles in self.carried],
                "grants": [[g.grant_id, str(g.credits), g.kind, None if g.expires_at is None else g.expires_at.isoformat()]
                           for g in self.grants]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> CycleAccount:
        return cls(value["subscriber"], datetime.fromisoformat(value["start"]), datetime.fromisoformat(value["end"]),
                   Decimal(value["used"]), Decimal(value["provider_cost"]), int(value["events"]),
                   tuple((Decimal(credits), int(cycles)) for credits, cycles in value["carried"]),
                   tuple(Grant(grant_id, Decimal(credits), kind, None if expires is None else datetime.fromisoformat(expires))
                         for grant_id, credits, kind, expires in value.get("grants", ())))


class Placement(NamedTuple):
    """Where one event is counted: the rated record carries it to the warehouse."""

    plan: str
    cycle_start: datetime
    late: bool
    pooled: bool = False  # counted in its org's pool (processors/pools.py keeps the pool's own account)


class Accounts:
    """Places events in cycle accounts, with the subscriptions the worker has read so far."""

    def __init__(self, catalogue: Catalogue, default_plan: str, subscriptions: Mapping[str, Subscription]):
        self.catalogue = catalogue
        self.default_plan = default_plan
        self.subscriptions = subscriptions  # read by reference: the subscriptions feed keeps it current
        self._defaults: dict[tuple[str, str], Subscription] = {}
        self._cycle_terms: dict[tuple[str, int, datetime], tuple[Subscription | None, CycleTermsOf]] = {}

    def subscription(self, org_id: str, user_id: str, at: datetime) -> tuple[str, Subscription]:
        """The subscriber key and subscription in effect for the user at `at`."""
        found = subscription_in_effect(org_id, user_id, self.subscriptions, at)
        if found is None:
            return DEFAULT_SUBSCRIBER, self._default_subscription(org_id, user_id)
        return found.subscriber_key, found

    def place(self, org_id: str, user_id: str, at: datetime, credits: Decimal, cost: Decimal,
              account: CycleAccount | None) -> tuple[Placement, CycleAccount | None]:
        """Count one event at event time `at`: where it goes, and the user's live account after it."""
        # One lookup, kept: the subscriptions feed may replace or remove a record meanwhile.
        found = subscription_in_effect(org_id, user_id, self.subscriptions, at)
        subscriber = DEFAULT_SUBSCRIBER if found is None else found.subscriber_key
        if account is not None and account.contains(subscriber, at):  # the common case: no cycle arithmetic
            plan = self.default_plan if found is None else found.plan_at(at) or found.plan
            return Placement(plan, account.start, False, subscriber == org_id), account.add(credits, cost)
        subscription = found or self._default_subscription(org_id, user_id)
        cycle = billing_cycle(subscription, self.catalogue, at)
        placement = Placement(subscription.plan_at(at) or subscription.plan, cycle.start, False, subscriber == org_id)
        if account is not None and cycle.start < account.start:
            return placement._replace(late=True), account  # its cycle is no longer the live one
        # A later cycle, or another subscriber's cycle from the same instant (a subscription that
        # started with the calendar month): the event's own subscription is in effect, it goes live.
        return placement, self._advance(org_id, user_id, subscriber, cycle, account).add(credits, cost)

    def correct(self, org_id: str, user_id: str, at: datetime, credits: Decimal, cost: Decimal, events: int,
                account: CycleAccount | None) -> tuple[Placement, CycleAccount | None]:
        """Correct an event counted at event time `at` by these differences: where, and the live account after.

        Only the cycle that counted the event changes: the live one if it contains `at`, else the
        correction is late (a closed cycle's adjustment, for the billing export) and the live
        account stays as it is.
        """
        key, subscription = self.subscription(org_id, user_id, at)
        placement = Placement(subscription.plan_at(at) or subscription.plan, billing_cycle(subscription, self.catalogue, at).start,
                              False, key == org_id)
        if account is not None and account.contains(key, at):
            return placement, account.adjust(credits, cost, events)
        return placement._replace(late=True), account

    def grant(self, org_id: str, user_id: str, grant: Grant, at: datetime, account: CycleAccount | None) -> CycleAccount:
        """The live account after granting `grant` at `at` (a grant dated in a closed cycle is usable now)."""
        key, subscription = self.subscription(org_id, user_id, at)
        cycle = billing_cycle(subscription, self.catalogue, at)
        if account is None or cycle.start > account.start or (cycle.start == account.start and key != account.subscriber):
            account = self._advance(org_id, user_id, key, cycle, account)
        return account._replace(grants=(*account.grants, grant))

    def _default_subscription(self, org_id: str, user_id: str) -> Subscription:
        # Built once per user: validating a Subscription costs ~5 us, and cycle changes and reads ask for it.
        found = self._defaults.get((org_id, user_id))
        if found is None:
            if len(self._defaults) >= MAX_CACHED_DEFAULTS:
                self._defaults.clear()
            found = self._defaults[(org_id, user_id)] = default_subscription(org_id, user_id, self.default_plan)
        return found

    def _subscription_of(self, subscriber: str, org_id: str, user_id: str) -> Subscription:
        found = self.subscriptions.get(subscriber) if subscriber else None
        return found or self._default_subscription(org_id, user_id)

    def _advance(self, org_id: str, user_id: str, subscriber: str, cycle: Cycle,
                 account: CycleAccount | None, pool: bool = False) -> CycleAccount:
        """The new live account of `subscriber` for `cycle`, after closing `account` (an earlier one).

        Rollover credits stay with their subscription; grants belong to the user and follow them.
        A pool's rollover depends on all its users together, which no one user's record holds: a
        user's share of a pool carries nothing over; the pool's own account (`pool`, processors/pools.py) does.
        """
        if account is None:
            return CycleAccount(subscriber, cycle.start, cycle.end)
        carried, grants = self._close(account, org_id, user_id, cycle.start)
        keeps_rollover = subscriber == account.subscriber and (pool or subscriber != org_id)
        return CycleAccount(subscriber, cycle.start, cycle.end, carried=carried if keeps_rollover else (), grants=grants)

    def _close(self, account: CycleAccount, org_id: str, user_id: str,
               until: datetime) -> tuple[tuple[tuple[Decimal, int], ...], tuple[Grant, ...]]:
        """Close `account` and every later cycle of its subscription that starts before `until`:
        the credits carried on and what is left of each grant, by the pricing domain's invoice math."""
        subscription = self._subscription_of(account.subscriber, org_id, user_id)
        interval = self.catalogue.plan(subscription.plan_at(account.start) or subscription.plan).interval
        schedule = BillingSchedule(subscription.billing_anchor, interval)
        cycle = schedule.cycle_at(max(account.start, subscription.billing_anchor))
        carried = [CarriedCredits(credits, cycles) for credits, cycles in account.carried]
        grants = list(account.grants)
        used = account.used
        for _ in range(MAX_CYCLES_WALKED):
            if cycle.start >= until:
                break
            of = cycle_terms(subscription, self.catalogue, cycle)
            invoice = compute_invoice(of.plan_id, of.plan, used, carried=carried, grants=grants, cycle=cycle, terms=of.terms)
            carried, grants, used = list(invoice.carry_out), list(invoice.grants_out), ZERO
            if not (carried or grants):
                break  # nothing left to age: the cycles in between change nothing
            cycle = schedule.cycle(cycle.index + 1)
        return tuple((batch.credits, batch.cycles_left) for batch in carried), tuple(grants)

    def allowance(self, org_id: str, user_id: str, account: CycleAccount | None) -> Allowance | None:
        """How much of its allowance the live account has used; None for no account, or an org's pool."""
        if account is None or account.subscriber == org_id:
            return None  # a pool's level depends on every user of the org: processors/pools.py
        return self._allowance(account, org_id, user_id)

    def pool_allowance(self, org_id: str, account: CycleAccount | None) -> Allowance | None:
        """How much of its allowance an org pool's own account has used (processors/pools.py)."""
        return None if account is None else self._allowance(account, org_id, "")

    def advance_pool(self, org_id: str, cycle: Cycle, account: CycleAccount | None) -> CycleAccount:
        """The org pool's account for `cycle`, after closing `account`: it keeps the pool plan's rollover."""
        return self._advance(org_id, "", org_id, cycle, account, pool=True)

    def pool_view(self, org_id: str, account: CycleAccount | None, now: datetime) -> dict[str, Any] | None:
        """The org pool's current cycle as the balance API shows it, from the pool's own account;
        None when the org has no subscription in effect."""
        pool = self.subscriptions.get(org_id)
        if pool is None or pool.since > now:
            return None
        cycle = billing_cycle(pool, self.catalogue, now)
        if account is not None and account.start > cycle.start:
            cycle = Cycle(-1, account.start, account.end)  # events already counted in a cycle ahead of this clock
        elif account is None or account.start < cycle.start:
            account = self.advance_pool(org_id, cycle, account)  # nothing used yet this cycle
        carried = [CarriedCredits(credits, cycles) for credits, cycles in account.carried]
        return cycle_view(cycle_terms(pool, self.catalogue, cycle), cycle, account.used, account.events,
                          account.provider_cost, carried)

    def _allowance(self, account: CycleAccount, org_id: str, user_id: str) -> Allowance:
        of = self._terms(account, org_id, user_id)
        allowance = of.terms.included_credits
        if account.carried or account.grants:  # most accounts have neither: no generators to run
            allowance += (sum((credits for credits, _cycles in account.carried), ZERO)
                          + sum((g.credits for g in account.grants if g.expires_at is None or g.expires_at > account.start), ZERO))
        return Allowance(_level(account.used, allowance), of.plan_id, of.plan.hard_cap, account.start, account.used, allowance)

    def _terms(self, account: CycleAccount, org_id: str, user_id: str) -> CycleTermsOf:
        """The terms of the account's cycle, kept per subscription record and cycle: every user on the
        default plan shares one entry a cycle, so a batch's alerts cost a lookup per user."""
        subscription = self.subscriptions.get(account.subscriber) if account.subscriber else None
        key = (account.subscriber if subscription is not None else DEFAULT_SUBSCRIBER, id(subscription), account.start)
        found = self._cycle_terms.get(key)
        if found is None or found[0] is not subscription:  # `is`: the id of a replaced record can be reused
            if len(self._cycle_terms) >= MAX_CACHED_DEFAULTS:
                self._cycle_terms.clear()
            terms = cycle_terms(subscription or self._default_subscription(org_id, user_id), self.catalogue,
                                Cycle(-1, account.start, account.end))
            found = self._cycle_terms[key] = (subscription, terms)
        return found[1]

    def alerts(self, org_id: str, user_id: str, before: CycleAccount | None, after: CycleAccount | None) -> list[Alert]:
        """The alerts between two states of one user's live account (before and after a batch)."""
        now = self.allowance(org_id, user_id, after)
        if now is not None and before is not None and (before.subscriber, before.start, before.carried, before.grants) \
                == (after.subscriber, after.start, after.carried, after.grants):  # type: ignore[union-attr]
            # The same allowance (the common case): only the usage moved.
            level_before = _level(before.used, now.allowance)
            if level_before == now.level:  # no level crossed: most batches of most users
                return []
            return alerts_between(now._replace(level=level_before, used=before.used), now)
        return alerts_between(self.allowance(org_id, user_id, before), now)

    def limits(self, org_id: str, user_id: str, account: CycleAccount | None, now: datetime) -> tuple[Plan, Limits]:
        """The user's plan at `now`, and what enforcement reads of it and of the account (processors/holds.py)."""
        return self._limits(self.balance(org_id, user_id, account, now))

    def pool_limits(self, org_id: str, account: CycleAccount | None, now: datetime) -> tuple[Plan, Limits] | None:
        """As `limits`, for the org's pool (its own account): the plan's limits hold for the org's users together.
        None when the org has no subscription in effect."""
        view = self.pool_view(org_id, account, now)
        return None if view is None else self._limits(view)

    def pooled(self, org_id: str, user_id: str, now: datetime) -> bool:
        """Whether the user's subscription at `now` is the org's (the user draws on the org's pool)."""
        return self.subscription(org_id, user_id, now)[0] == org_id

    def _limits(self, view: dict[str, Any]) -> tuple[Plan, Limits]:
        plan = self.catalogue.plan(view["plan"])
        remaining = None if view["remaining"] is None else Decimal(view["remaining"])
        return plan, Limits(view["plan"], plan.limits.concurrent_requests, plan.limits.requests_per_minute,
                            float(plan.limits.burst.multiplier), float(plan.limits.burst.seconds), plan.hard_cap,
                            remaining, datetime.fromisoformat(view["cycle_end"]).timestamp())

    def balance(self, org_id: str, user_id: str, account: CycleAccount | None, now: datetime) -> dict[str, Any]:
        """The live account as the balance API shows it: plan, cycle, included, carried, grants, used, remaining, overage."""
        key, subscription = self.subscription(org_id, user_id, now)
        cycle = billing_cycle(subscription, self.catalogue, now)
        if account is not None and account.start > cycle.start:
            # Events already counted in a cycle ahead of this clock (times a little in the future).
            key, subscription = account.subscriber, self._subscription_of(account.subscriber, org_id, user_id)
            cycle = Cycle(-1, account.start, account.end)
        elif account is None or not account.contains(key, cycle.start):
            account = self._advance(org_id, user_id, key, cycle, account)  # nothing used yet this cycle
        of = cycle_terms(subscription, self.catalogue, cycle)
        carried = [CarriedCredits(credits, cycles) for credits, cycles in account.carried]
        granted = sum((g.credits for g in account.grants if g.expires_at is None or g.expires_at > cycle.start), ZERO)
        view = cycle_view(of, cycle, account.used, account.events, account.provider_cost, carried, account.grants, granted)
        if key == org_id:
            # A pool's remaining and overage depend on every user of the org, whose accounts live
            # on other partitions: this user's record alone cannot say (None, not a wrong number).
            view |= {"remaining": None, "overage": None, "revenue_usd": None, "margin": None}
        return {"subscriber": key or None, "pooled": key == org_id, **view}


def cycle_view(of: CycleTermsOf, cycle: Cycle, used: Decimal, events: int, cost: Decimal,
               carried: Sequence[CarriedCredits] = (), grants: Sequence[Grant] = (), granted: Decimal = ZERO) -> dict[str, Any]:
    """One cycle as the balance API shows it (a user's account, or an org's pool): the invoice math so far."""
    invoice = compute_invoice(of.plan_id, of.plan, used, carried=carried, grants=grants, cycle=cycle, terms=of.terms)
    carried_credits = sum((batch.credits for batch in carried), ZERO)
    revenue = invoice.subtotal
    return {
        "plan": of.plan_id, "cycle_start": cycle.start.isoformat(), "cycle_end": cycle.end.isoformat(),
        "included": str(of.terms.included_credits), "carried": str(carried_credits), "grants": str(granted),
        "used": str(used), "remaining": str(max(of.terms.included_credits + carried_credits + granted - used, ZERO)),
        "overage": str(invoice.beyond_allowance), "hard_cap": of.plan.hard_cap, "events_in_cycle": events,
        "provider_cost_usd": str(cost), "revenue_usd": str(revenue),
        "margin": None if not revenue else str(round(1 - cost / revenue, 4)), "note": of.note,
    }


ALERT_LEVELS = (50, 80, 100)  # % of the cycle's allowance (included + carried + grants)
_HIGHEST_FIRST = sorted(ALERT_LEVELS, reverse=True)


class Alert(NamedTuple):
    """One crossing of an allowance level, or its clearing, for the alerts topic."""

    level: int
    condition: str  # usage_50, usage_80, then at 100 overage_started (overage plans) or hard_cap_reached
    state: str  # crossed | resolved
    plan: str
    cycle_start: datetime
    used: Decimal
    allowance: Decimal


class Allowance(NamedTuple):
    level: int  # the highest of ALERT_LEVELS reached, or 0
    plan: str
    hard_cap: bool
    cycle_start: datetime
    used: Decimal
    allowance: Decimal


def alerts_between(before: Allowance | None, after: Allowance | None) -> list[Alert]:
    """The levels crossed (or cleared: a grant, a new cycle) between two moments of one user's account."""
    was = before.level if before is not None else 0
    now = after.level if after is not None else 0
    if before is not None and after is not None and before.cycle_start != after.cycle_start:
        # A new cycle clears the old one's levels, then the new one crosses its own.
        return alerts_between(before, None) + alerts_between(None, after)
    shown = after if now > was else before
    if shown is None or now == was:
        return []
    levels = [level for level in ALERT_LEVELS if min(was, now) < level <= max(was, now)]
    state = "crossed" if now > was else "resolved"
    return [Alert(level, _condition(level, shown.hard_cap), state, shown.plan, shown.cycle_start,
                  (after or before).used, (after or before).allowance) for level in levels]  # type: ignore[union-attr]


def alert_record(org_id: str, user_id: str | None, alert: Alert, at: float) -> bytes:
    """The alerts topic's record (`user_id` None: the org's pool); `id` is the same for the same crossing,
    so a consumer can drop a repeat."""
    cycle = alert.cycle_start.isoformat()
    return orjson.dumps({
        "type": "dev.meterline.alert.v1", "id": f"{org_id}/{user_id or '(pool)'}/{cycle}/{alert.level}/{alert.state}",
        "org_id": org_id, "user_id": user_id, "plan": alert.plan, "cycle_start": cycle, "level": alert.level,
        "condition": alert.condition, "state": alert.state, "used": str(alert.used), "allowance": str(alert.allowance),
        "at": at,
    })


def _level(used: Decimal, allowance: Decimal) -> int:
    if used > 0:
        for level in _HIGHEST_FIRST:  # a loop, not max() over a generator: once or twice per user and batch
            if used * 100 >= allowance * level:
                return level
    return 0


def _condition(level: int, hard_cap: bool) -> str:
    if level < 100:
        return f"usage_{level}"
    return "hard_cap_reached" if hard_cap else "overage_started"


class OrgShare(NamedTuple):
    """What one worker's users of an org add up to (views.OrgBalanceView sums them over every worker)."""

    users: int = 0
    credits_used: Decimal = ZERO  # lifetime
    events: int = 0  # lifetime
    pool_used: Decimal = ZERO  # in the org pool's current cycle
    pool_events: int = 0
    pool_cost: Decimal = ZERO

    def __add__(self, other: object) -> OrgShare:  # type: ignore[override]
        assert isinstance(other, OrgShare)
        return OrgShare(*(mine + theirs for mine, theirs in zip(self, other)))

    def to_json(self) -> dict[str, Any]:
        return {name: str(value) if isinstance(value, Decimal) else value for name, value in self._asdict().items()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> OrgShare:
        return cls(int(value["users"]), Decimal(value["credits_used"]), int(value["events"]), Decimal(value["pool_used"]),
                   int(value["pool_events"]), Decimal(value["pool_cost"]))


def org_share(accounts: Accounts, org_id: str, states: Iterable[UserStateLike], now: datetime) -> OrgShare:
    """Sum one worker's users of `org_id`; usage counts in the pool when it is in the pool's current cycle."""
    pool = accounts.subscriptions.get(org_id)
    pool_start = billing_cycle(pool, accounts.catalogue, now).start if pool is not None and pool.since <= now else None
    share = OrgShare()
    for state in states:
        account = state.account
        pooled = account is not None and account.subscriber == org_id and account.start == pool_start
        share += OrgShare(1, state.credits_used, state.events, account.used if pooled else ZERO,  # type: ignore[union-attr]
                          account.events if pooled else 0, account.provider_cost if pooled else ZERO)  # type: ignore[union-attr]
    return share

"""An org pool's own account: the single writer of what an org-level subscription's users use together.

A pooled user's events live on the user's partition, so no one user's worker sees the pool whole.
Each batch therefore sends, per org and source partition, what it counted in the pool (one entry
per event or correction: its source offset, its pool cycle, credits, cost, events) to the pool
usage topic, keyed by the org. The worker that owns the org's partition applies them to the
pool's record (user-state table, key `/pool/<org>`, which no `org/user` key can be). Rules:

- **Exactly once.** The record keeps, per source partition, the last source offset it applied:
  an entry at or before it is a replay (the worker sends a batch's entries again when it replays
  the batch, so a lost pool record is sent again), never applied twice. Entries of one source
  partition arrive in offset order: one producer at a time owns that partition, and a rebalance
  waits until its writes are acknowledged.
- **Cycles.** An entry of a later cycle closes the pool's account, and what carries over is the
  pricing domain's invoice math, with the pool plan's rollover (`Accounts.advance_pool`).
  Entries from different source partitions interleave in no particular order, so a pool keeps the
  cycle before its live one open too: an entry of that cycle counts there, and what it carries into
  the live cycle is worked out again. An entry of a cycle before that is late: its closed cycle is
  adjusted by the billing export, the live account is left alone.
- **Alerts.** After each record, the pool's allowance (included + carried) before and after is
  compared: each level of 50, 80 and 100 % crossed or cleared is one record on the alerts topic,
  with `user_id` null. A replay changes nothing, so it sends none.

Pure: no Kafka, no Faust, no clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from meterline.processors.accounts import Accounts, Alert, CycleAccount, alerts_between
from meterline.subscriptions import billing_cycle

POOL_USAGE_TYPE = "dev.meterline.pool_usage.v1"
ONE_MICROSECOND = timedelta(microseconds=1)


def pool_key(org_id: str) -> bytes:
    return f"/pool/{org_id}".encode()  # user keys are "org/user", both parts non-empty: never this


class PoolEntry(NamedTuple):
    """What one event (or correction) counted in its org's pool."""

    offset: int  # its source offset
    cycle_start: float  # epoch seconds: the start of the pool cycle it belongs to
    credits: Decimal
    cost: Decimal
    events: int  # 1 for an event, 0 or -1 for a correction
    request_id: str = ""  # an event's: it commits the org's reservation of that id, if one is open


def pool_usage_record(org_id: str, partition: int, entries: list[PoolEntry]) -> bytes:
    return orjson.dumps({"type": POOL_USAGE_TYPE, "org_id": org_id, "partition": partition,
                         "entries": [[e.offset, e.cycle_start, str(e.credits), str(e.cost), e.events, e.request_id]
                                     for e in entries]})


def read_pool_usage(raw: bytes) -> tuple[str, int, list[PoolEntry]]:
    """(org, source partition, entries); ValueError (or KeyError, TypeError) if it is not one."""
    record = orjson.loads(raw)
    if record.get("type") != POOL_USAGE_TYPE:
        raise ValueError("not a pool usage record")
    entries = [PoolEntry(int(offset), float(start), Decimal(credits), Decimal(cost), int(events), str(rest[0]) if rest else "")
               for offset, start, credits, cost, events, *rest in record["entries"]]  # records before reservations had 5
    return str(record["org_id"]), int(record["partition"]), entries


class PoolState(NamedTuple):
    account: CycleAccount | None = None  # the live cycle
    applied: tuple[tuple[int, int], ...] = ()  # (source partition, last source offset applied)
    previous: CycleAccount | None = None  # the cycle just before the live one, still taking entries

    def to_bytes(self) -> bytes:
        return orjson.dumps({"account": None if self.account is None else self.account.to_json(),
                             "applied": [list(pair) for pair in self.applied],
                             "previous": None if self.previous is None else self.previous.to_json()})

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PoolState:
        if not raw:
            return cls()
        value: dict[str, Any] = orjson.loads(raw)
        account, previous = value["account"], value.get("previous")
        return cls(None if account is None else CycleAccount.from_json(account),
                   tuple((int(p), int(o)) for p, o in value["applied"]),
                   None if previous is None else CycleAccount.from_json(previous))


def apply_pool_usage(accounts: Accounts, org_id: str, partition: int, entries: list[PoolEntry],
                     state: PoolState) -> tuple[PoolState, list[Alert]]:
    """The pool's state after these entries of one source partition, and the alerts they cause."""
    subscription = accounts.subscriptions.get(org_id)
    applied = dict(state.applied)
    last = applied.get(partition, -1)
    account, previous, before = state.account, state.previous, state.account
    for entry in entries:
        if entry.offset <= last:
            continue  # a replay
        last = entry.offset
        if subscription is None:
            continue  # the org's subscription is gone: nothing to count it against
        start = datetime.fromtimestamp(entry.cycle_start, timezone.utc)
        cycle = billing_cycle(subscription, accounts.catalogue, start)
        prior = billing_cycle(subscription, accounts.catalogue, cycle.start - ONE_MICROSECOND)
        if account is None or cycle.start > account.start:
            previous = None if account is None else \
                account if account.start == prior.start else accounts.advance_pool(org_id, prior, account)
            account = accounts.advance_pool(org_id, cycle, previous)
        if cycle.start == account.start:
            account = account.adjust(entry.credits, entry.cost, entry.events)
        elif cycle.end == account.start:  # the cycle before the live one: it still decides what carries over
            previous = (previous if previous is not None and previous.start == cycle.start
                        else CycleAccount(org_id, cycle.start, cycle.end)).adjust(entry.credits, entry.cost, entry.events)
            carried = accounts.advance_pool(org_id, billing_cycle(subscription, accounts.catalogue, account.start), previous)
            account = account._replace(carried=carried.carried)
        # else: late, a cycle closed before that: the billing export adjusts it
    applied[partition] = last
    alerts = alerts_between(accounts.pool_allowance(org_id, before), accounts.pool_allowance(org_id, account))
    return PoolState(account, tuple(sorted(applied.items())), previous), alerts

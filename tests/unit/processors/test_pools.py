"""An org pool's own account (processors/pools.py): exactly once, rollover at the cycle's end, alerts.

Worked out by hand from the shipped Pro plan: 100 credits included a month from the anchor, and
what is unused carried into the next cycle (at most 100, for one cycle).
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from meterline.pricing.catalogue import default_catalogue
from meterline.processors.accounts import Accounts
from meterline.processors.pools import PoolEntry, PoolState, apply_pool_usage, pool_usage_record, read_pool_usage
from meterline.schemas.subscription import Subscription
from meterline.processors.state import UserState
from tests.unit.processors.test_batch import ORG, T0, event, record

ANCHOR = datetime(2026, 1, 15, tzinfo=timezone.utc)
CYCLE_1 = ANCHOR.timestamp()
CYCLE_2 = datetime(2026, 2, 15, tzinfo=timezone.utc).timestamp()


def pro_pool() -> Accounts:
    return Accounts(default_catalogue(), "free", {ORG: Subscription(org_id=ORG, plan="pro", since=ANCHOR)})


def entry(offset: int, credits: str, cycle: float = CYCLE_1, events: int = 1) -> PoolEntry:
    return PoolEntry(offset, cycle, Decimal(credits), Decimal(0), events)


def test_entries_are_applied_once_per_source_partition_whatever_is_sent_again() -> None:
    accounts, state = pro_pool(), PoolState()
    state, _ = apply_pool_usage(accounts, ORG, 0, [entry(0, "10"), entry(1, "5")], state)
    state, _ = apply_pool_usage(accounts, ORG, 3, [entry(0, "7")], state)  # offset 0 of another partition: its own
    again, alerts = apply_pool_usage(accounts, ORG, 0, [entry(1, "5"), entry(2, "1")], state)  # 1 again, after a replay
    assert again.account.used == Decimal(23) and again.account.events == 4
    assert dict(again.applied) == {0: 2, 3: 0}
    unchanged, alerts = apply_pool_usage(accounts, ORG, 0, [entry(0, "10"), entry(2, "1")], again)
    assert unchanged == again and alerts == []


def test_the_pool_carries_what_it_left_unused_into_the_next_cycle() -> None:
    accounts = pro_pool()
    state, _ = apply_pool_usage(accounts, ORG, 0, [entry(0, "30")], PoolState())
    state, _ = apply_pool_usage(accounts, ORG, 1, [entry(0, "2", CYCLE_2)], state)
    # 100 included, 30 used: 70 carried (Pro keeps up to 100, for one cycle).
    assert state.account.start.timestamp() == CYCLE_2 and state.account.used == Decimal(2)
    assert [credits for credits, _cycles in state.account.carried] == [Decimal(70)]
    view = accounts.pool_view(ORG, state.account, datetime(2026, 2, 20, tzinfo=timezone.utc))
    assert (Decimal(view["included"]), Decimal(view["carried"]), Decimal(view["remaining"])) == (100, 70, 168)


def test_an_entry_of_a_cycle_before_the_previous_one_is_late_and_changes_nothing_live() -> None:
    accounts = pro_pool()
    cycle_3 = datetime(2026, 3, 15, tzinfo=timezone.utc).timestamp()
    state, _ = apply_pool_usage(accounts, ORG, 0, [entry(0, "30", cycle_3)], PoolState())
    later, _ = apply_pool_usage(accounts, ORG, 0, [entry(1, "50", CYCLE_1)], state)
    assert (later.account, later.previous) == (state.account, state.previous) and dict(later.applied) == {0: 1}


def test_each_allowance_level_the_pool_crosses_is_one_alert_and_a_new_cycle_clears_them() -> None:
    accounts = pro_pool()
    state, alerts = apply_pool_usage(accounts, ORG, 0, [entry(0, "49")], PoolState())
    assert alerts == []
    state, alerts = apply_pool_usage(accounts, ORG, 0, [entry(1, "40")], state)  # 89 of 100
    assert [(a.condition, a.state) for a in alerts] == [("usage_50", "crossed"), ("usage_80", "crossed")]
    state, alerts = apply_pool_usage(accounts, ORG, 2, [entry(0, "11")], state)  # 100: overage starts on Pro
    assert [(a.condition, a.state) for a in alerts] == [("overage_started", "crossed")]
    _, alerts = apply_pool_usage(accounts, ORG, 2, [entry(1, "1", CYCLE_2)], state)
    assert [(a.level, a.state) for a in alerts] == [(50, "resolved"), (80, "resolved"), (100, "resolved")]


def test_a_pool_usage_record_reads_back_as_written() -> None:
    entries = [entry(4, "0.000000000001"), PoolEntry(9, CYCLE_2, Decimal("-3.5"), Decimal("-0.01"), -1)]
    assert read_pool_usage(pool_usage_record(ORG, 5, entries)) == (ORG, 5, entries)


def test_the_batch_sends_a_pooled_users_usage_to_the_pool_and_again_on_a_replay() -> None:
    from meterline.pricing.rating import default_rater
    from meterline.processors.batch import BatchProcessor

    accounts = Accounts(default_catalogue(), "free", {ORG: Subscription(org_id=ORG, plan="pro", since=T0)})
    processor = BatchProcessor(default_rater(), accounts, "test", 3600.0, 1_000_000)
    processor.load(0, [])
    batch = [record(event("alice", 1000, 0, "r1"), 0), record(event("bob", 500, 0, "r2"), 1)]
    store: dict[bytes, UserState] = {}
    first = processor.process(batch, lambda key: store.get(key, UserState()), 1000.0)
    store.update({key: state for key, (_p, state) in first.states.items()})
    ((key, raw),) = first.pool_usage
    org, partition, entries = read_pool_usage(raw)
    assert (key, org, partition) == (ORG.encode(), ORG, 0)
    assert [(e.offset, e.credits, e.events) for e in entries] == [(0, Decimal(1), 1), (1, Decimal("0.5"), 1)]
    replayed = processor.process(batch, lambda key: store.get(key, UserState()), 1001.0)
    assert not replayed.states and read_pool_usage(replayed.pool_usage[0][1])[2] == entries


def test_a_user_on_their_own_plan_sends_nothing_to_a_pool() -> None:
    from meterline.pricing.rating import default_rater
    from meterline.processors.batch import BatchProcessor

    processor = BatchProcessor(default_rater(), Accounts(default_catalogue(), "free", {}), "test", 3600.0, 1_000_000)
    processor.load(0, [])
    result = processor.process([record(event("alice", 1000, 0, "r1"), 0)], lambda key: UserState(), 1000.0)
    assert result.pool_usage == [] and result.counts["applied"] == 1


def test_the_next_cycles_usage_arriving_first_from_another_partition_still_carries_the_right_amount() -> None:
    """Partition 1 is ahead: its next-cycle entry arrives before partition 0's last entries of this cycle."""
    accounts = pro_pool()
    state, _ = apply_pool_usage(accounts, ORG, 0, [entry(0, "20")], PoolState())
    state, _ = apply_pool_usage(accounts, ORG, 1, [entry(0, "2", CYCLE_2)], state)
    assert [credits for credits, _ in state.account.carried] == [Decimal(80)]  # so far
    state, _ = apply_pool_usage(accounts, ORG, 0, [entry(1, "40")], state)  # cycle 1, late from partition 0
    assert state.account.start.timestamp() == CYCLE_2 and state.account.used == Decimal(2)
    assert [credits for credits, _ in state.account.carried] == [Decimal(40)]  # 100 - 60
    assert state.previous.used == Decimal(60)


def test_the_previous_cycle_arriving_after_the_first_next_cycle_entry_of_a_new_pool() -> None:
    accounts = pro_pool()
    state, _ = apply_pool_usage(accounts, ORG, 1, [entry(0, "2", CYCLE_2)], PoolState())
    state, _ = apply_pool_usage(accounts, ORG, 0, [entry(0, "30")], state)
    assert [credits for credits, _ in state.account.carried] == [Decimal(70)] and state.account.used == Decimal(2)


def test_a_pool_usage_record_written_before_reservations_is_read_without_request_ids():
    import orjson

    from meterline.processors.pools import POOL_USAGE_TYPE, pool_usage_record, read_pool_usage

    old = orjson.dumps({"type": POOL_USAGE_TYPE, "org_id": "acme", "partition": 3, "entries": [[7, 1.5, "2", "0.1", 1]]})
    assert read_pool_usage(old) == ("acme", 3, [PoolEntry(7, 1.5, Decimal(2), Decimal("0.1"), 1, "")])
    new = pool_usage_record("acme", 3, [PoolEntry(7, 1.5, Decimal(2), Decimal("0.1"), 1, "call-1")])
    assert read_pool_usage(new)[2][0].request_id == "call-1"

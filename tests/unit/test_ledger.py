"""When the worker counts an event: the replay and duplicate rules, as a table."""

from decimal import Decimal

import pytest

from meterline.processors.ledger import Balance, Decision, ExpiryIndex, SeenRequest, decide, must_remember

FRESH = Balance()
AT_10 = Balance(Decimal("3.5"), 4, partition=2, last_offset=10)


@pytest.mark.parametrize(
    ("balance", "seen", "partition", "offset", "expected"),
    [
        (FRESH, None, 2, 0, Decision.APPLY),  # first event of a user
        (AT_10, None, 2, 11, Decision.APPLY),  # next event
        (AT_10, SeenRequest(2, 5, 0.0), 2, 11, Decision.DUPLICATE),  # re-sent request id
        (AT_10, None, 2, 10, Decision.REPLAYED),  # crash after the table write, before the commit
        (AT_10, SeenRequest(2, 9, 0.0), 2, 9, Decision.REPLAYED),
        (AT_10, SeenRequest(2, 11, 0.0), 2, 11, Decision.APPLY),  # seen written, balance not: apply once
        (AT_10, None, 3, 1, Decision.APPLY),  # offsets of another partition are not comparable
    ],
)
def test_decide(balance, seen, partition, offset, expected):
    assert decide(balance, seen, partition, offset) is expected


@pytest.mark.parametrize(
    ("decision", "seen", "expected"),
    [
        (Decision.APPLY, None, True),
        (Decision.APPLY, SeenRequest(2, 11, 0.0), True),  # seen written, balance not: applied now
        (Decision.DUPLICATE, SeenRequest(2, 5, 0.0), False),  # the first copy keeps its record
        (Decision.REPLAYED, SeenRequest(2, 9, 0.0), False),
        (Decision.REPLAYED, None, True),  # balance kept, record lost in the crash: restore it
    ],
)
def test_must_remember(decision, seen, expected):
    assert must_remember(decision, seen) is expected


def test_a_re_send_after_a_crash_that_lost_only_the_record_is_counted_once():
    """Walk the rules through the crash: the balance reached the changelog, the id's record did not."""
    balance, records = Balance(), {}
    for offset, request_id in [(10, "r1"), (10, "r1"), (11, "r1")]:  # applied, replayed, re-sent
        seen = records.get(request_id)
        decision = decide(balance, seen, 2, offset)
        if must_remember(decision, seen):
            records[request_id] = SeenRequest(2, offset, 0.0)
        if decision is Decision.APPLY:
            balance = balance.apply(Decimal(1), 2, offset)
        if offset == 10 and decision is Decision.APPLY:
            records.clear()  # the crash: the record is lost, the balance is kept
    assert balance.events == 1


def test_balance_round_trips_through_json_exactly():
    balance = Balance().apply(Decimal("0.001"), 1, 7).apply(Decimal("1.999"), 1, 8)
    assert Balance.from_json(balance.to_json()) == balance
    assert balance.credits_used == Decimal("2.000")
    assert balance.events == 2


def test_expiry_index_forgets_ids_older_than_the_window_per_partition():
    index = ExpiryIndex(window_seconds=100)
    index.load(0, [(b"old", SeenRequest(0, 1, 10.0)), (b"other-partition", SeenRequest(1, 1, 10.0))])
    index.add(b"new", SeenRequest(0, 2, 150.0))
    assert index.pop_expired(0, now=105.0) == []  # 10 is still inside [5, 105]
    assert index.pop_expired(0, now=111.0) == [b"old"]
    assert index.pop_expired(0, now=111.0) == []  # forgotten once
    assert index.pop_expired(0, now=251.0) == [b"new"]
    assert not index.loaded(1)  # partition 1 is loaded from the table when first needed

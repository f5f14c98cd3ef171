"""Billing cycles: anchored on the subscription's own instant, computed from the anchor, UTC."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.pricing.cycles import BillingSchedule, Interval, parse_instant
from meterline.pricing.exceptions import PricingError

UTC = timezone.utc


def at(y: int, m: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "interval", "starts"),
    [
        (at(2025, 1, 15, 9, 30), "month", [at(2025, 1, 15, 9, 30), at(2025, 2, 15, 9, 30), at(2025, 3, 15, 9, 30)]),
        # Jan 31: Feb 28 in a common year, Feb 29 in a leap year, then back to the 31st.
        (at(2025, 1, 31), "month", [at(2025, 1, 31), at(2025, 2, 28), at(2025, 3, 31), at(2025, 4, 30), at(2025, 5, 31)]),
        (at(2024, 1, 31), "month", [at(2024, 1, 31), at(2024, 2, 29), at(2024, 3, 31), at(2024, 4, 30), at(2024, 5, 31)]),
        (at(2025, 1, 30), "month", [at(2025, 1, 30), at(2025, 2, 28), at(2025, 3, 30)]),
        (at(2024, 12, 31, 23, 59), "month", [at(2024, 12, 31, 23, 59), at(2025, 1, 31, 23, 59), at(2025, 2, 28, 23, 59)]),
        (at(2024, 2, 29), "year", [at(2024, 2, 29), at(2025, 2, 28), at(2026, 2, 28), at(2027, 2, 28), at(2028, 2, 29)]),
        (at(2025, 6, 1), "year", [at(2025, 6, 1), at(2026, 6, 1)]),
    ],
)
def test_cycle_starts(anchor: datetime, interval: Interval, starts: list[datetime]) -> None:
    cycles = BillingSchedule(anchor, interval).cycles(len(starts))
    assert [c.start for c in cycles] == starts
    assert [c.index for c in cycles] == list(range(len(starts)))


def test_non_utc_anchor_is_converted() -> None:
    paris = timezone(timedelta(hours=1))
    schedule = BillingSchedule(datetime(2025, 2, 1, 0, 30, tzinfo=paris))
    assert schedule.anchor == at(2025, 1, 31, 23, 30)
    assert schedule.cycle(1).start == at(2025, 2, 28, 23, 30)  # UTC anchor Jan 31 clamps, as UTC


@pytest.mark.parametrize(
    ("instant", "index"),
    [
        (at(2025, 1, 31), 0),
        (at(2025, 2, 27, 23, 59), 0),
        (at(2025, 2, 28), 1),  # a boundary belongs to the cycle it starts
        (at(2025, 3, 30, 23, 59), 1),
        (at(2025, 3, 31), 2),
        (at(2026, 1, 31), 12),
    ],
)
def test_cycle_at(instant: datetime, index: int) -> None:
    assert BillingSchedule(at(2025, 1, 31)).cycle_at(instant).index == index


def test_before_the_anchor_there_is_no_cycle() -> None:
    with pytest.raises(PricingError, match="before the subscription's anchor"):
        BillingSchedule(at(2025, 1, 31)).cycle_at(at(2025, 1, 30))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(PricingError, match="time zone"):
        BillingSchedule(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2025-01-31", at(2025, 1, 31)), ("2025-01-31T10:00:00Z", at(2025, 1, 31, 10)),
     ("2025-01-31T12:00:00+02:00", at(2025, 1, 31, 10))],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2025-01-31T10:00:00"])
def test_parse_instant_refuses(text: str) -> None:
    with pytest.raises(PricingError):
        parse_instant(text)


def test_fraction_remaining_is_by_time() -> None:
    cycle = BillingSchedule(at(2025, 4, 1)).cycle(0)  # 30 days
    assert cycle.fraction_remaining(at(2025, 4, 16)) == 0.5
    assert cycle.fraction_remaining(at(2025, 4, 1)) == 1
    assert cycle.fraction_remaining(at(2025, 5, 1)) == 0


anchors = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
intervals = st.sampled_from(["month", "year"])


@given(anchor=anchors, interval=intervals, count=st.integers(1, 40))
def test_cycles_tile_time(anchor: datetime, interval: Interval, count: int) -> None:
    cycles = BillingSchedule(anchor, interval).cycles(count)
    assert cycles[0].start == anchor
    for before, after in zip(cycles, cycles[1:], strict=False):
        assert before.end == after.start  # no gap, no overlap
    assert all(c.start < c.end for c in cycles)


@given(anchor=anchors, interval=intervals, offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3660)))
def test_every_instant_is_in_exactly_one_cycle(anchor: datetime, interval: Interval, offset: timedelta) -> None:
    schedule = BillingSchedule(anchor, interval)
    instant = anchor + offset
    found = schedule.cycle_at(instant)
    assert found.contains(instant)
    assert not schedule.cycle(found.index + 1).contains(instant)
    if found.index > 0:
        assert not schedule.cycle(found.index - 1).contains(instant)


@given(anchor=anchors, n=st.integers(0, 240))
def test_month_end_anchors_return_to_their_day(anchor: datetime, n: int) -> None:
    """Each start is the anchor's own day, or the month's last day when the month is shorter."""
    start = BillingSchedule(anchor).cycle(n).start
    months = anchor.month - 1 + n
    year, month = anchor.year + months // 12, months % 12 + 1
    assert (start.year, start.month) == (year, month)
    assert start.day == min(anchor.day, calendar.monthrange(year, month)[1])
    assert start.time() == anchor.time()


@given(year=st.integers(1990, 2200), month=st.sampled_from([1, 3, 5, 7, 8, 10, 12]), n=st.integers(0, 240))
def test_a_31st_anchor_is_back_on_the_31st_in_every_31_day_month(year: int, month: int, n: int) -> None:
    start = BillingSchedule(at(year, month, 31)).cycle(n).start
    if calendar.monthrange(start.year, start.month)[1] == 31:
        assert start.day == 31  # never dragged down to 28 by an earlier February

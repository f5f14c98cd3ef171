"""Billing cycles anchored on each subscription's own start instant, in UTC.

Cycle `n` starts at the anchor plus `n` months (12 `n` for yearly), with the day clamped to
the month's length. Every boundary is computed from the original anchor, never from the
previous boundary: a Jan 31 anchor gives Feb 28 (29), then Mar 31, not Mar 28. Cycles are
half-open `[start, end)`, so they tile time with no gap and no overlap. Time is always an
argument here; nothing in this module reads a clock.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal

from meterline.pricing.exceptions import PricingError

Interval = Literal["month", "year"]
MONTHS_PER: dict[str, int] = {"month": 1, "year": 12}


def as_utc(instant: datetime, name: str = "instant") -> datetime:
    """`instant` in UTC; a naive datetime is refused because its zone would be a guess."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise PricingError(f"{name} must carry a time zone (UTC is expected), got naive {instant.isoformat()}")
    return instant.astimezone(timezone.utc)


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` plus `months` calendar months, day clamped to the target month's length."""
    year, month0 = divmod(anchor.month - 1 + months, 12)
    year += anchor.year
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class Cycle:
    """One billing cycle `[start, end)`; `index` 0 starts at the anchor."""

    index: int
    start: datetime
    end: datetime

    def contains(self, instant: datetime) -> bool:
        return self.start <= as_utc(instant) < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def fraction_remaining(self, at: datetime) -> Decimal:
        """Share of the cycle from `at` to its end, by elapsed time (microsecond exact)."""
        at = as_utc(at, "at")
        if not self.start <= at <= self.end:
            raise PricingError(f"{at.isoformat()} is outside the cycle [{self.start.isoformat()}, {self.end.isoformat()})")
        return Decimal(_micros(self.end - at)) / Decimal(_micros(self.duration))


@dataclass(frozen=True)
class BillingSchedule:
    """The cycles of one subscription: an anchor instant and an interval."""

    anchor: datetime
    interval: Interval = "month"

    def __post_init__(self) -> None:
        if self.interval not in MONTHS_PER:
            raise PricingError(f"interval must be one of {sorted(MONTHS_PER)}, got {self.interval!r}")
        object.__setattr__(self, "anchor", as_utc(self.anchor, "anchor"))

    def boundary(self, index: int) -> datetime:
        """Start of cycle `index` (= end of cycle `index - 1`)."""
        return add_months(self.anchor, index * MONTHS_PER[self.interval])

    def cycle(self, index: int) -> Cycle:
        """Cycle number `index` (0 = the first)."""
        if index < 0:
            raise PricingError(f"cycle index must be >= 0, got {index}")
        return Cycle(index, self.boundary(index), self.boundary(index + 1))

    def cycle_at(self, instant: datetime) -> Cycle:
        """The one cycle containing `instant`; instants before the anchor have none."""
        instant = as_utc(instant)
        if instant < self.anchor:
            raise PricingError(f"{instant.isoformat()} is before the subscription's anchor {self.anchor.isoformat()}")
        months = (instant.year - self.anchor.year) * 12 + instant.month - self.anchor.month
        index = max(months // MONTHS_PER[self.interval], 0)
        # The calendar estimate can be one off either way (day and time of day); walk to it.
        while index > 0 and self.boundary(index) > instant:
            index -= 1
        while self.boundary(index + 1) <= instant:
            index += 1
        return self.cycle(index)

    def cycles(self, count: int, first: int = 0) -> list[Cycle]:
        """`count` consecutive cycles starting at index `first`."""
        return [self.cycle(index) for index in range(first, first + count)]


def parse_instant(text: str) -> datetime:
    """ISO 8601 text to a UTC instant; a date alone means midnight UTC, `Z` is accepted."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PricingError(f"not an ISO 8601 instant: {text!r} (e.g. 2025-01-31T09:30:00Z)") from None
    if value.tzinfo is None:
        if len(text.strip()) > 10:  # a time without a zone is ambiguous; a bare date is not
            raise PricingError(f"instant {text!r} has no time zone; add Z or +00:00")
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)

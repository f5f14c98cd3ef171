"""Pure per-user ledger rules: when an event is counted, and what a balance holds.

Faust is at-least-once: after a crash it re-delivers events whose offsets were
not committed, although their table updates may already be in the changelog.
Two records make that replay harmless without transactions:

- the user's `Balance` remembers the last offset it applied (a user's events
  all live on one partition, in order), so a replayed event is recognised;
- `SeenRequest` remembers where a request id was *first* seen, so a re-sent
  event (new offset, same request id) is a duplicate, while the replay of the
  first copy (same offset) is not.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum


class Decision(Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # same request id seen earlier at another offset
    REPLAYED = "replayed"  # this very offset was applied before a restart


@dataclass(frozen=True)
class SeenRequest:
    partition: int
    offset: int
    seen_at: float  # epoch seconds when first seen: drives the dedupe window

    def to_json(self) -> list[float]:
        return [self.partition, self.offset, self.seen_at]

    @classmethod
    def from_json(cls, value: list[float]) -> SeenRequest:
        return cls(int(value[0]), int(value[1]), float(value[2]))


@dataclass(frozen=True)
class Balance:
    credits_used: Decimal = Decimal(0)
    events: int = 0
    partition: int = -1
    last_offset: int = -1

    def to_json(self) -> dict[str, object]:
        return {"credits": str(self.credits_used), "events": self.events, "p": self.partition, "o": self.last_offset}

    @classmethod
    def from_json(cls, value: dict[str, object] | None) -> Balance:
        if not value:
            return cls()
        return cls(Decimal(str(value["credits"])), int(value["events"]), int(value["p"]), int(value["o"]))  # type: ignore[call-overload]

    def apply(self, credits: Decimal, partition: int, offset: int) -> Balance:
        return Balance(self.credits_used + credits, self.events + 1, partition, offset)


def decide(balance: Balance, seen: SeenRequest | None, partition: int, offset: int) -> Decision:
    if balance.partition == partition and offset <= balance.last_offset:
        return Decision.REPLAYED
    if seen is not None and (seen.partition, seen.offset) != (partition, offset):
        return Decision.DUPLICATE
    return Decision.APPLY


def must_remember(decision: Decision, seen: SeenRequest | None) -> bool:
    """Whether to record this event's request id as first seen at its offset.

    Always for an applied event. Also for a replayed one whose record is missing: the two tables'
    changelogs are written independently, so a crash can keep the balance and lose the record,
    and without it a later re-send of the same id would be counted again.
    """
    return decision is Decision.APPLY or (decision is Decision.REPLAYED and seen is None)


class ExpiryIndex:
    """Which remembered request ids have outlived the dedupe window, per partition.

    A min-heap of (seen_at, key) per partition. It is only an index over the seen-requests
    table, so after a restart or a rebalance it is rebuilt from the table (`load`).
    """

    def __init__(self, window_seconds: float):
        self.window_seconds = window_seconds
        self._heaps: dict[int, list[tuple[float, bytes]]] = {}

    def loaded(self, partition: int) -> bool:
        return partition in self._heaps

    def load(self, partition: int, entries: Iterable[tuple[bytes, SeenRequest]]) -> None:
        heap = [(seen.seen_at, key) for key, seen in entries if seen.partition == partition]
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def add(self, key: bytes, seen: SeenRequest) -> None:
        heapq.heappush(self._heaps.setdefault(seen.partition, []), (seen.seen_at, key))

    def pop_expired(self, partition: int, now: float) -> list[bytes]:
        heap = self._heaps.get(partition, [])
        horizon = now - self.window_seconds
        expired = []
        while heap and heap[0][0] < horizon:
            expired.append(heapq.heappop(heap)[1])
        return expired

    def reset(self) -> None:
        self._heaps.clear()

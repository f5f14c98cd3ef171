"""The two kinds of state a worker keeps per source partition, and their bytes on Kafka.

- `UserState`: one record per user (`org/user`), rewritten once per batch that touches the user.
  It holds the lifetime balance, the current billing cycle's account (accounts.py) and the last
  source offset applied, which is what makes a replay harmless.
- `RememberedIds`: the request ids seen within the dedupe window. They do not live in the user's
  record (a heavy user sends millions in a window); each batch appends one record holding the ids
  it saw first, and a whole batch record is forgotten at once when it leaves the window.

Pure: no Kafka, no Faust, no clock. Time comes in as an argument.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from collections.abc import Iterator
from decimal import Decimal
from typing import NamedTuple

import orjson

from meterline.processors.accounts import CycleAccount


class UserState(NamedTuple):
    """A user's account as the stream knows it: lifetime totals, the current cycle, the last offset applied.

    A tuple, not a frozen dataclass: one is made per applied event, ~4x cheaper.
    """

    credits_used: Decimal = Decimal(0)  # lifetime
    events: int = 0  # lifetime
    partition: int = -1
    last_offset: int = -1  # the last source offset applied: at or before it is a replay
    account: CycleAccount | None = None  # the current billing cycle (processors/accounts.py)
    as_of: float = 0.0  # the latest event time applied, epoch seconds
    applied_at: float = 0.0  # when the worker applied that batch, epoch seconds

    def apply(self, credits: Decimal, partition: int, offset: int, account: CycleAccount | None = None,
              event_time: float = 0.0, applied_at: float = 0.0) -> UserState:
        # Exact: BatchProcessor.process runs under money.EXACT, which raises rather than rounds.
        return UserState(self.credits_used + credits, self.events + 1, partition, offset, account,
                         max(self.as_of, event_time), applied_at)

    def correct(self, credits: Decimal, events: int, partition: int, offset: int, account: CycleAccount | None,
                applied_at: float) -> UserState:
        """A correction of an event already counted: its differences (negative for a void), once."""
        return UserState(self.credits_used + credits, self.events + events, partition, offset, account, self.as_of, applied_at)

    def has_applied(self, partition: int, offset: int) -> bool:
        return self.partition == partition and offset <= self.last_offset

    def to_bytes(self) -> bytes:
        return orjson.dumps({"v": 2, "credits_used": str(self.credits_used), "events": self.events,
                             "partition": self.partition, "last_offset": self.last_offset,
                             "account": None if self.account is None else self.account.to_json(),
                             "as_of": self.as_of, "applied_at": self.applied_at})

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserState:
        if not raw:
            return cls()
        value = orjson.loads(raw)
        account = value.get("account")  # version 1 records had no account
        return cls(Decimal(value["credits_used"]), int(value["events"]), int(value["partition"]),
                   int(value["last_offset"]), None if account is None else CycleAccount.from_json(account),
                   float(value.get("as_of", 0.0)), float(value.get("applied_at", 0.0)))


class WrittenStates:
    """The states a worker wrote, decoded, by user, with the bytes it stored for them.

    A batch reads each user it touches; the heavy users of a power law are back in nearly every
    batch, and decoding one costs ~4 us. `read` hands back the state written when the store still
    holds those very bytes (`is`: a recovery or any other write stored other bytes), else decodes.
    Bounded: ~1 KB a state, all dropped at once when `limit` is reached.
    """

    def __init__(self, limit: int = 20_000):
        self.limit = limit
        self._states: dict[bytes, tuple[bytes, UserState]] = {}

    def __len__(self) -> int:
        return len(self._states)

    def read(self, user_key: bytes, raw: bytes | None) -> UserState:
        written = self._states.get(user_key)
        if written is not None and written[0] is raw:
            return written[1]
        return UserState.from_bytes(raw)

    def wrote(self, user_key: bytes, stored: bytes, state: UserState) -> None:
        if len(self._states) >= self.limit:
            self._states.clear()
        self._states[user_key] = (stored, state)

    def clear(self) -> None:
        self._states.clear()


# Copied for each digest rather than made: making one parses a dozen parameters, ~20 % of a
# digest of an event's bytes. Never updated themselves.
_BLAKE2B_128 = hashlib.blake2b(digest_size=16)
_BLAKE2B_64 = hashlib.blake2b(digest_size=8)


def id_digest(dedupe_key: bytes) -> int:
    """128 bits of BLAKE2b: two distinct ids collide with odds of ~1e-24 among 10^7 remembered."""
    digest = _BLAKE2B_128.copy()
    digest.update(dedupe_key)
    return int.from_bytes(digest.digest(), "big")


def payload_fingerprint(raw: bytes) -> int:
    """64 bits over the event's bytes: a re-send with other bytes is reported as a conflict."""
    digest = _BLAKE2B_64.copy()
    digest.update(raw)
    return int.from_bytes(digest.digest(), "big")


class Seen(NamedTuple):
    """Where a request id was first seen, what its payload was, and which price book rated it.

    Handed out by `RememberedIds.get`; what it keeps is a plain tuple of the same ints, which the
    garbage collector stops tracking (never a NamedTuple's instance: it stays tracked, and millions
    of them made each full collection pause the worker ~100 ms, the reserve() p99).
    """

    offset: int
    fingerprint: int
    price_book: int = 0  # an index into the processor's price book versions; 0: not recorded (older records)


_HEADER = struct.Struct(">d")  # seen_at, epoch seconds: the records written before price books were named
# Then: seen_at, and the version of the price book that rated the batch. A positive double never
# starts with a zero byte past the first few subnormals, so the two headers cannot be confused.
_VERSIONED = b"\x00ML2"
_VERSIONED_HEADER = struct.Struct(">4sdH")  # magic, seen_at, length of the version that follows
_ENTRY = struct.Struct(">QQqQ")  # digest high, digest low, offset, fingerprint: 32 bytes an id


def encode_batch(seen_at: float, entries: list[tuple[int, Seen]], price_version: str = "") -> bytes:
    version = price_version.encode()
    parts = [_VERSIONED_HEADER.pack(_VERSIONED, seen_at, len(version)), version]
    for digest, seen in entries:
        parts.append(_ENTRY.pack(digest >> 64, digest & (2**64 - 1), seen.offset, seen.fingerprint))
    return b"".join(parts)


def _header(raw: bytes) -> tuple[float, str, int]:
    """seen_at, the price book version ("" if not recorded), where the entries start."""
    if raw.startswith(_VERSIONED):
        _magic, seen_at, length = _VERSIONED_HEADER.unpack_from(raw)
        start = _VERSIONED_HEADER.size + length
        return seen_at, raw[_VERSIONED_HEADER.size:start].decode(), start
    (seen_at,) = _HEADER.unpack_from(raw)
    return seen_at, "", _HEADER.size


def batch_price_version(raw: bytes) -> str:
    """The version of the price book that rated a batch record's events ("" for older records)."""
    return _header(raw)[1]


def decode_batch(raw: bytes, price_book: int = 0) -> tuple[float, Iterator[tuple[int, Seen]]]:
    """seen_at, and the entries, each marked with `price_book` (the caller's index for the batch's version)."""
    seen_at, _version, start = _header(raw)

    def entries() -> Iterator[tuple[int, Seen]]:
        for high, low, offset, fingerprint in _ENTRY.iter_unpack(memoryview(raw)[start:]):
            yield (high << 64) | low, Seen(offset, fingerprint, price_book)

    return seen_at, entries()


class RememberedIds:
    """The ids one source partition remembers, grouped by the batch record that holds them.

    Rules (processors/README.md):
    - an id is remembered from the batch that first saw it, for `window_seconds` from then;
    - a batch record leaves as a whole once its `seen_at` is older than the window;
    - past `max_ids`, the oldest batch records are forgotten early and counted in
      `forgotten_early`: memory stays bounded and the shortened window is visible.
    """

    def __init__(self, window_seconds: float, max_ids: int):
        self.window_seconds = window_seconds
        self.max_ids = max_ids
        self._ids: dict[int, tuple[int, int, int]] = {}  # digest -> a Seen's fields, see Seen
        # Oldest first; each batch's digests as a tuple, which the collector stops tracking (a list
        # of millions of ints would be traversed by every full collection).
        self._batches: deque[tuple[float, bytes, tuple[int, ...]]] = deque()
        self.forgotten_early = 0

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, digest: int) -> Seen | None:
        fields = self._ids.get(digest)
        return None if fields is None else Seen._make(fields)

    def add_batch(self, batch_key: bytes, seen_at: float, entries: list[tuple[int, Seen]]) -> None:
        """Remember a batch record's ids (from this worker's batch, or from the changelog)."""
        digests = []
        for digest, seen in entries:
            if digest not in self._ids:  # a re-remembered id keeps its first record
                self._ids[digest] = tuple(seen)
                digests.append(digest)
        self._batches.append((seen_at, batch_key, tuple(digests)))

    def expire(self, now: float) -> list[bytes]:
        """Forget the batch records past the window, or past the bound; return their keys."""
        horizon = now - self.window_seconds
        forgotten = []
        while self._batches and (self._batches[0][0] < horizon or len(self._ids) > self.max_ids):
            seen_at, key, digests = self._batches.popleft()
            if seen_at >= horizon:
                self.forgotten_early += len(digests)
            for digest in digests:
                self._ids.pop(digest, None)
            forgotten.append(key)
        return forgotten

    @property
    def oldest_seen_at(self) -> float | None:
        return self._batches[0][0] if self._batches else None

"""The worker's two kinds of state and their bytes (processors/state.py), without Kafka."""

from __future__ import annotations

import gc
import hashlib
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.processors.state import (RememberedIds, Seen, UserState, WrittenStates, batch_price_version, decode_batch,
                                        encode_batch, id_digest, payload_fingerprint)

HIGH_BIT = 1 << 127
MAX_DIGEST = 2**128 - 1
MAX_FINGERPRINT = 2**64 - 1


# --- digests: what remembered-ids records written by any version hold ---------------------------

@given(st.binary(max_size=2000))
def test_digests_are_blake2b_of_the_bytes_whichever_bytes_came_before(data: bytes) -> None:
    id_digest(b"something else first"), payload_fingerprint(b"something else first")
    assert id_digest(data) == int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")
    assert payload_fingerprint(data) == int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


# --- WrittenStates: what a batch reads back ----------------------------------------------------

def test_a_state_read_back_is_the_one_written_while_the_store_holds_its_bytes() -> None:
    written = WrittenStates()
    state = UserState().apply(Decimal("2.5"), partition=1, offset=7)
    stored = bytes(memoryview(state.to_bytes()))
    written.wrote(b"org/u", stored, state)
    assert written.read(b"org/u", stored) is state  # not decoded again


def test_other_bytes_in_the_store_are_decoded_not_taken_for_the_state_written() -> None:
    """A recovery (or any other writer) stores other bytes, even equal ones: they are the truth."""
    written = WrittenStates()
    mine = UserState().apply(Decimal(1), partition=1, offset=7)
    written.wrote(b"org/u", bytes(memoryview(mine.to_bytes())), mine)
    recovered = UserState().apply(Decimal(4), partition=1, offset=9)
    assert written.read(b"org/u", recovered.to_bytes()) == recovered
    equal_bytes = bytes(bytearray(mine.to_bytes()))  # the same content, another object
    assert written.read(b"org/u", equal_bytes) == mine and written.read(b"org/u", equal_bytes) is not mine
    assert written.read(b"org/u", None) == UserState()  # deleted from the store: a new user's state


def test_written_states_stay_within_their_limit() -> None:
    written = WrittenStates(limit=3)
    states = {f"org/u{n}".encode(): UserState().apply(Decimal(n), partition=0, offset=n) for n in range(10)}
    stored = {key: bytes(memoryview(state.to_bytes())) for key, state in states.items()}
    for key, state in states.items():
        written.wrote(key, stored[key], state)
        assert len(written) <= 3
    for key, state in states.items():  # whatever was dropped is decoded: the same state either way
        assert written.read(key, stored[key]) == state


# --- UserState ---------------------------------------------------------------------------------

def test_user_state_round_trips_decimal_credits_exactly() -> None:
    state = UserState()
    for offset in (3, 4, 5):
        state = state.apply(Decimal("0.1"), partition=2, offset=offset)
    assert state.credits_used == Decimal("0.3")  # not 0.30000000000000004
    restored = UserState.from_bytes(state.to_bytes())
    assert restored == UserState(Decimal("0.3"), events=3, partition=2, last_offset=5)
    assert str(restored.credits_used) == "0.3"


@pytest.mark.parametrize("credits", [
    Decimal("0"),
    Decimal("0.000000000000000001"),
    Decimal("12345678901234567890.123456789012345678"),
    Decimal("1E+3"),
])
def test_user_state_round_trips_any_exact_decimal(credits: Decimal) -> None:
    state = UserState(credits, events=7, partition=0, last_offset=2**62)
    restored = UserState.from_bytes(state.to_bytes())
    assert restored == state
    assert restored.credits_used.as_tuple() == credits.as_tuple()  # the same digits, not just the same value


@pytest.mark.parametrize("raw", [None, b""])
def test_no_stored_state_is_a_new_user(raw: bytes | None) -> None:
    assert UserState.from_bytes(raw) == UserState(Decimal(0), 0, -1, -1)


def test_a_new_user_has_applied_nothing() -> None:
    assert not UserState().has_applied(0, 0)
    assert not UserState().has_applied(-1, 0)


@pytest.mark.parametrize(("partition", "offset", "applied"), [
    (4, 9, False),  # after the last applied offset: new
    (4, 8, True),  # the last applied offset itself: a replay
    (4, 0, True),  # before it: a replay
    (3, 8, False),  # another partition: its offsets say nothing about this one
    (5, 2, False),
])
def test_has_applied_is_at_or_before_the_last_offset_of_the_same_partition(partition: int, offset: int,
                                                                           applied: bool) -> None:
    state = UserState().apply(Decimal(1), partition=4, offset=8)
    assert state.has_applied(partition, offset) is applied


def test_apply_adds_credits_and_one_event_and_moves_the_offset() -> None:
    state = UserState().apply(Decimal("1.5"), 1, 10).apply(Decimal("2.25"), 1, 12)
    assert (state.credits_used, state.events, state.partition, state.last_offset) == (Decimal("3.75"), 2, 1, 12)


# --- batch records -----------------------------------------------------------------------------

def test_batch_record_round_trips_extreme_digests_offsets_and_fingerprints() -> None:
    entries = [
        (0, Seen(0, 0)),
        (HIGH_BIT, Seen(2**62, MAX_FINGERPRINT)),
        (MAX_DIGEST, Seen(1, 1 << 63)),
        (HIGH_BIT | 0xDEADBEEF, Seen(2**62 - 1, 12345)),
        (id_digest(b"acme/alice/r-1"), Seen(42, 7)),
    ]
    raw = encode_batch(1_700_000_000.125, entries, "0123456789ab")
    assert len(raw) == 14 + 12 + 32 * len(entries)  # header, the price book version, 32 bytes an id
    seen_at, decoded = decode_batch(raw, price_book=3)
    assert seen_at == 1_700_000_000.125 and batch_price_version(raw) == "0123456789ab"
    assert list(decoded) == [(digest, seen._replace(price_book=3)) for digest, seen in entries]


def test_a_batch_record_from_before_price_books_were_named_still_reads() -> None:
    seen = Seen(42, 7)
    old = struct.pack(">d", 1_700_000_000.5) + struct.pack(">QQqQ", 0, 99, seen.offset, seen.fingerprint)
    seen_at, decoded = decode_batch(old)
    assert (seen_at, list(decoded), batch_price_version(old)) == (1_700_000_000.5, [(99, seen)], "")


@given(st.floats(min_value=0.0, max_value=1e12))
def test_no_seen_at_makes_an_old_header_look_like_a_versioned_one(seen_at: float) -> None:
    assert batch_price_version(struct.pack(">d", seen_at) + b"\x00" * 32) == ""


def test_an_empty_batch_record_keeps_its_time() -> None:
    seen_at, decoded = decode_batch(encode_batch(12.5, []))
    assert seen_at == 12.5 and list(decoded) == []


def test_id_digest_is_128_bits_and_tells_ids_apart() -> None:
    digests = {id_digest(f"acme/alice/r-{n}".encode()) for n in range(1000)}
    assert len(digests) == 1000
    assert all(0 <= digest <= MAX_DIGEST for digest in digests)
    assert any(digest >= HIGH_BIT for digest in digests)  # the high half is used: it must survive encoding
    assert id_digest(b"acme/alice/r-1") == id_digest(b"acme/alice/r-1")


# --- RememberedIds -----------------------------------------------------------------------------

def _entries(*digests: int, offset: int = 0) -> list[tuple[int, Seen]]:
    return [(digest, Seen(offset + n, digest)) for n, digest in enumerate(digests)]


@pytest.mark.parametrize(("now", "kept"), [
    (109.0, True),
    (110.0, True),  # exactly window_seconds old: still inside
    (110.001, False),  # just outside
    (500.0, False),
])
def test_a_batch_leaves_as_a_whole_once_older_than_the_window(now: float, kept: bool) -> None:
    ids = RememberedIds(window_seconds=10, max_ids=1000)
    ids.add_batch(b"old", 100.0, _entries(1, 2, 3))
    ids.add_batch(b"new", 105.0, _entries(4))
    forgotten = ids.expire(now)
    assert forgotten == ([] if kept else [b"old"]) + ([] if now <= 115.0 else [b"new"])
    for digest in (1, 2, 3):
        assert (ids.get(digest) is not None) is kept
    assert ids.forgotten_early == 0  # expiry by the window is not early
    assert len(ids) == (3 if kept else 0) + (1 if now <= 115.0 else 0)


def test_past_max_ids_the_oldest_batches_are_forgotten_first_and_counted() -> None:
    ids = RememberedIds(window_seconds=3600, max_ids=4)
    ids.add_batch(b"b1", 1.0, _entries(1, 2))
    ids.add_batch(b"b2", 2.0, _entries(3, 4))
    assert ids.expire(2.0) == []  # 4 ids: at the bound, not past it
    ids.add_batch(b"b3", 3.0, _entries(5))
    assert ids.expire(3.0) == [b"b1"]
    assert ids.forgotten_early == 2
    assert [ids.get(d) is not None for d in (1, 2, 3, 4, 5)] == [False, False, True, True, True]
    assert ids.oldest_seen_at == 2.0
    ids.add_batch(b"b4", 4.0, _entries(6, 7, 8, 9))
    assert ids.expire(4.0) == [b"b2", b"b3"]  # 7 ids; 5 without b2, still past the bound; 4 without b3
    assert ids.forgotten_early == 5
    assert len(ids) == 4 and all(ids.get(d) is not None for d in (6, 7, 8, 9))


def test_a_single_batch_past_max_ids_is_forgotten_whole() -> None:
    ids = RememberedIds(window_seconds=3600, max_ids=2)
    ids.add_batch(b"big", 1.0, _entries(1, 2, 3))
    assert ids.expire(1.0) == [b"big"]
    assert len(ids) == 0 and ids.forgotten_early == 3


def test_an_id_remembered_again_keeps_its_first_record() -> None:
    ids = RememberedIds(window_seconds=10, max_ids=1000)
    ids.add_batch(b"first", 0.0, [(77, Seen(5, 111))])
    ids.add_batch(b"second", 8.0, [(77, Seen(9, 222)), (78, Seen(10, 333))])
    assert ids.get(77) == Seen(5, 111)
    assert ids.get(78) == Seen(10, 333)
    assert len(ids) == 2
    # Remembered from the batch that first saw it: it leaves with that batch.
    assert ids.expire(10.5) == [b"first"]
    assert ids.get(77) is None and ids.get(78) == Seen(10, 333)


def test_remembered_ids_leave_nothing_for_the_garbage_collector_to_walk() -> None:
    # A worker remembers millions of ids; were each a tracked object, every full collection would
    # walk them all and pause the event loop (measured: ~100 ms, the reserve() p99).
    remembered = RememberedIds(window_seconds=3600, max_ids=10**9)
    for batch in range(20):
        remembered.add_batch(f"0/{batch}".encode(), 1000.0,
                             [(batch * 5_000 + n, Seen(n, n * 7, 1)) for n in range(5_000)])
    gc.collect()  # a first pass is what stops tracking tuples of ints
    before = len(gc.get_objects())
    remembered.add_batch(b"0/last", 1000.0, [(10**9 + n, Seen(n, n, 1)) for n in range(5_000)])
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # not one per id
    assert len(remembered) == 105_000
    assert remembered.get(10**9 + 3) == Seen(3, 3, 1)

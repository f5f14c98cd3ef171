"""The worker's per-batch rules (processors/batch.py), with a dict for the state store and no Kafka.

Expected credits are computed here, never by the code under test: with no `action`, a gpt-4o-mini
event costs (input_tokens + output_tokens) / 1000 credits (tests/integration/pipeline.py).
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import event as hypothesis_event
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.pricing.catalogue import default_catalogue
from meterline.pricing.rating import default_rater
from meterline.processors.accounts import Accounts
from meterline.processors.batch import MAX_REASON_CHARS, BatchProcessor, BatchResult, DeadLetter, SourceRecord, decode
from meterline.processors.state import UserState, decode_batch
from meterline.producers import build_event
from meterline.schemas import UsageEvent
from meterline.schemas.subscription import Subscription

ORG = "acme"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
WINDOW = 3600.0


def event(user: str, input_tokens: int, output_tokens: int, request_id: str, **extra: Any) -> UsageEvent:
    return build_event(ORG, user, "gpt-4o-mini", input_tokens, output_tokens, request_id=request_id,
                       source="test", timestamp=T0, **extra)


def credits(input_tokens: int, output_tokens: int) -> Decimal:
    """The ground-truth rule, written out: tokens / 1000."""
    return (Decimal(input_tokens) + Decimal(output_tokens)) / Decimal(1000)


def record(value: UsageEvent | bytes | None, offset: int, partition: int = 0, key: bytes | None = None) -> SourceRecord:
    if isinstance(value, UsageEvent):
        return SourceRecord(partition, offset, key if key is not None else value.user_key.encode(), value.to_json())
    return SourceRecord(partition, offset, key, value)


def new_processor(window_seconds: float = WINDOW, max_ids: int = 1_000_000,
                  batches: dict[int, list[tuple[bytes, bytes]]] | None = None) -> BatchProcessor:
    """A freshly started worker's processor, its memory loaded from the batch records given (none: empty)."""
    processor = BatchProcessor(default_rater(), Accounts(default_catalogue(), "free", {}), "test", window_seconds, max_ids)
    for partition in range(4):
        processor.load(partition, (batches or {}).get(partition, []))
    return processor


class Worker:
    """A processor and the state store it reads, written back after each batch as the worker does."""

    def __init__(self, processor: BatchProcessor | None = None, store: dict[bytes, UserState] | None = None):
        self.processor = processor or new_processor()
        self.store: dict[bytes, UserState] = {} if store is None else store

    def run(self, records: list[SourceRecord], now: float = 1000.0) -> BatchResult:
        result = self.processor.process(records, lambda key: self.store.get(key, UserState()), now)
        for key, (_partition, state) in result.states.items():
            self.store[key] = state
        return result

    def balance(self, user: str) -> Decimal:
        return self.store.get(f"{ORG}/{user}".encode(), UserState()).credits_used

    def events(self, user: str) -> int:
        return self.store.get(f"{ORG}/{user}".encode(), UserState()).events


def rated(result: BatchResult) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for _partition, _key, raw in result.rated]


def statuses(result: BatchResult) -> list[tuple[int, str]]:
    return [(r["kafka_offset"], r["status"]) for r in rated(result)]


def remembered_records(result: BatchResult) -> dict[int, list[tuple[bytes, bytes]]]:
    kept: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for partition, key, raw in result.remembered:
        kept[partition].append((key, raw))
    return kept


# --- distinct events ---------------------------------------------------------------------------

@pytest.mark.parametrize("calls", [
    pytest.param([("alice", 100, 20, 0)], id="one"),
    pytest.param([("alice", 1234, 567, 0), ("bob", 0, 0, 0), ("alice", 1, 999, 0), ("carol", 4999, 1999, 0),
                  ("bob", 10, 0, 0)], id="several-users"),
    pytest.param([("alice", 1, 0, 0)] * 7, id="many-small"),  # 0.007 exactly: Decimal, not float
    pytest.param([("alice", 500, 5, 0), ("bob", 3, 3, 1), ("alice", 2, 2, 0), ("bob", 1000, 0, 1)],
                 id="two-partitions"),
])
def test_distinct_events_are_all_applied(calls: list[tuple[str, int, int, int]]) -> None:
    worker = Worker()
    records, expected, counted = [], defaultdict(Decimal), defaultdict(int)
    next_offset = defaultdict(int)
    for n, (user, input_tokens, output_tokens, partition) in enumerate(calls):
        records.append(record(event(user, input_tokens, output_tokens, f"r-{n}"), next_offset[partition], partition))
        next_offset[partition] += 1
        expected[user] += credits(input_tokens, output_tokens)
        counted[user] += 1
    result = worker.run(records)
    assert result.counts["applied"] == len(calls)
    assert result.counts["duplicates"] == result.counts["conflicts"] == result.counts["dead_lettered"] == 0
    assert {user: worker.balance(user) for user in expected} == dict(expected)
    assert {user: worker.events(user) for user in counted} == dict(counted)
    assert [r["status"] for r in rated(result)] == ["applied"] * len(calls)
    assert [Decimal(r["credits"]) for r in rated(result)] == [credits(i, o) for _u, i, o, _p in calls]
    # One remembered-ids record per partition the batch touched, holding every id it saw first.
    by_partition = {partition: len(list(decode_batch(raw)[1])) for partition, _key, raw in result.remembered}
    assert by_partition == {p: sum(1 for c in calls if c[3] == p) for p in next_offset}


# --- re-sends ----------------------------------------------------------------------------------

A = event("alice", 100, 20, "r-1")
B = event("alice", 5, 5, "r-2")
A_OTHER_TOKENS = event("alice", 999, 1, "r-1")  # same request id, other payload

BATCHINGS = {
    "same-batch": [[record(A, 0), record(B, 1), "RESEND@2"]],
    "next-batch": [[record(A, 0), record(B, 1)], ["RESEND@2"]],
    "much-later-batch": [[record(A, 0)], [record(B, 1)], ["RESEND@2"]],
}


def _run_with_resend(resend: UsageEvent, batching: str) -> tuple[Worker, list[BatchResult]]:
    worker = Worker()
    results = []
    for n, batch in enumerate(BATCHINGS[batching]):
        records = [record(resend, 2) if item == "RESEND@2" else item for item in batch]
        results.append(worker.run(records, now=1000.0 + n))  # type: ignore[arg-type]
    return worker, results


def _total(results: list[BatchResult], name: str) -> int:
    return sum(result.counts[name] for result in results)


@pytest.mark.parametrize("batching", list(BATCHINGS))
def test_a_resend_of_the_same_bytes_is_a_duplicate(batching: str) -> None:
    worker, results = _run_with_resend(A, batching)
    assert worker.balance("alice") == credits(100, 20) + credits(5, 5)
    assert worker.events("alice") == 2
    assert _total(results, "applied") == 2
    assert _total(results, "duplicates") == 1 and _total(results, "conflicts") == 0
    assert [s for result in results for s in statuses(result)] == [(0, "applied"), (1, "applied"), (2, "duplicate")]
    if batching != "same-batch":
        assert results[-1].states == {}  # the re-send's batch writes no state


@pytest.mark.parametrize("batching", list(BATCHINGS))
def test_a_resend_with_another_payload_is_a_conflict_and_the_first_copy_counts(batching: str) -> None:
    worker, results = _run_with_resend(A_OTHER_TOKENS, batching)
    assert worker.balance("alice") == credits(100, 20) + credits(5, 5)  # not 999 + 1 tokens
    assert worker.events("alice") == 2
    assert _total(results, "applied") == 2
    assert _total(results, "conflicts") == 1 and _total(results, "duplicates") == 0
    records = [r for result in results for r in rated(result)]
    assert [(r["kafka_offset"], r["status"]) for r in records] == [(0, "applied"), (1, "applied"), (2, "conflict")]
    assert (records[2]["request_id"], records[2]["input_tokens"]) == ("r-1", 999)  # the copy, kept for audit


def test_a_conflicting_copy_then_an_identical_copy_are_each_reported_against_the_first() -> None:
    worker = Worker()
    result = worker.run([record(A, 0), record(A_OTHER_TOKENS, 1), record(A, 2), record(A_OTHER_TOKENS, 3)])
    assert statuses(result) == [(0, "applied"), (1, "conflict"), (2, "duplicate"), (3, "conflict")]
    assert worker.balance("alice") == credits(100, 20) and worker.events("alice") == 1


# --- crash and replay --------------------------------------------------------------------------

CRASH_CALLS = [("alice", 100, 20, "r-1"), ("bob", 300, 0, "r-2"), ("alice", 0, 50, "r-3"),
               ("alice", 100, 20, "r-1"), ("bob", 7, 7, "r-4"), ("carol", 1000, 1000, "r-5")]
CRASH_RECORDS = [record(event(*call), offset) for offset, call in enumerate(CRASH_CALLS)]
CRASH_EXPECTED = {"alice": credits(100, 20) + credits(0, 50), "bob": credits(300, 0) + credits(7, 7),
                  "carol": credits(1000, 1000)}
CRASH_EVENTS = {"alice": 2, "bob": 2, "carol": 1}
CRASH_STATUSES = [(0, "applied"), (1, "applied"), (2, "applied"), (3, "duplicate"), (4, "applied"), (5, "applied")]


def _balances(worker: Worker) -> dict[str, Decimal]:
    return {user: worker.balance(user) for user in CRASH_EXPECTED}


def test_without_a_crash_the_batch_gives_the_expected_balances() -> None:
    worker = Worker()
    result = worker.run(CRASH_RECORDS)
    assert _balances(worker) == CRASH_EXPECTED
    assert statuses(result) == CRASH_STATUSES


@pytest.mark.parametrize(("states_persisted", "remembered_persisted"), [
    pytest.param(False, False, id="a-nothing-persisted"),
    pytest.param(True, False, id="b-states-kept-remembered-lost"),
    pytest.param(False, True, id="c-remembered-kept-states-lost"),
    pytest.param(True, True, id="all-persisted-offsets-not-committed"),
])
def test_a_replay_after_a_crash_counts_every_event_exactly_once(states_persisted: bool,
                                                                remembered_persisted: bool) -> None:
    before = Worker()
    first = before.run(CRASH_RECORDS, now=1000.0)
    # The crash: the worker dies after writing some of the batch's outputs, before acknowledging it.
    kept_batches = remembered_records(first) if remembered_persisted else {}
    store = dict(before.store) if states_persisted else {}
    after = Worker(new_processor(batches=kept_batches), store)
    replay = after.run(CRASH_RECORDS, now=1005.0)

    assert _balances(after) == CRASH_EXPECTED
    assert {user: after.events(user) for user in CRASH_EVENTS} == CRASH_EVENTS
    assert replay.counts["applied"] == (0 if states_persisted else 5)
    assert statuses(replay) == CRASH_STATUSES  # the rated records are published again, the same

    # Whatever was lost, the ids are remembered again: a later re-send is still a duplicate, also
    # for a worker restarted from what the two runs persisted.
    persisted = defaultdict(list, {p: list(b) for p, b in kept_batches.items()})
    for partition, batch in remembered_records(replay).items():
        persisted[partition].extend(batch)
    restarted = Worker(new_processor(batches=dict(persisted)), after.store)
    for worker in (after, restarted):
        late = worker.run([record(event("alice", 0, 50, "r-3"), 6)], now=1010.0)
        assert statuses(late) == [(6, "duplicate")]
        assert late.counts["duplicates"] == 1 and late.counts["applied"] == 0
        assert _balances(worker) == CRASH_EXPECTED


def test_b_replay_with_the_remembered_ids_lost_applies_nothing_and_remembers_the_ids_again() -> None:
    before = Worker()
    first = before.run(CRASH_RECORDS, now=1000.0)
    after = Worker(new_processor(), dict(before.store))  # states kept, the batch record lost
    replay = after.run(CRASH_RECORDS, now=1005.0)
    assert replay.states == {}  # nothing applied twice: no state to write
    # Five replays; the in-batch re-send (offset 3, after alice's last applied offset 2) is a duplicate again.
    assert replay.counts["applied"] == 0 and replay.counts["replayed"] == 5 and replay.counts["duplicates"] == 1
    assert [r["status"] for r in rated(replay)] == [r["status"] for r in rated(first)]
    assert [r["credits"] for r in rated(replay)] == [r["credits"] for r in rated(first)]
    [(_partition, _key, raw)] = replay.remembered
    [(_partition, _key, first_raw)] = first.remembered
    assert dict(decode_batch(raw)[1]) == dict(decode_batch(first_raw)[1])  # the same 5 ids, the same first offsets


def test_c_replay_with_the_states_lost_applies_each_event_once() -> None:
    before = Worker()
    first = before.run(CRASH_RECORDS, now=1000.0)
    after = Worker(new_processor(batches=remembered_records(first)), {})
    replay = after.run(CRASH_RECORDS, now=1005.0)
    assert replay.counts["applied"] == 5 and replay.counts["duplicates"] == 1
    assert replay.remembered == []  # every id was already remembered
    assert _balances(after) == CRASH_EXPECTED
    again = Worker(new_processor(batches=remembered_records(first)), after.store).run(CRASH_RECORDS, now=1010.0)
    assert again.counts["applied"] == 0 and _balances(after) == CRASH_EXPECTED


# --- poison records ----------------------------------------------------------------------------

VALID = event("alice", 10, 20, "p-1")
VALID_DICT = orjson.loads(VALID.to_json())
KEY = b"acme/alice"


def _mutated(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    document = copy.deepcopy(base or VALID_DICT)
    *parents, last = path.split(".")
    target = document
    for part in parents:
        target = target[part]
    target[last] = value
    return document


def _bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


UNKNOWN_MODEL = VALID.model_copy(update={"data": VALID.data.model_copy(update={"model": "no-such-model"})}).to_json()
HUGE_INVALID = _bytes(_mutated("data.metadata", {"blob": "x" * 900_000}))  # metadata is capped at 8 KiB

POISON = [
    pytest.param(KEY, None, "value", id="null-value"),
    pytest.param(KEY, b"not json", "event", id="not-json"),
    pytest.param(KEY, b"[1,2]", "event", id="json-array"),
    pytest.param(KEY, b"\xff\xfe", "event", id="invalid-utf8"),
    pytest.param(KEY, b"", "event", id="empty-value"),
    pytest.param(KEY, _bytes(_mutated("data.input_tokens", -5)), "data.input_tokens", id="negative-tokens"),
    pytest.param(KEY, UNKNOWN_MODEL, "data.model", id="unknown-model"),
    pytest.param(KEY, _bytes(_mutated("time", "0001-01-01T00:00:00+14:00")), "time", id="time-before-utc-year-1"),
    pytest.param(b"acme/mallory", VALID.to_json(), "key", id="key-of-another-user"),
    pytest.param(None, VALID.to_json(), "key", id="no-key"),
    pytest.param(KEY, HUGE_INVALID, "data.metadata", id="900KB-invalid-event"),
]


@pytest.mark.parametrize(("key", "value", "field"), POISON)
def test_a_poison_record_becomes_a_dead_letter_and_the_batch_goes_on(key: bytes | None, value: bytes | None,
                                                                     field: str) -> None:
    worker = Worker()
    before = record(event("alice", 1, 2, "ok-1"), 0)
    poison = SourceRecord(0, 1, key, value, timestamp=T0.timestamp() + 3600)  # written an hour after the call
    after = record(event("bob", 3, 4, "ok-2"), 2)
    result = worker.run([before, poison, after])

    [letter] = result.dead_letters
    assert letter.record.key is key and letter.record.value is value  # the original bytes, untouched
    assert (letter.record.partition, letter.record.offset) == (0, 1)
    assert field in [problem.field for problem in letter.problems], letter.reason
    assert f"{field}: " in letter.reason
    assert len(letter.reason) <= MAX_REASON_CHARS
    assert result.counts["dead_lettered"] == 1 and result.counts["applied"] == 2
    assert statuses(result) == [(0, "applied"), (2, "applied")]
    assert worker.balance("alice") == credits(1, 2) and worker.balance("bob") == credits(3, 4)


def test_the_unknown_model_case_differs_from_a_valid_event_only_in_its_model() -> None:
    assert orjson.loads(UNKNOWN_MODEL) == _mutated("data.model", "no-such-model")
    assert isinstance(decode(SourceRecord(0, 0, KEY, UNKNOWN_MODEL)), UsageEvent)  # valid shape: the price book refuses it


def test_the_huge_case_is_about_900_kb() -> None:
    assert 900_000 < len(HUGE_INVALID) < 1_000_000


# --- the dedupe window -------------------------------------------------------------------------

def test_a_batch_past_the_window_is_forgotten_and_its_ids_count_again() -> None:
    worker = Worker(new_processor(window_seconds=10))
    first = worker.run([record(A, 0)], now=0.0)
    [(partition, first_key, _raw)] = first.remembered
    second = worker.run([record(B, 1)], now=20.0)
    assert second.forgotten == [(partition, first_key)]
    assert second.counts["applied"] == 1
    third = worker.run([record(A, 2)], now=21.0)  # a re-send of the forgotten id
    assert third.counts["applied"] == 1 and third.counts["duplicates"] == 0
    assert statuses(third) == [(2, "applied")]
    assert worker.balance("alice") == 2 * credits(100, 20) + credits(5, 5)
    assert worker.events("alice") == 3


@pytest.mark.parametrize(("resend_at", "status"), [
    (5.0, "duplicate"),
    (10.0, "duplicate"),  # exactly window_seconds after: still inside the window
    (10.5, "applied"),  # past the window: "a copy that arrives later is counted again"
    (20.0, "applied"),
])
def test_a_resend_is_judged_against_the_window_at_its_arrival(resend_at: float, status: str) -> None:
    """The re-send is the first record of its partition since the window passed (e.g. after a quiet hour)."""
    worker = Worker(new_processor(window_seconds=10))
    worker.run([record(A, 0)], now=0.0)
    late = worker.run([record(A, 1)], now=resend_at)
    assert statuses(late) == [(1, status)]
    assert worker.events("alice") == (2 if status == "applied" else 1)


def test_a_replayed_late_resend_gets_the_same_verdict_as_the_first_time() -> None:
    """Crash after the late re-send's batch wrote its outputs: the replay must not change its status."""
    first_run = Worker(new_processor(window_seconds=10))
    seen = first_run.run([record(A, 0)], now=0.0)
    late = first_run.run([record(A, 1)], now=20.0)
    # Everything of the late batch was persisted (states, the tombstone of the forgotten batch); the
    # offsets were not committed, so a restarted worker reads the re-send again.
    kept = [(key, raw) for _p, key, raw in seen.remembered if (0, key) not in late.forgotten]
    kept += [(key, raw) for _p, key, raw in late.remembered]
    restarted = Worker(new_processor(window_seconds=10, batches={0: kept}), dict(first_run.store))
    replay = restarted.run([record(A, 1)], now=21.0)
    assert statuses(replay) == statuses(late)
    assert restarted.events("alice") == first_run.events("alice")


# --- properties --------------------------------------------------------------------------------

VALID_BYTES = VALID.to_json()


def _corrupt(data: Any) -> bytes:
    """A valid event with a few bytes changed, inserted or cut."""
    raw = bytearray(VALID_BYTES)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["set", "insert", "cut"]))
        if action == "set" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del raw[at:at + data.draw(st.integers(1, 8))]
    return bytes(raw)


@settings(max_examples=300, deadline=None)
@given(data=st.data(),
       key=st.one_of(st.none(), st.binary(), st.just(KEY)),
       kind=st.sampled_from(["none", "bytes", "corrupted", "valid"]),
       timestamp=st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-2**40, 2**40).map(float)))
def test_decode_never_raises(data: Any, key: bytes | None, kind: str, timestamp: float | None) -> None:
    value = {"none": lambda: None, "bytes": lambda: data.draw(st.binary()), "corrupted": lambda: _corrupt(data),
             "valid": lambda: VALID_BYTES}[kind]()
    record_ = SourceRecord(0, 0, key, value, timestamp)
    outcome = decode(record_)
    assert isinstance(outcome, (UsageEvent, DeadLetter))
    hypothesis_event(f"{kind}: {type(outcome).__name__}")
    if isinstance(outcome, DeadLetter):
        assert outcome.record is record_ and outcome.problems
        assert isinstance(outcome.reason, str)
    else:
        assert key == outcome.user_key.encode()


NEAR_VALID_FIELDS = ["id", "time", "subject", "data.input_tokens", "data.output_tokens", "data.model",
                     "data.user_id", "data.cost_usd"]
ANY_VALUE = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(),
                      st.binary().map(lambda b: b.hex()))
NEAR_VALID_BASE = orjson.loads(event("alice", 10, 20, "nv-1", cost_usd=Decimal("0.0012")).to_json())


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(NEAR_VALID_FIELDS), value=ANY_VALUE)
def test_a_near_valid_event_is_either_applied_or_dead_lettered(field: str, value: Any) -> None:
    raw = _bytes(_mutated(field, value, NEAR_VALID_BASE))
    processor = new_processor()
    result = processor.process([SourceRecord(0, 0, KEY, raw)], lambda _key: UserState(), now=1000.0)
    outcomes = (len(result.rated), len(result.dead_letters))
    assert outcomes in {(1, 0), (0, 1)}, (outcomes, result.counts)
    hypothesis_event(f"{field}: {'applied' if result.rated else 'dead letter'}")
    if result.rated:
        [document] = rated(result)
        assert document["status"] == "applied" and result.counts == {"applied": 1}
        assert list(result.states) == [KEY]
    else:
        [letter] = result.dead_letters
        assert letter.record.value == raw and letter.problems
        assert result.counts == {"dead_lettered": 1} and result.states == {}


def test_an_amount_that_would_need_rounding_is_a_dead_letter_and_the_balance_is_untouched() -> None:
    # A balance no bounded stream reaches: adding 1.1 credits to it exactly needs 77 digits, one past EXACT's.
    huge = UserState(Decimal(10**75), 1, 0, 0)
    worker = Worker(store={f"{ORG}/u1".encode(): huge})
    result = worker.run([record(event("u1", 1000, 100, "r-1"), offset=1), record(event("u2", 1000, 100, "r-2"), offset=2)])
    (letter,) = result.dead_letters
    assert letter.record.offset == 1 and "exactly" in letter.reason
    assert worker.store[f"{ORG}/u1".encode()] == huge  # not rounded, not half applied
    assert worker.balance("u2") == credits(1000, 100)  # the rest of the batch is unaffected
    assert statuses(result) == [(2, "applied")]
    remembered = [entry for records in remembered_records(result).values() for _key, raw in records
                  for entry in decode_batch(raw)[1]]
    assert [seen.offset for _digest, seen in remembered] == [2]  # u2's id only: r-1 may come again


# --- accounts: where each event is counted -----------------------------------------------------

def test_an_event_older_than_the_dedupe_window_is_a_dead_letter_naming_the_rule() -> None:
    worker = Worker(new_processor(window_seconds=7 * 86_400))
    written = T0.timestamp() + 8 * 86_400  # the record reached Kafka 8 days after its event time
    old = SourceRecord(0, 0, b"acme/alice", event("alice", 100, 0, "r-old").to_json(), written)
    fresh = SourceRecord(0, 1, b"acme/alice", event("alice", 200, 0, "r-new").to_json(), T0.timestamp() + 60)
    result = worker.run([old, fresh], now=written)
    assert [letter.record.offset for letter in result.dead_letters] == [0]
    (problem,) = result.dead_letters[0].problems
    assert problem.field == "time" and "dedupe window (7 days)" in problem.rule
    assert worker.balance("alice") == credits(200, 0)


def test_rated_records_say_where_the_balance_counted_each_event() -> None:
    worker = Worker()
    january = build_event(ORG, "alice", "gpt-4o-mini", 100, 0, request_id="r-jan", source="test",
                          timestamp=datetime(2024, 2, 1, tzinfo=timezone.utc))
    result = worker.run([record(january, 0), record(event("alice", 100, 0, "r-dec"), 1)])
    assert [(r["plan"], r["cycle_start"], r["late"]) for r in rated(result)] == [
        ("free", "2024-02-01T00:00:00+00:00", False),
        ("free", "2024-01-01T00:00:00+00:00", True),  # January closed when February's event came
    ]
    state = worker.store[b"acme/alice"]
    assert state.account is not None and state.account.start == datetime(2024, 2, 1, tzinfo=timezone.utc)
    assert state.account.used == credits(100, 0) and state.credits_used == 2 * credits(100, 0)
    assert state.as_of == datetime(2024, 2, 1, tzinfo=timezone.utc).timestamp()


def grant_record(offset: int, grant_id: str = "g1", credits: str = "25", key: bytes = b"acme/alice",
                 **fields: Any) -> SourceRecord:
    value = {"type": "dev.meterline.grant.v1", "id": grant_id, "org_id": ORG, "user_id": "alice", "credits": credits,
             "reason": "support ticket 42", "time": T0.isoformat(), **fields}
    return SourceRecord(0, offset, key, orjson.dumps(value))


def granted(worker: Worker) -> list[tuple[str, Decimal]]:
    state = worker.store[b"acme/alice"]
    assert state.account is not None
    return [(g.grant_id, g.credits) for g in state.account.grants]


def test_a_grant_is_applied_once_whatever_is_re_sent_or_replayed() -> None:
    worker = Worker()
    first = worker.run([grant_record(0), record(event("alice", 100, 0, "r1"), 1)])
    assert (first.counts["grants"], first.counts["applied"]) == (1, 1)
    again = worker.run([grant_record(2, time=T0.replace(hour=5).isoformat())])  # the same grant, sent again later
    assert again.counts["duplicate_grants"] == 1 and not again.states
    other = worker.run([grant_record(3, credits="99")])  # the same id with other credits: reported, not applied
    assert other.counts["conflicting_grants"] == 1
    replay = worker.run([grant_record(0), record(event("alice", 100, 0, "r1"), 1)])  # after a crash
    assert replay.counts["replayed"] == 2 and not replay.states
    assert granted(worker) == [("g1", Decimal(25))]
    assert worker.balance("alice") == credits(100, 0)  # a grant is not usage


@pytest.mark.parametrize(("fields", "key", "field"), [
    pytest.param({"credits": "-5"}, b"acme/alice", "credits", id="negative"),
    pytest.param({"credits": "1e10"}, b"acme/alice", "credits", id="too-many"),
    pytest.param({"expires_at": "2023-12-31T00:00:00Z"}, b"acme/alice", "event", id="expires-before-granted"),
    pytest.param({"reason": ""}, b"acme/alice", "reason", id="no-reason"),
    pytest.param({}, b"acme/bob", "key", id="another-users-key"),
    pytest.param({"credits": "NaN"}, b"acme/alice", "credits", id="nan"),
    pytest.param({"credits": "Infinity"}, b"acme/alice", "credits", id="infinity"),
    pytest.param({"credits": "0.0000000000001"}, b"acme/alice", "credits", id="13-decimals"),
    pytest.param({"id": "g" * 257}, b"acme/alice", "id", id="long-id"),
    pytest.param({"time": "0001-01-01T00:00:00+14:00"}, b"acme/alice", "time", id="before-year-1-in-utc"),
    pytest.param({"time": "9999-12-31T23:59:59Z"}, b"acme/alice", "time", id="from-the-future"),
])
def test_a_bad_grant_is_a_dead_letter_naming_its_field(fields: dict[str, Any], key: bytes, field: str) -> None:
    worker = Worker()
    result = worker.run([grant_record(0, key=key, **fields), record(event("alice", 10, 0, "r1"), 1)])
    assert [letter.record.offset for letter in result.dead_letters] == [0]
    assert [problem.field for problem in result.dead_letters[0].problems] == [field]
    assert result.counts["applied"] == 1 and result.counts["grants"] == 0


# --- alerts: one record per crossing of 50 / 80 / 100 % of the allowance, and per clearing ---------

def alerts(result: BatchResult) -> list[tuple[int, str, str]]:
    return [(a["level"], a["condition"], a["state"]) for a in (orjson.loads(raw) for _p, _k, raw in result.alerts)]


def test_alerts_fire_once_per_crossing_and_clear_with_a_grant_or_a_new_cycle() -> None:
    worker = Worker()
    # Free: 50 credits a month, hard cap. gpt-4o-mini: tokens / 1000 credits.
    assert alerts(worker.run([record(event("alice", 30_000, 0, "r1"), 0)])) == [(50, "usage_50", "crossed")]
    assert alerts(worker.run([record(event("alice", 1_000, 0, "r2"), 1)])) == []  # 62 %: no new level
    assert alerts(worker.run([record(event("alice", 15_000, 0, "r3"), 2), record(event("alice", 4_000, 0, "r4"), 3)])) == [
        (80, "usage_80", "crossed"), (100, "hard_cap_reached", "crossed")]  # 50 of 50, in one batch
    assert alerts(worker.run([record(event("alice", 15_000, 0, "r3"), 2)])) == []  # a replay changes nothing
    # A top-up of 50: 50 used of 100 is 50 %, so 100 and 80 clear.
    assert alerts(worker.run([grant_record(4, credits="50")])) == [(80, "usage_80", "resolved"),
                                                                    (100, "hard_cap_reached", "resolved")]
    february = build_event(ORG, "alice", "gpt-4o-mini", 1_000, 0, request_id="r5", source="test",
                           timestamp=datetime(2024, 2, 1, tzinfo=timezone.utc))
    # The new cycle clears January's 50 %; February's 1 of 50 + the 50 granted reaches no level.
    assert alerts(worker.run([record(february, 5)])) == [(50, "usage_50", "resolved")]
    (raw,) = [raw for _p, _k, raw in worker.run([record(event("bob", 60_000, 0, "b1"), 6)]).alerts][-1:]
    bob = orjson.loads(raw)
    assert (bob["user_id"], bob["plan"], bob["used"], bob["allowance"]) == ("bob", "free", "60", "50")
    assert bob["id"] == "acme/bob/2024-01-01T00:00:00+00:00/100/crossed"


def test_an_overage_plan_says_overage_started_at_100_percent() -> None:
    processor = new_processor()
    processor.accounts.subscriptions = {"acme/alice": Subscription(  # type: ignore[assignment]
        org_id=ORG, user_id="alice", plan="pro", since=datetime(2023, 12, 1, tzinfo=timezone.utc))}
    worker = Worker(processor)
    assert alerts(worker.run([record(event("alice", 100_000, 0, "r1"), 0)])) == [
        (50, "usage_50", "crossed"), (80, "usage_80", "crossed"), (100, "overage_started", "crossed")]


def test_bytes_that_mention_the_grant_type_but_are_not_text_are_a_dead_letter() -> None:
    worker = Worker()
    value = b'\xff\xfe{"type": "dev.meterline.grant.v1", \x00'
    result = worker.run([SourceRecord(0, 0, b"acme/alice", value), record(event("alice", 10, 0, "r1"), 1)])
    assert [letter.record.value for letter in result.dead_letters] == [value]  # the original bytes, kept
    assert result.counts["applied"] == 1

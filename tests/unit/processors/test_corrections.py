"""Corrections (void, amend) in the worker's per-batch rules: exactly once, rebuilt from the log, audited.

No Kafka: the source log is a dict the processor reads earlier records from. Expected credits are
written out here (gpt-4o-mini with no action: (input + output tokens) / 1000 credits).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import event as hypothesis_event
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.pricing import Rater
from meterline.pricing.catalogue import default_catalogue
from meterline.pricing.rating import default_rater
from meterline.processors.accounts import Accounts
from meterline.processors.batch import BatchProcessor, BatchResult, SourceRecord
from meterline.processors.state import UserState
from tests.unit.processors.test_batch import (ANY_VALUE, ORG, T0, Worker, _bytes, _mutated, credits, event, new_processor,
                                              rated, record)

ALICE = b"acme/alice"


def correction(offset: int, request_id: str, action: str = "void", correction_id: str = "c1", partition: int = 0,
               key: bytes = ALICE, **amended: Any) -> SourceRecord:
    value: dict[str, Any] = {"type": "dev.meterline.correction.v1", "id": correction_id, "org_id": ORG, "user_id": "alice",
                             "request_id": request_id, "action": action, "reason": "billed twice by the app",
                             "time": T0.isoformat()}
    if amended:
        value["amended"] = amended
    return SourceRecord(partition, offset, key, orjson.dumps(value))


class LoggedWorker(Worker):
    """A worker whose source records stay readable by offset, as they do in Kafka."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.log: dict[tuple[int, int], bytes | None] = {}

    def run(self, records: list[SourceRecord], now: float = 1000.0) -> BatchResult:
        self.log.update({(r.partition, r.offset): r.value for r in records})
        result = self.processor.process(records, lambda key: self.store.get(key, UserState()), now,
                                        lambda partition, offset: self.log.get((partition, offset)))
        for key, (_partition, state) in result.states.items():
            self.store[key] = state
        return result


class RecordingWorker(LoggedWorker):
    """Keeps every remembered-ids record its batches wrote, as the changelog would."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.written: dict[int, list[tuple[bytes, bytes]]] = {}

    def run(self, records: list[SourceRecord], now: float = 1000.0) -> BatchResult:
        result = super().run(records, now)
        for partition, key, raw in result.remembered:
            self.written.setdefault(partition, []).append((key, raw))
        return result


def audit(result: BatchResult) -> list[tuple[str, int, int, str, int]]:
    """(status, revision, deleted, credits, input tokens) of each rated row."""
    return [(r["status"], r.get("revision", 0), r.get("deleted", 0), r["credits"], r["input_tokens"]) for r in rated(result)]


def test_a_void_takes_the_event_out_of_the_balance_once() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 500, "r1"), 0), record(event("alice", 200, 0, "r2"), 1)])
    result = worker.run([correction(2, "r1")])
    assert result.counts["corrections"] == 1
    assert worker.balance("alice") == credits(200, 0) and worker.events("alice") == 1
    state = worker.store[ALICE]
    assert (state.account.used, state.account.events) == (credits(200, 0), 1)
    # The audit trail: the version replaced, then the void (carrying what was voided, deleted).
    assert audit(result) == [("superseded", 0, 0, str(credits(1000, 500)), 1000), ("voided", 1, 1, str(credits(1000, 500)), 1000)]
    voided = rated(result)[1]
    assert (voided["correction_id"], voided["correction_reason"], voided["request_id"]) == ("c1", "billed twice by the app", "r1")


def test_an_amend_charges_the_difference_and_a_second_one_starts_from_the_first() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 500, "r1"), 0)])
    first = worker.run([correction(1, "r1", "amend", "c1", input_tokens=100)])
    assert worker.balance("alice") == credits(100, 500) and worker.events("alice") == 1
    assert audit(first) == [("superseded", 0, 0, str(credits(1000, 500)), 1000), ("amended", 1, 0, str(credits(100, 500)), 100)]
    second = worker.run([correction(2, "r1", "amend", "c2", output_tokens=0)])
    assert worker.balance("alice") == credits(100, 0)  # the first amendment's input tokens are kept
    assert audit(second) == [("superseded", 1, 0, str(credits(100, 500)), 100), ("amended", 2, 0, str(credits(100, 0)), 100)]
    void = worker.run([correction(3, "r1", "void", "c3")])
    assert worker.balance("alice") == 0 and worker.events("alice") == 0
    assert audit(void)[-1] == ("voided", 3, 1, str(credits(100, 0)), 100)


def test_a_correction_after_a_void_is_a_dead_letter() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0), correction(1, "r1", "void", "c1")])
    result = worker.run([correction(2, "r1", "amend", "c2", input_tokens=5), correction(3, "r1", "void", "c3")])
    assert result.counts["dead_lettered"] == 2 and not result.states
    assert all(letter.problems[0].field == "request_id" and "voided by correction 'c1'" in letter.reason
               for letter in result.dead_letters)
    assert worker.balance("alice") == 0


def test_a_re_sent_correction_is_a_duplicate_and_the_same_id_doing_otherwise_a_conflict() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0), correction(1, "r1", "amend", "c1", input_tokens=400)])
    result = worker.run([correction(2, "r1", "amend", "c1", input_tokens=400),
                         correction(3, "r1", "amend", "c1", input_tokens=1)])
    assert (result.counts["duplicate_corrections"], result.counts["conflicting_corrections"]) == (1, 1)
    assert not result.states and not result.rated
    assert worker.balance("alice") == credits(400, 0)


def test_a_correction_of_an_id_never_counted_is_a_dead_letter_naming_it() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    result = worker.run([correction(1, "nope")])
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "request_id" and "'nope'" in letter.reason and "never counted" in letter.reason
    assert worker.balance("alice") == credits(1000, 0)


def test_a_replayed_correction_changes_nothing_and_publishes_the_same_rows_again() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    batch = [correction(1, "r1", "amend", "c1", input_tokens=10)]
    first = worker.run(batch)
    again = worker.run(batch)  # the offsets were not committed before a crash: the same records again
    assert again.counts["replayed"] == 1 and not again.states
    assert worker.balance("alice") == credits(10, 0)
    strip = [{k: v for k, v in row.items() if k != "processed_at"} for row in rated(first)]
    assert [{k: v for k, v in row.items() if k != "processed_at"} for row in rated(again)] == strip


def test_the_ids_written_and_the_state_lost_applies_the_correction_once_at_the_same_revision() -> None:
    worker = RecordingWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    stored_before = dict(worker.store)
    batch = [correction(1, "r1", "amend", "c1", input_tokens=10)]
    worker.run(batch)
    # A new owner: the remembered ids of both batches reached Kafka, the correction's state did not.
    restarted = LoggedWorker(processor=new_processor(batches=worker.written), store=stored_before)
    restarted.log = dict(worker.log)
    result = restarted.run(batch)
    assert result.counts["corrections"] == 1
    assert restarted.balance("alice") == credits(10, 0)
    assert audit(result)[-1] == ("amended", 1, 0, str(credits(10, 0)), 10)


def test_the_event_and_its_correction_in_one_batch() -> None:
    worker = LoggedWorker()
    result = worker.run([record(event("alice", 1000, 0, "r1"), 0), correction(1, "r1", "amend", "c1", output_tokens=3)])
    assert (result.counts["applied"], result.counts["corrections"]) == (1, 1)
    assert worker.balance("alice") == credits(1000, 3)


def test_an_amend_that_breaks_a_rule_with_the_event_names_the_field() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1", cached_input_tokens=900), 0)])
    result = worker.run([correction(1, "r1", "amend", "c1", input_tokens=100)])  # 900 cached of 100 input
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "amended.cached_input_tokens"
    assert worker.balance("alice") == credits(1000, 0)


def test_an_amend_to_a_model_the_price_book_lacks_is_a_dead_letter() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    result = worker.run([correction(1, "r1", "amend", "c1", model="no-such-model")])
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "amended" and "no-such-model" in letter.reason
    assert worker.balance("alice") == credits(1000, 0)


def test_a_void_of_an_event_in_a_closed_cycle_is_late_and_leaves_the_live_account_alone() -> None:
    worker = LoggedWorker()
    last_month = event("alice", 1000, 0, "r1")
    this_month = event("alice", 200, 0, "r2").model_copy(update={"time": T0 + timedelta(days=40)})
    worker.run([record(last_month, 0), record(this_month, 1)])
    live = worker.store[ALICE].account
    result = worker.run([correction(2, "r1")])
    assert worker.balance("alice") == credits(200, 0)  # lifetime
    assert worker.store[ALICE].account == live
    assert all(row["late"] for row in rated(result))
    assert rated(result)[0]["cycle_start"] < live.start.isoformat()


def test_a_correction_keyed_by_another_user_is_a_dead_letter() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    result = worker.run([correction(1, "r1", key=b"acme/bob")])
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "key"
    assert worker.balance("alice") == credits(1000, 0) and Decimal(0) == worker.balance("bob")


def test_a_user_cannot_correct_another_users_event() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    value = orjson.loads(correction(1, "r1").value or b"") | {"user_id": "bob"}
    result = worker.run([SourceRecord(0, 1, b"acme/bob", orjson.dumps(value))])  # bob's key, alice's request id
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "request_id" and "acme/bob" in letter.reason
    assert worker.balance("alice") == credits(1000, 0)


def test_a_record_read_back_that_is_not_the_counted_event_is_a_dead_letter_not_a_crash() -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1"), 0)])
    worker.log[(0, 0)] = b"\xff not what was counted"  # e.g. a topic recreated under the worker
    result = worker.run([correction(1, "r1")])
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "request_id" and "could not be read back" in letter.reason
    assert worker.balance("alice") == credits(1000, 0)


NEAR_VALID_CORRECTION = orjson.loads(correction(1, "r1", "amend", "c1", input_tokens=10).value or b"")
CORRECTION_FIELDS = ["id", "request_id", "action", "reason", "time", "amended", "amended.input_tokens",
                     "amended.output_tokens", "amended.cached_input_tokens", "amended.model", "amended.cost_usd"]


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(CORRECTION_FIELDS), value=ANY_VALUE)
def test_a_near_valid_correction_is_either_applied_or_dead_lettered(field: str, value: Any) -> None:
    worker = LoggedWorker()
    worker.run([record(event("alice", 1000, 0, "r1", cached_input_tokens=5), 0)])
    raw = _bytes(_mutated(field, value, NEAR_VALID_CORRECTION))
    result = worker.run([SourceRecord(0, 1, ALICE, raw)])
    hypothesis_event(f"{field}: {'applied' if result.rated else 'dead letter'}")
    if result.rated:
        assert result.counts == {"corrections": 1} and [r["status"] for r in rated(result)][0] == "superseded"
        assert worker.balance("alice") == Decimal(rated(result)[1]["credits"])
    else:
        [letter] = result.dead_letters
        assert letter.record.value == raw and letter.problems and result.counts == {"dead_lettered": 1}
        assert worker.balance("alice") == credits(1000, 0)


def _doubled_rater() -> Rater:
    """The shipped prices with credits at 2 per 1,000 tokens (the default rules give 1): another price book."""
    catalogue = default_catalogue()
    return Rater(catalogue.prices, catalogue.credits.model_copy(update={"per_1k_tokens": Decimal(2), "models": {}}))


def _after_a_price_change(first: RecordingWorker, price_books: dict[str, Rater]) -> LoggedWorker:
    """The same partition taken over by a worker with the doubled price book, from what Kafka holds."""
    processor = BatchProcessor(_doubled_rater(), Accounts(default_catalogue(), "free", {}), "v2", 3600.0, 1_000_000,
                               price_books.get)
    for partition in range(4):
        processor.load(partition, first.written.get(partition, []))
    second = LoggedWorker(processor=processor, store=dict(first.store))
    second.log = dict(first.log)
    return second


def test_a_void_after_a_price_change_takes_back_what_was_charged_at_the_old_prices() -> None:
    first = RecordingWorker(processor=BatchProcessor(default_rater(), Accounts(default_catalogue(), "free", {}), "v1",
                                                     3600.0, 1_000_000))
    for partition in range(4):
        first.processor.load(partition, [])
    first.run([record(event("alice", 1000, 500, "r1"), 0), record(event("alice", 200, 0, "r2"), 1)])
    assert first.balance("alice") == credits(1000, 500) + credits(200, 0)
    second = _after_a_price_change(first, {"v1": default_rater()})
    result = second.run([correction(2, "r1")])
    assert second.balance("alice") == credits(200, 0)  # exactly what r1 was charged is taken back
    superseded, voided = rated(result)
    assert (superseded["price_version"], superseded["credits"]) == ("v1", str(credits(1000, 500)))
    assert (voided["price_version"], voided["credits"]) == ("v1", str(credits(1000, 500)))
    # An amend rates the new version with today's book, and takes back the old one at its own.
    amend = second.run([correction(3, "r2", "amend", "c2", output_tokens=100)])
    assert second.balance("alice") == 2 * credits(200, 100)
    assert [(row["status"], row["price_version"]) for row in rated(amend)] == [("superseded", "v1"), ("amended", "v2")]
    # And a further correction of r2 takes back the amended version at the book that rated it: v2.
    second.run([correction(4, "r2", "void", "c3")])
    assert second.balance("alice") == 0


def test_a_correction_of_an_event_rated_by_a_price_book_this_worker_cannot_read_is_a_dead_letter() -> None:
    first = RecordingWorker(processor=BatchProcessor(default_rater(), Accounts(default_catalogue(), "free", {}), "v1",
                                                     3600.0, 1_000_000))
    for partition in range(4):
        first.processor.load(partition, [])
    first.run([record(event("alice", 1000, 0, "r1"), 0)])
    second = _after_a_price_change(first, {})  # v1 was never published
    result = second.run([correction(1, "r1")])
    (letter,) = result.dead_letters
    assert letter.problems[0].field == "request_id" and "price book v1" in letter.reason
    assert second.balance("alice") == credits(1000, 0)

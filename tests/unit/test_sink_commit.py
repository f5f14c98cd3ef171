"""The sink keeps running when Kafka cannot take an offset commit (our seams faked, no broker)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from meterline.producers import build_event
from meterline.processors.accounts import Placement
from meterline.schemas.decision import decision_record
from meterline.schemas.rated import RATED_FIELDS, Status, rated_record, rated_row
from meterline.settings import Settings
from meterline.sinks.clickhouse_sink import ClickHouseSink

RATED_TOPIC = "meterline.rated.v1"


class _Warehouse:
    """Takes what ClickHouse would parse, as rows (the typed path's shape), so both paths read alike here."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Any], str]] = []

    def insert_rated_json(self, table: str, records: list[bytes], dedupe_token: str) -> None:
        self.batches.append((table, [rated_row(record) for record in records], dedupe_token))

    def insert_rated(self, table: str, rows: list[Any], dedupe_token: str, columns: Any = None) -> None:
        self.batches.append((table, rows, dedupe_token))


class _RefusesJson(_Warehouse):
    """A warehouse that cannot parse some record of the batch: the sink converts the rows itself."""

    def insert_rated_json(self, table: str, records: list[bytes], dedupe_token: str) -> None:
        raise ValueError("Code: 27. DB::Exception: Cannot parse input")


class _CoordinatorAway:
    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []

    def commit(self, offsets: list[Any], **_kwargs: Any) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        raise KafkaException(KafkaError(KafkaError._WAIT_COORD))


class _Message:
    """What the sink reads of a confluent_kafka.Message."""

    def __init__(self, partition: int, offset: int, value: bytes, topic: str = RATED_TOPIC) -> None:
        self._partition, self._offset, self._value, self._topic = partition, offset, value, topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return self._topic

    def error(self) -> None:
        return None


def _rated(request_id: str, status: Status, offset: int) -> bytes:
    event = build_event("acme", "alice", "gpt-4o-mini", 100, 20, request_id=request_id, source="test",
                        timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc))
    return rated_record(event, provider_cost_usd=Decimal("0.001"), credits=Decimal("0.12"), credit_rule="tokens",
                        price_version="test", status=status, partition=0, offset=offset, processed_at=1.0,
                        placement=Placement("free", datetime(2024, 1, 1, tzinfo=timezone.utc), False))


def _request_ids(rows: list[Any]) -> list[str]:
    return [row[RATED_FIELDS.index("request_id")] for row in rows]


def test_a_failed_commit_after_a_stored_batch_does_not_stop_the_sink(tmp_path: Any) -> None:
    warehouse = _Warehouse()
    sink = ClickHouseSink(Settings(home=tmp_path), warehouse)  # type: ignore[arg-type]
    consumer = _CoordinatorAway()
    sink._consumer = consumer  # type: ignore[assignment]
    sink.add(_Message(0, 5, _rated("r1", "applied", offset=17)))  # type: ignore[arg-type]
    sink.flush()  # must not raise: the rows are stored, the batch is read again later
    assert consumer.commits == [[(RATED_TOPIC, 0, 6)]]
    assert [(table, _request_ids(rows), token) for table, rows, token in warehouse.batches] == [
        ("rated_events", ["r1"], f"{RATED_TOPIC}:0:5-5")
    ]
    assert not sink.batch.next_offset and sink.rows_written == 1
    sink.flush()  # the buffer was cleared: nothing is written twice
    assert len(warehouse.batches) == 1


def test_copies_go_to_the_duplicates_table_with_the_partitions_offset_range(tmp_path: Any) -> None:
    warehouse = _Warehouse()
    sink = ClickHouseSink(Settings(home=tmp_path), warehouse)  # type: ignore[arg-type]
    sink._consumer = _CoordinatorAway()  # type: ignore[assignment]
    for offset, (request_id, status) in enumerate([("r1", "applied"), ("r1", "duplicate"), ("r2", "applied"),
                                                   ("r2", "conflict")], start=10):
        sink.add(_Message(3, offset, _rated(request_id, status, offset)))  # type: ignore[arg-type]
    sink.flush()
    stored = sorted((table, _request_ids(rows), token) for table, rows, token in warehouse.batches)
    assert stored == [
        ("rated_events", ["r1", "r2"], f"{RATED_TOPIC}:3:10-13"),
        ("usage_duplicates", ["r1", "r2"], f"{RATED_TOPIC}:3:10-13"),
    ]
    assert sink.rows_written == 4


def test_unreadable_rated_records_are_skipped_and_their_offsets_still_committed(tmp_path: Any) -> None:
    warehouse = _Warehouse()
    sink = ClickHouseSink(Settings(home=tmp_path), warehouse)  # type: ignore[arg-type]
    consumer = _CoordinatorAway()
    sink._consumer = consumer  # type: ignore[assignment]
    odd = [b"not json", None, b'{"status":"unheard-of","request_id":"x"}', b'{"status":"applied', b"\xff\xfe"]
    sink.add_many([_Message(0, 3 + n, value) for n, value in enumerate(odd)])  # type: ignore[arg-type, misc]
    sink.add(_Message(0, 8, _rated("r1", "applied", 8)))  # type: ignore[arg-type]
    assert sink.unreadable_skipped == len(odd)
    sink.flush()
    assert [(table, _request_ids(rows), token) for table, rows, token in warehouse.batches] == [
        ("rated_events", ["r1"], f"{RATED_TOPIC}:0:3-8")
    ]
    assert consumer.commits == [[(RATED_TOPIC, 0, 9)]]  # past the skipped records too


def test_a_batch_clickhouse_cannot_parse_is_stored_without_the_record_that_cannot_be_read(tmp_path: Any) -> None:
    warehouse = _RefusesJson()
    sink = ClickHouseSink(Settings(home=tmp_path), warehouse)  # type: ignore[arg-type]
    consumer = _CoordinatorAway()
    sink._consumer = consumer  # type: ignore[assignment]
    sink.add(_Message(0, 7, _rated("r1", "applied", 7)))  # type: ignore[arg-type]
    # Valid JSON with a status, so it is buffered; its time is not a time.
    sink.add(_Message(0, 8, _rated("r2", "applied", 8).replace(b'"event_time":"2024', b'"event_time":"x024')))  # type: ignore[arg-type]
    sink.add(_Message(0, 9, _rated("r3", "applied", 9)))  # type: ignore[arg-type]
    sink.flush()
    assert [(table, _request_ids(rows), token) for table, rows, token in warehouse.batches] == [
        ("rated_events", ["r1", "r3"], f"{RATED_TOPIC}:0:7-9")
    ]
    assert (sink.unreadable_skipped, sink.rows_written) == (1, 2)
    assert consumer.commits == [[(RATED_TOPIC, 0, 10)]]


class _Unreachable:
    def insert_rated_json(self, table: str, records: list[bytes], dedupe_token: str) -> None:
        raise ConnectionError("ClickHouse unreachable")

    def insert_rated(self, table: str, rows: list[Any], dedupe_token: str, columns: Any = None) -> None:
        raise ConnectionError("ClickHouse unreachable")


def test_a_revoke_while_clickhouse_is_down_hands_the_partitions_over_within_the_bound(monkeypatch: Any) -> None:
    import threading
    import time

    from meterline.sinks import clickhouse_sink

    monkeypatch.setattr(clickhouse_sink, "REVOKE_SECONDS", 1.0)
    sink = ClickHouseSink(Settings(rated_topic=RATED_TOPIC), _Unreachable())  # type: ignore[arg-type]
    sink.add(_Message(0, 5, _rated("r-1", "applied", 5)))
    began = time.monotonic()
    sink._on_revoke(None, [])  # type: ignore[arg-type]  # the consumer is not used: nothing is committed
    assert 0.9 <= time.monotonic() - began < 3.0
    assert not sink.batch.next_offset and not len(sink.batch)  # handed over uncommitted: the next owner reads them
    sink.add(_Message(0, 6, _rated("r-2", "applied", 6)))
    sink._stop = threading.Event()
    sink._stop.set()  # stopping: the revoke that closing the consumer causes does not wait at all
    began = time.monotonic()
    sink._on_revoke(None, [])  # type: ignore[arg-type]
    assert time.monotonic() - began < 0.5


class _Gated(_Warehouse):
    """Holds the first insert until `release` is set, as a slow ClickHouse would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def insert_rated_json(self, table: str, records: list[bytes], dedupe_token: str) -> None:
        assert self.release.wait(10), "the test never released the insert"
        super().insert_rated_json(table, records, dedupe_token)


class _Topic:
    """A consumer handing out queued messages and recording commits."""

    def __init__(self) -> None:
        self.queued: list[_Message] = []
        self.commits: list[list[tuple[str, int, int]]] = []

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken

    def commit(self, offsets: list[Any], **_kwargs: Any) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        pass

    def assignment(self) -> list[Any]:
        return []  # lag() counts what is buffered only

    def position(self, partitions: list[Any]) -> list[Any]:
        return partitions


def test_the_next_batch_is_read_while_one_is_written_and_each_is_committed_after_its_insert_in_order(tmp_path: Any) -> None:
    warehouse = _Gated()
    sink = ClickHouseSink(Settings(home=tmp_path, rated_topic=RATED_TOPIC, sink_batch_size=2), warehouse)  # type: ignore[arg-type]
    topic = _Topic()
    sink._consumer = topic  # type: ignore[assignment]
    topic.queued = [_Message(0, offset, _rated(f"r{offset}", "applied", offset)) for offset in (0, 1)]
    sink.poll_once()  # a full batch: handed to the writer, which is held
    topic.queued = [_Message(0, 2, _rated("r2", "applied", 2))]
    sink.poll_once()  # read meanwhile ...
    assert len(sink.batch) == 1 and topic.commits == []  # ... and nothing committed before its insert
    warehouse.release.set()
    deadline = time.monotonic() + 10
    while not topic.commits and time.monotonic() < deadline:
        sink.poll_once()  # the finished insert is committed by the reading thread
    assert topic.commits == [[(RATED_TOPIC, 0, 2)]]
    assert sink.flush()
    assert topic.commits == [[(RATED_TOPIC, 0, 2)], [(RATED_TOPIC, 0, 3)]]
    assert [(_request_ids(rows), token) for _table, rows, token in warehouse.batches] == [
        (["r0", "r1"], f"{RATED_TOPIC}:0:0-1"), (["r2"], f"{RATED_TOPIC}:0:2-2")]
    assert sink.rows_written == 3
    sink.close()


def test_a_failed_insert_in_the_writer_is_retried_and_committed_once_and_the_retry_says_the_lag(
        tmp_path: Any, caplog: Any) -> None:
    class DownForOneWrite(_Warehouse):
        down = True

        def insert_rated_json(self, table: str, records: list[bytes], dedupe_token: str) -> None:
            if self.down:
                raise ConnectionError("ClickHouse unreachable")
            super().insert_rated_json(table, records, dedupe_token)

        def insert_rated(self, table: str, rows: list[Any], dedupe_token: str, columns: Any = None) -> None:
            if self.down:  # the typed path the sink falls back to is down as well, this once
                self.down = False
                raise ConnectionError("ClickHouse unreachable")
            super().insert_rated(table, rows, dedupe_token)

    warehouse = DownForOneWrite()
    sink = ClickHouseSink(Settings(home=tmp_path, rated_topic=RATED_TOPIC, sink_batch_size=1), warehouse)  # type: ignore[arg-type]
    topic = _Topic()
    sink._consumer = topic  # type: ignore[assignment]
    topic.queued = [_Message(0, 4, _rated("r4", "applied", 4))]
    sink.poll_once()
    deadline = time.monotonic() + 10
    while not topic.commits and time.monotonic() < deadline:
        sink.poll_once()
    assert topic.commits == [[(RATED_TOPIC, 0, 5)]] and sink.rows_written == 1
    assert [token for _t, _rows, token in warehouse.batches] == [f"{RATED_TOPIC}:0:4-4"]
    assert any("(1 records behind)" in record.getMessage() for record in caplog.records)  # the batch held
    sink.close()


def test_decisions_go_to_their_table_an_unreadable_one_is_skipped_and_each_topic_is_committed(tmp_path: Any) -> None:
    warehouse = _RefusesJson()  # the typed path: each decision record converted by the sink
    settings = Settings(home=tmp_path)
    sink = ClickHouseSink(settings, warehouse)  # type: ignore[arg-type]
    consumer = _CoordinatorAway()
    sink._consumer = consumer  # type: ignore[assignment]
    decision = decision_record("acme", "alice", "call-1", "refused", "rate", "gpt-4o", "gpt-4o", "free", Decimal(1), None, 1.0)
    sink.add(_Message(2, 40, decision, settings.decisions_topic))  # type: ignore[arg-type]
    sink.add(_Message(2, 41, b"\xff not a decision", settings.decisions_topic))  # type: ignore[arg-type]
    sink.add(_Message(0, 7, _rated("r1", "applied", 7)))  # type: ignore[arg-type]
    sink.flush()
    token = f"{settings.decisions_topic}:2:40-41,{RATED_TOPIC}:0:7-7"
    assert sorted((table, len(rows), batch_token) for table, rows, batch_token in warehouse.batches) == [
        ("rated_events", 1, token), ("usage_decisions", 1, token)]
    assert (sink.unreadable_skipped, sink.rows_written) == (1, 2)
    assert sorted(consumer.commits[0]) == sorted([(settings.decisions_topic, 2, 42), (RATED_TOPIC, 0, 8)])

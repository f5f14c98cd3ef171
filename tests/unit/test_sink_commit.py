"""The sink keeps running when Kafka cannot take an offset commit (our seams faked, no broker)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from meterline.settings import Settings
from meterline.sinks.clickhouse_sink import ClickHouseSink


class _Warehouse:
    def __init__(self) -> None:
        self.batches: list[tuple[list[Any], str]] = []

    def insert_events(self, rows: list[Any], dedupe_token: str) -> None:
        self.batches.append((rows, dedupe_token))


class _CoordinatorAway:
    def commit(self, **_kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._WAIT_COORD))


def test_a_failed_commit_after_a_stored_batch_does_not_stop_the_sink(tmp_path: Any) -> None:
    warehouse = _Warehouse()
    sink = ClickHouseSink(Settings(home=tmp_path), warehouse)  # type: ignore[arg-type]
    sink._consumer = _CoordinatorAway()  # type: ignore[assignment]
    sink._rows[0].append(("row",))
    sink._first_offset[0], sink._next_offset[0] = 5, 6
    sink.flush()  # must not raise: the rows are stored, the batch is read again later
    assert warehouse.batches == [([("row",)], "meterline.usage.v1:0:5-5")]
    assert not sink._rows and not sink._next_offset and sink.rows_written == 1

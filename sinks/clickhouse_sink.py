"""Consume the rated topic and store every record in ClickHouse: buffer, write, then commit.

The worker is the one rating authority: the sink stores its rated records as they are (applied
ones in `rated_events`, re-sent copies in `usage_duplicates`), so ClickHouse holds exactly what
the balances counted. Guarantees, step by step:
- `add()` only buffers; nothing is acknowledged yet.
- `write()` inserts one batch per table with a deduplication token made of each
  partition's offset range, so a retried batch is dropped by ClickHouse (one insert per
  table, not per partition: with 8 partitions, per-partition inserts of a 5,000-record
  batch were 8 small inserts, and the sink stored ~33,000 rows/s against ~46,000 for a bare insert).
  ClickHouse parses the records itself (JSONEachRow: the rated record's fields are the
  columns); a batch it refuses is converted here instead, record by record, and a record that
  cannot be converted is skipped and counted - never a batch retried forever.
- offsets are committed only after the insert succeeded: a crash before the
  commit re-delivers the batch, and the token (or, if the batch boundaries moved,
  ReplacingMergeTree on the request id) keeps it from counting twice.
- while ClickHouse is unreachable the batch is kept and retried with backoff;
  nothing more is consumed, so nothing is lost and memory stays bounded.
- a stop, or a rebalance that takes partitions away, waits for ClickHouse at most
  REVOKE_SECONDS: then the buffer is dropped uncommitted, and whoever reads those
  partitions next (this sink after a restart, or another member) stores it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from meterline.schemas.rated import rated_row
from meterline.settings import Settings
from meterline.sinks.queries import TABLE_FOR_STATUS
from meterline.sinks.warehouse import Warehouse

log = logging.getLogger(__name__)
# A slow or unreachable ClickHouse must not hold a rebalance or a stop for long (quix's rule):
# partitions are handed over uncommitted instead.
REVOKE_SECONDS = 10.0


class ClickHouseSink:
    """Kafka rated topic -> ClickHouse `rated_events` and `usage_duplicates`.

    Args:
        settings: broker, topic, consumer group, batch size and interval.
        warehouse: the ClickHouse connection (this process owns it).
    """

    def __init__(self, settings: Settings, warehouse: Warehouse):
        self.settings = settings
        self.warehouse = warehouse
        self._records: dict[str, list[bytes]] = defaultdict(list)  # table -> rated records
        self._first_offset: dict[int, int] = {}
        self._next_offset: dict[int, int] = {}
        self._batch_started = time.monotonic()
        self._consumer: Consumer | None = None
        self._stop: threading.Event | None = None  # run()'s, so a revoke during a stop ends at once
        self.rows_written = 0
        self.unreadable_skipped = 0
        self.batches_written = 0
        self._reported = (time.monotonic(), 0, 0)  # when, rows_written, batches_written

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "group.id": self.settings.sink_group,
                    "enable.auto.commit": False,  # we commit after the rows are stored
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                }
            )
            self._consumer.subscribe([self.settings.rated_topic], on_revoke=self._on_revoke)
        return self._consumer

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Store what we hold before another member takes the partitions over, if ClickHouse lets us
        # within REVOKE_SECONDS; else hand them over uncommitted (nothing is lost, nothing counted twice).
        if not self.flush(self._stop, deadline=time.monotonic() + REVOKE_SECONDS):
            log.warning("ClickHouse unreachable: %d buffered row(s) handed over uncommitted; they are read again",
                        self._buffered())
            self._clear_buffer()

    def add(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        self._first_offset.setdefault(partition, offset)
        self._next_offset[partition] = offset + 1
        value = message.value()
        try:
            table = TABLE_FOR_STATUS[orjson.loads(value)["status"]]  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - the worker wrote it; still, no record may stop the sink
            log.warning("unreadable rated record at %s[%d]@%d, skipped", message.topic(), partition, offset)
            self.unreadable_skipped += 1
            return
        self._records[table].append(value)  # type: ignore[arg-type]

    def _buffered(self) -> int:
        return sum(len(records) for records in self._records.values())

    def _due(self) -> bool:
        age = time.monotonic() - self._batch_started
        return self._buffered() >= self.settings.sink_batch_size or (bool(self._next_offset) and age >= self.settings.sink_batch_seconds)

    def write(self) -> int:
        """Insert the buffer; return the rows stored (a record that could not be converted is not one)."""
        ranges = ",".join(f"{partition}:{self._first_offset[partition]}-{self._next_offset[partition] - 1}"
                          for partition in sorted(self._next_offset))
        token = f"{self.settings.rated_topic}:{ranges}"
        return sum(self._insert(table, records, token) for table, records in self._records.items() if records)

    def _insert(self, table: str, records: list[bytes], token: str) -> int:
        try:
            self.warehouse.insert_rated_json(table, records, dedupe_token=token)
            return len(records)
        except Exception as error:  # noqa: BLE001 - refused, or unreachable: the typed path tells them apart
            refusal = error
        rows, unreadable = [], 0
        for raw in records:
            try:
                rows.append(rated_row(raw))
            except Exception:  # noqa: BLE001 - the worker wrote it; still, no record may stop the sink
                unreadable += 1
        if rows:
            self.warehouse.insert_rated(table, rows, dedupe_token=token)  # raises while ClickHouse is unreachable
        if unreadable:  # counted once the batch is stored, not at every retry
            log.warning("%d unreadable rated record(s) in %s skipped (ClickHouse: %s)", unreadable, token, refusal)
            self.unreadable_skipped += unreadable
        return len(rows)

    def flush(self, stop: threading.Event | None = None, deadline: float | None = None) -> bool:
        """Write the buffer (retrying while ClickHouse is down), then commit its offsets.

        Returns False if it gave up first (`stop` set, or past `deadline`): the buffer is kept and
        nothing is committed, so the batch is read again by whoever reads these partitions next.
        """
        if not self._next_offset:
            return True
        delay = 0.5
        while True:
            try:
                stored = self.write()
                break
            except Exception as error:  # noqa: BLE001 - any warehouse failure: keep the batch, retry
                wait = delay if deadline is None else min(delay, deadline - time.monotonic())
                log.warning("ClickHouse write failed, retrying in %.1fs: %s", max(wait, 0), error)
                if wait <= 0 or (stop or threading.Event()).wait(wait):
                    return False  # stopping or out of time: offsets stay uncommitted
                delay = min(delay * 2, 10.0)
        self.rows_written += stored  # once, however many retries
        self.batches_written += 1
        offsets = [TopicPartition(self.settings.rated_topic, p, o) for p, o in self._next_offset.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            # The rows are stored; only the commit is lost (the group is rebalancing, or its
            # coordinator is away after a broker restart). Whoever reads these partitions next
            # starts from the last commit and stores the batch again: harmless, inserts carry
            # dedupe tokens and the table keeps one row per request id. Dying here is not.
            log.warning("offset commit failed; the stored batch will be read again: %s", error)
        self._clear_buffer()
        return True

    def _clear_buffer(self) -> None:
        self._records.clear()
        self._first_offset.clear()
        self._next_offset.clear()
        self._batch_started = time.monotonic()

    def poll_once(self, timeout: float = 0.2, stop: threading.Event | None = None) -> int:
        messages = self.consumer.consume(num_messages=self.settings.sink_batch_size, timeout=timeout)
        for message in messages:
            error = message.error()
            if error is None:
                self.add(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", error)
        if self._due():
            self.flush(stop)
        return len(messages)

    def lag(self) -> int | None:
        """Records of the rated topic not yet stored, over this sink's partitions (from the last fetch)."""
        if self._consumer is None:
            return None
        behind = 0
        for position in self._consumer.position(self._consumer.assignment()):
            _low, high = self._consumer.get_watermark_offsets(position, cached=True)
            if position.offset >= 0 and high >= 0:
                behind += max(high - position.offset, 0)
        return behind + self._buffered()

    def report(self, now: float) -> None:
        """Every `sink_report_seconds`, one line: what was stored since the last one, and the lag."""
        when, rows, batches = self._reported
        if now - when < self.settings.sink_report_seconds:
            return
        log.info("stored %d rows in %d batches in the last %.0f s (%d in all); %s records behind",
                 self.rows_written - rows, self.batches_written - batches, now - when, self.rows_written,
                 self.lag())
        self._reported = (now, self.rows_written, self.batches_written)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then write what is buffered and close."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.poll_once(stop=stop)
                self.report(time.monotonic())
            self.flush(stop)
        finally:
            self.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

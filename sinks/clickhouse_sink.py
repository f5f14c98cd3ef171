"""Consume usage events and store every one in ClickHouse: buffer, write, then commit.

Guarantees, step by step:
- `add()` only buffers; nothing is acknowledged yet.
- `write()` inserts one batch per partition with a deduplication token made of
  the partition and offset range, so a retried batch is dropped by ClickHouse.
- offsets are committed only after the insert succeeded: a crash before the
  commit re-delivers the batch, and the token (or, if the batch boundaries moved,
  ReplacingMergeTree on the request id) keeps it from counting twice.
- while ClickHouse is unreachable the batch is kept and retried with backoff;
  nothing more is consumed, so nothing is lost and memory stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from meterline.pricing import PricingError, Rater, Rating
from meterline.schemas import InvalidEventError, UsageEvent, parse_event, record_time
from meterline.settings import Settings
from meterline.sinks.warehouse import Warehouse

log = logging.getLogger(__name__)
MAX_OFFSET = 2**64 - 1


def event_row(event: UsageEvent, rating: Rating, partition: int, offset: int) -> list[Any]:
    data = event.data
    return [
        data.org_id, data.user_id, event.id, event.time, data.model, data.action or "",
        data.input_tokens, data.output_tokens, data.cached_input_tokens, data.latency_ms,
        rating.provider_cost_usd, rating.credits, event.source, dict(data.metadata),
        # A lower offset is a higher version: ReplacingMergeTree keeps the first copy seen.
        partition, offset, MAX_OFFSET - offset,
    ]


class ClickHouseSink:
    """Kafka usage topic -> ClickHouse `usage_events`.

    Args:
        settings: broker, topic, consumer group, batch size and interval.
        warehouse: the ClickHouse connection (this process owns it).
    """

    def __init__(self, settings: Settings, warehouse: Warehouse):
        self.settings = settings
        self.warehouse = warehouse
        self.rater = Rater.from_files(settings.prices, settings.plans)  # the same rules as the worker
        self._rows: dict[int, list[list[Any]]] = defaultdict(list)
        self._first_offset: dict[int, int] = {}
        self._next_offset: dict[int, int] = {}
        self._batch_started = time.monotonic()
        self._consumer: Consumer | None = None
        self.rows_written = 0
        self.invalid_skipped = 0

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
            self._consumer.subscribe([self.settings.usage_topic], on_revoke=self._on_revoke)
        return self._consumer

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Store what we hold before another member takes the partitions over.
        self.flush()

    def add(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        self._first_offset.setdefault(partition, offset)
        self._next_offset[partition] = offset + 1
        try:
            # Judged against the record's Kafka time, exactly as the worker judges it.
            event = parse_event(message.value(), now=record_time(message.timestamp()[1] / 1000))
            rating = self.rater.rate(event)
        except (InvalidEventError, PricingError):
            self.invalid_skipped += 1  # the processor dead-letters it with the reason
            return
        self._rows[partition].append(event_row(event, rating, partition, offset))

    def _due(self) -> bool:
        buffered = sum(len(rows) for rows in self._rows.values())
        age = time.monotonic() - self._batch_started
        return buffered >= self.settings.sink_batch_size or (bool(self._next_offset) and age >= self.settings.sink_batch_seconds)

    def write(self) -> None:
        topic = self.settings.usage_topic
        for partition, rows in self._rows.items():
            if rows:
                token = f"{topic}:{partition}:{self._first_offset[partition]}-{self._next_offset[partition] - 1}"
                self.warehouse.insert_events(rows, dedupe_token=token)

    def flush(self, stop: threading.Event | None = None) -> None:
        """Write the buffer (retrying while ClickHouse is down), then commit its offsets."""
        if not self._next_offset:
            return
        delay = 0.5
        while True:
            try:
                self.write()
                break
            except Exception as error:  # noqa: BLE001 - any warehouse failure: keep the batch, retry
                log.warning("ClickHouse write failed, retrying in %.1fs: %s", delay, error)
                if (stop or threading.Event()).wait(delay):
                    return  # stopping: offsets stay uncommitted, the batch is re-read next time
                delay = min(delay * 2, 10.0)
        self.rows_written += sum(len(rows) for rows in self._rows.values())  # once, however many retries
        offsets = [TopicPartition(self.settings.usage_topic, p, o) for p, o in self._next_offset.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            # The rows are stored; only the commit is lost (the group is rebalancing, or its
            # coordinator is away after a broker restart). Whoever reads these partitions next
            # starts from the last commit and stores the batch again: harmless, inserts carry
            # dedupe tokens and the table keeps one row per request id. Dying here is not.
            log.warning("offset commit failed; the stored batch will be read again: %s", error)
        self._rows.clear()
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

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then write what is buffered and close."""
        try:
            while not stop.is_set():
                self.poll_once(stop=stop)
            self.flush(stop)
        finally:
            self.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

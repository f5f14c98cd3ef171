"""What a batch writes to Kafka, with one confluent-kafka producer, and the wait for its acknowledgement.

Faust's own producer costs ~150 us a record on this machine (its producer buffer sends one by one);
librdkafka's costs ~2 us, so a batch's state, ids and rated records go through it. Faust still
consumes, recovers tables from these changelogs, rebalances and serves the API.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from confluent_kafka import KafkaError, Message, Producer

from meterline.exceptions import MeterlineError
from meterline.processors.batch import DeadLetter
from meterline.stack.broker import DEAD_LETTER_MAX_BYTES



POLL_SECONDS = 0.0005  # between two looks for a hold's acknowledgement (local acks take ~1 ms)
# A hold's producer (besides bootstrap.servers): acks=all without reordering or duplicates, and no
# lingering, as a caller is waiting. The reserve benchmark times a bare write with it too.
HOLD_PRODUCER_CONFIG = {"enable.idempotence": True, "linger.ms": 0}


class OutboxError(MeterlineError):
    """Kafka did not acknowledge a batch's records: the batch is not acknowledged either."""


class Outbox:
    """Produce, then `await flush()`: returns only once Kafka acknowledged every record."""

    def __init__(self, bootstrap: str, source_topic: str):
        self.bootstrap = bootstrap
        self.source_topic = source_topic
        self._producer: Producer | None = None
        self._failures: list[str] = []

    @property
    def producer(self) -> Producer:
        if self._producer is None:  # created on first use, inside the running worker
            self._producer = Producer({
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,  # acks=all, and retries never reorder or duplicate
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": DEAD_LETTER_MAX_BYTES,  # the largest record it writes
                "delivery.report.only.error": True,
                # A record given no partition goes where Faust routes its key (a pool's usage, by org).
                "partitioner": "murmur2_random",
                "on_delivery": self._on_delivery,
            })
        return self._producer

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}[{message.partition()}]: {error}")

    def put(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value, key, headers=headers)
                else:
                    self.producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.05)

    def put_many(self, topic: str, records: list[tuple[int, bytes, bytes]]) -> None:
        """`put` for each (partition, key, value): the rated records, one per event, take this path."""
        produce = self.producer.produce
        for partition, key, value in records:
            try:
                produce(topic, value, key, partition)
            except BufferError:
                self.put(topic, partition, key, value)  # waits for room, then produces

    def dead_letter(self, topic: str, letter: DeadLetter) -> None:
        """The original key and value bytes, as received; the reason travels in headers."""
        record = letter.record
        self.put(topic, None, record.key, record.value, headers=[
            ("meterline.reason", letter.reason.encode()),
            ("meterline.problems", orjson.dumps([{"field": p.field, "rule": p.rule[:500]} for p in letter.problems])),
            ("meterline.source", f"{self.source_topic}/{record.partition}/{record.offset}".encode()),
        ])

    async def flush(self, timeout: float = 60.0) -> None:
        """Wait until Kafka acknowledged everything put so far; raise OutboxError if it did not.

        Polls from the event loop rather than calling `Producer.flush()` in a thread: flush makes
        librdkafka send at once, in many small requests; measured here, that cost the worker a
        third of its throughput. An empty queue means every record was acknowledged (with
        `delivery.report.only.error`, only failures leave a report, and polling serves those).
        """
        producer = self._producer
        deadline = time.monotonic() + timeout
        while producer is not None and len(producer) and time.monotonic() < deadline:
            producer.poll(0)
            await asyncio.sleep(0.002)
        remaining = len(producer) if producer is not None else 0
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise OutboxError(f"{remaining} record(s) unacknowledged after {timeout}s; failed: {failures[:5]}")


class ConfirmedWriter:
    """A producer whose every record has its own acknowledgement, for the reservation holds.

    A reserve() answer waits for its own hold only, not for the batch records queued before it
    (the outbox reports failures only, to save a callback per rated record). Every holds record
    goes through this one producer: Kafka keeps one producer's records to a partition in order,
    so the changelog's last value of a user is the last one written. Its delivery reports are
    served from the event loop while records are pending: a thread would have to win the GIL
    from the busy loop first (up to the 5 ms switch interval, measured as a p50 of ~8 ms under load).
    """

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self._producer: Producer | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._poller: asyncio.Future[None] | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, **HOLD_PRODUCER_CONFIG})
        return self._producer

    def put(self, topic: str, partition: int, key: bytes, value: bytes | None) -> asyncio.Future[None]:
        """Produce; the future completes once Kafka acknowledged the record (OutboxError if it did not)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

        def delivered(error: KafkaError | None, message: Message) -> None:  # run by poll(), in the loop
            _settle(future, None if error is None else f"{message.topic()}[{message.partition()}]: {error}")

        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
                break
            except BufferError:  # full: serve deliveries to make room
                self.producer.poll(0.01)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._serve_deliveries())
        return future

    async def _serve_deliveries(self) -> None:
        while self._pending:
            self.producer.poll(0)
            await asyncio.sleep(POLL_SECONDS)

    async def flush(self) -> None:
        """Wait for every record put so far."""
        if self._pending:
            await asyncio.gather(*list(self._pending))


def _settle(future: asyncio.Future[None], failure: str | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(OutboxError(f"Kafka did not acknowledge a hold: {failure}"))

"""Delivery counters (`meter.stats()`) and the per-event report given to `on_delivery`."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaError

Status = Literal["delivered", "failed", "spooled", "replayed", "lost"]


@dataclass(frozen=True)
class MeterStats:
    """A snapshot of what happened to the events of one meter.

    For this meter's own events, at any time:
    ``sent == delivered + spooled + lost + in_flight`` (an event is counted in exactly one
    of them; `replayed` counts spooled events that later reached Kafka).

    Attributes:
        sent: events accepted by `emit`/`send`/`record_*`.
        delivered: acknowledged by Kafka on the first attempt.
        failed: delivery attempts librdkafka reported as failed (each then went to the spool).
        spooled: events written to the outage spool (broker down, queue full, or a failed delivery).
        replayed: spooled events acknowledged by Kafka later, including ones left by an earlier process.
        lost: events neither delivered nor spooled. Always 0 unless the spool is disabled or full;
            `flush()` and `close()` raise `DeliveryError` with their payloads.
        in_flight: events in the producer's memory, waiting for Kafka's answer.
        spool_pending: events in the spool, not yet acknowledged by Kafka.
    """

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    spooled: int = 0
    replayed: int = 0
    lost: int = 0
    in_flight: int = 0
    spool_pending: int = 0


@dataclass(frozen=True)
class DeliveryReport:
    """What happened to one event; passed to the `on_delivery` callback (on the SDK's thread).

    `status` is "delivered" (first attempt), "failed" (the attempt failed; a "spooled" or "lost"
    report follows), "spooled", "replayed" (a spooled event reached Kafka), or "lost".
    """

    request_id: str
    status: Status
    error: KafkaError | None = None
    partition: int | None = None
    offset: int | None = None


class Counters:
    """Thread-safe counters: delivery callbacks run on the SDK's poll thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # for counts that several threads write; `delivered` has one writer
        # emit's hot path counts an event with `count_sent()`, without the lock (~0.2 us an event):
        # next() on an itertools.count is a single C call, so atomic under the GIL. Reading it
        # counts one more, so reads are subtracted. `sent` holds the corrections (under the lock).
        self._sent_fast = itertools.count()
        self._sent_reads = 0
        self.count_sent = self._sent_fast.__next__
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.spooled = 0
        self.replayed = 0
        self.lost = 0

    def add(self, *, sent: int = 0, failed: int = 0, spooled: int = 0, replayed: int = 0, lost: int = 0) -> None:
        with self.lock:
            self.sent += sent
            self.failed += failed
            self.spooled += spooled
            self.replayed += replayed
            self.lost += lost

    def snapshot(self, spool_pending: int) -> MeterStats:
        with self.lock:
            sent = self.sent + next(self._sent_fast) - self._sent_reads
            self._sent_reads += 1
            in_flight = sent - self.delivered - self.spooled - self.lost
            return MeterStats(sent, self.delivered, self.failed, self.spooled, self.replayed,
                              self.lost, in_flight, spool_pending)

"""Delivery reports: what the poll thread does with each event's outcome.

A success is counted (and reported to `on_delivery`); a failure is queued, and the engine moves
it to the spool in one append (one fsync) after the poll that reported it. If the spool cannot
take it (disabled or full) the event is counted lost and kept, with its reason, for `flush()`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import orjson
from confluent_kafka import KafkaError, Message

from meterline.producers.stats import Counters, DeliveryReport, Status

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[DeliveryReport], None]
Done = Callable[[Status, "KafkaError | None"], None]  # final outcome of one event, for AsyncMeter


class Deliveries:
    """Each event's outcome as the poll thread learns it; owned by `Engine`, which spools the failures.

    Only the poll thread runs librdkafka's callbacks, so `delivered` has one writer and no lock.
    """

    def __init__(self, counters: Counters, on_delivery: DeliveryCallback | None):
        self.counters = counters
        self.on_delivery = on_delivery
        self.failed: deque[tuple[bytes, bytes, KafkaError, Done | None]] = deque()  # for the spool, in order
        self.lost: list[tuple[KafkaError, bytes]] = []  # neither delivered nor spooled: `flush()` raises

    def delivered(self, error: KafkaError | None, message: Message, done: Done | None = None) -> None:
        """librdkafka's delivery callback."""
        if error is None:
            self.counters.delivered += 1
            if self.on_delivery is not None:
                self.report(message.value(), "delivered", None, message)
            if done is not None:
                done("delivered", None)
        else:
            self.failed.append((message.key() or b"", message.value() or b"", error, done))

    def take_failed(self) -> list[tuple[bytes, bytes, KafkaError, Done | None]]:
        """The failures so far, oldest first, each reported "failed" (its final outcome follows)."""
        failed = []
        while self.failed:
            failed.append(self.failed.popleft())
        self.counters.add(failed=len(failed))
        for _key, value, error, _done in failed:
            self.report(value, "failed", error)
        return failed

    def settle(self, failed: list[tuple[bytes, bytes, KafkaError, Done | None]], status: Status) -> None:
        """The final outcome of failed events: "spooled", or "lost" (kept for `flush()` to raise)."""
        if status == "lost":
            self.lost.extend((error, value) for _k, value, error, _d in failed)
            self.counters.add(lost=len(failed))
        else:
            self.counters.add(spooled=len(failed))
        for _key, value, error, done in failed:
            self.report(value, status, error)
            if done is not None:
                done(status, error)

    def report(self, value: bytes, status: Status, error: KafkaError | None, message: Message | None = None) -> None:
        if self.on_delivery is None:
            return
        try:
            request_id = str(orjson.loads(value)["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            request_id = ""
        report = DeliveryReport(request_id, status, error, message.partition() if message else None,
                                message.offset() if message else None)
        try:
            self.on_delivery(report)
        except Exception:  # a broken callback must not stop deliveries
            log.exception("meterline: on_delivery callback failed")

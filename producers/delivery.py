"""Delivery reports: what the poll thread does with each event's outcome.

A success is counted (and reported to `on_delivery`); a failure is queued and then moved to the
spool in one append (one fsync) after the poll that reported it. If the spool cannot take it
(disabled or full) the event is counted lost and kept, with its reason, for `flush()` to raise.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import orjson
from confluent_kafka import KafkaError, Message

from meterline.producers.exceptions import SpoolError
from meterline.producers.spool import Spool
from meterline.producers.stats import Counters, DeliveryReport, Status
from meterline.settings import SdkSettings

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[DeliveryReport], None]
Done = Callable[[Status, "KafkaError | None"], None]  # final outcome of one event, for AsyncMeter


class DeliveryReports:
    """The delivery-report half of `Engine` (which sets these attributes)."""

    settings: SdkSettings
    counters: Counters
    spool: Spool | None
    _lock: threading.Lock
    _on_delivery: DeliveryCallback | None
    _failed: deque[tuple[bytes, bytes, KafkaError, Done | None]]
    _lost: list[tuple[KafkaError, bytes]]
    _fatal: KafkaError | None

    def enter_spooling(self, reason: str) -> None:
        raise NotImplementedError

    def _set_spooling(self, value: bool) -> None:
        raise NotImplementedError

    def _delivered(self, error: KafkaError | None, message: Message, done: Done | None = None) -> None:
        if error is None:
            self.counters.delivered += 1  # only the poll thread runs callbacks: one writer, no lock
            if self._on_delivery is not None:
                self._report(message.value(), "delivered", None, message)
            if done is not None:
                done("delivered", None)
        else:
            self._failed.append((message.key() or b"", message.value() or b"", error, done))

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.enter_spooling(str(error))
        elif error.fatal():
            self._fatal = error
        else:
            log.debug("meterline: producer error %s", error)

    def _spool_failed(self) -> None:
        """Move failed deliveries to the spool, in one append (one fsync)."""
        failed = []
        while self._failed:
            failed.append(self._failed.popleft())
        if not failed:
            return
        self.counters.add(failed=len(failed))
        for _key, value, error, _done in failed:
            self._report(value, "failed", error)
        status: Status = "spooled"
        try:
            if self.spool is None:
                raise SpoolError("the spool is disabled", self.settings.spool_path)
            with self._lock:
                self.spool.append([(key, value) for key, value, _e, _d in failed])
                self._set_spooling(True)
            self.counters.add(spooled=len(failed))
        except (SpoolError, ValueError) as spool_error:
            log.error("meterline: %d event(s) neither delivered nor spooled: %s", len(failed), spool_error)
            status = "lost"
            self._lost.extend((error, value) for _k, value, error, _d in failed)
            self.counters.add(lost=len(failed))
        for _key, value, error, done in failed:
            self._report(value, status, error)
            if done is not None:
                done(status, error)

    def report_replayed(self, value: bytes) -> None:
        if self._on_delivery is not None:
            self._report(value, "replayed", None)

    def _report(self, value: bytes, status: Status, error: KafkaError | None, message: Message | None = None) -> None:
        if self._on_delivery is None:
            return
        try:
            request_id = str(orjson.loads(value)["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            request_id = ""
        report = DeliveryReport(request_id, status, error, message.partition() if message else None,
                                message.offset() if message else None)
        try:
            self._on_delivery(report)
        except Exception:  # a broken callback must not stop deliveries
            log.exception("meterline: on_delivery callback failed")

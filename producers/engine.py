"""The delivery machinery behind Meter and AsyncMeter: producer, spool, one poll thread.

Every encoded event ends in exactly one of: acknowledged by Kafka, written to the spool, or
reported lost (only possible with the spool disabled or full - `flush()` then raises).

- Normal mode: `submit` hands the event to librdkafka (idempotent, acks=all). A failed delivery
  (broker gone past `delivery_timeout_ms`, purge at close, ...) goes to the spool.
- Spool mode (entered on a failed delivery, when librdkafka reports all brokers down, on a queue
  that stays full, or when the spool holds events at start): new events go straight to the spool,
  so they are durable and keep their order behind the ones waiting there. The poll thread probes
  Kafka and replays the spool in order, batch by batch; a batch's offset is committed only after
  Kafka acknowledged all of it. When the spool is empty, normal mode resumes.

A replayed event Kafka already had (a batch that half succeeded, an "in flight" purge, a crash
before the commit) is written twice. That is harmless only because the processors dedupe on
request id; producer idempotence does not cover it. Only the poll thread calls `poll()`, so
delivery callbacks never run concurrently.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from meterline.producers.delivery import Deliveries, DeliveryCallback, Done
from meterline.producers.exceptions import DeliveryError, MeterClosedError, ProducerError, SpoolError
from meterline.producers.replay import replay_spool
from meterline.producers.spool import Spool
from meterline.producers.stats import Counters, MeterStats
from meterline.settings import SdkSettings

log = logging.getLogger(__name__)

QUEUE_FULL_WAIT = 1.0  # seconds a full local queue may block emit before events go to the spool
LIBRDKAFKA_MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's default `message.max.bytes`


def producer_config(settings: SdkSettings, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SDK's librdkafka settings; `overrides` win."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,  # off by default in librdkafka
        "acks": "all",
        "linger.ms": 10,  # up to 10 ms of batching: fewer, larger requests
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        # Java-compatible key hashing, so Faust (aiokafka) finds the same partition for a user.
        "partitioner": "murmur2_random",
        # After this long without an ack an event is reported failed and moves to the spool.
        "message.timeout.ms": settings.delivery_timeout_ms,
        **(overrides or {}),
    }


class Engine:
    """Owns the producer, the spool, the poll thread and the delivery reports of one meter (thread-safe).

    Its parts: `deliveries` (each event's outcome, `delivery.py`), `spool` (`spool.py`), the
    replay of the spool (`replay.py`, run on the poll thread), and the producer itself.
    """

    def __init__(self, settings: SdkSettings, *, config: dict[str, Any] | None = None,
                 on_delivery: DeliveryCallback | None = None, spool: bool = True):
        self.settings = settings
        self.topic = settings.usage_topic
        # The delivery callback is the producer's default rather than a `produce` argument: keyword
        # arguments cost confluent-kafka ~0.4 us a call to parse, a tenth of emit's whole cost.
        self.counters = Counters()
        self.deliveries = Deliveries(self.counters, on_delivery)
        self._config = {**producer_config(settings, config), "error_cb": self._on_error,
                        "on_delivery": self.deliveries.delivered}
        self._producer: Producer | None = None
        # What Kafka would refuse as too large must not enter the spool either: it could never leave.
        self._max_record_bytes = int(self._config.get("message.max.bytes", LIBRDKAFKA_MAX_MESSAGE_BYTES))
        self._lock = threading.Lock()
        # While True, events still in the producer's queue are being moved to the spool, and new
        # events wait for them, so the spool keeps emission order across the start of an outage.
        self._handing_over = False
        self._handed_over = threading.Condition(self._lock)
        self.spool = (Spool(settings.spool_path, settings.spool_max_bytes, settings.spool_fsync,
                            settings.spool_fsync_interval) if spool else None)
        self._spooling = bool(self.spool and self.spool.pending)
        self._fast: Callable[..., None] | None = None  # producer.produce while plain producing is allowed
        self._count_sent = self.counters.count_sent
        self._fatal: KafkaError | None = None  # set by a fatal producer error: the poll thread renews the producer
        self._closed = False
        self._closed_reason = "this meter is closed"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exit_hook = _close_at_exit(self)
        atexit.register(self._exit_hook)
        _ENGINES.add(self)
        if self._spooling:
            self._start()

    @property
    def spooling(self) -> bool:
        """True while new events go to the spool (Kafka unreachable, or spooled events wait)."""
        return self._spooling

    def _set_spooling(self, value: bool) -> None:
        self._spooling = value
        self._refresh()

    def _refresh(self) -> None:
        # The hot path in `submit` checks one attribute: the produce method, or None when
        # events must take the careful path (spooling, closed, not started, producer renewed).
        producer = self._producer
        ready = producer is not None and not self._spooling and not self._closed and self._thread is not None
        self._fast = producer.produce if ready and producer is not None else None

    @property
    def producer(self) -> Producer:
        producer = self._producer
        if producer is None:
            with self._lock:  # created lazily, so building a meter never touches the network
                if self._closed:
                    raise MeterClosedError(self._closed_reason)
                if self._producer is None:
                    self._producer = Producer(self._config)
                producer = self._producer
            self._refresh()
        return producer

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meterline-poll", daemon=True)
                self._thread.start()
        self.producer  # noqa: B018 - create it now, so the hot path is ready
        self._refresh()

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, key: bytes, value: bytes, *, block: bool = True, done: Done | None = None) -> bool:
        """Hand one encoded event to Kafka or the spool.

        Returns False only with ``block=False`` when the local queue is full (nothing was done).
        Raises SpoolFullError when the event had to be spooled and the spool is full.
        """
        fast = self._fast
        if fast is not None and done is None:
            self._count_sent()  # before produce: its delivery report must not find it uncounted
            try:
                fast(self.topic, value, key)
                return True
            except (BufferError, KafkaException):
                self.counters.add(sent=-1)
        return self._submit(key, value, block, done)

    def _submit(self, key: bytes, value: bytes, block: bool, done: Done | None) -> bool:
        if self._closed:
            raise MeterClosedError(self._closed_reason)
        if self._thread is None:
            self._start()
        if self.spooling and self._spool_new(key, value, done):
            return True
        delivered = self.deliveries.delivered
        callback = delivered if done is None else (lambda e, m: delivered(e, m, done))
        deadline = 0.0
        while True:
            producer = self.producer
            try:
                with self._lock:  # close() takes the producer away under this lock
                    if self._closed:  # close() ran while this call waited for room: not accepted
                        raise MeterClosedError(self._closed_reason)
                    self.counters.add(sent=1)
                    producer.produce(self.topic, value, key, on_delivery=callback)
                return True
            except BufferError:  # the local queue is full: the poll thread drains it
                self.counters.add(sent=-1)
                if not block:
                    return False
                deadline = deadline or time.monotonic() + QUEUE_FULL_WAIT
                # Without a spool the caller waits for room: blocking is the only safe choice.
                if self.spool is not None and (time.monotonic() > deadline or self.spooling):
                    self.enter_spooling("the local producer queue stayed full")
                    if self._spool_new(key, value, done):
                        return True
                time.sleep(0.005)
            except KafkaException as error:
                self.counters.add(sent=-1)
                if not error.args[0].fatal():  # about this event, not the producer: the caller must hear it
                    raise ProducerError(f"Kafka refused the event: {error}") from error
                self._fatal = error.args[0]  # the poll thread renews the producer
                if self.spool is None:
                    raise ProducerError(f"the producer failed and there is no spool to keep the event: {error}") from error
                self.enter_spooling(f"the producer failed: {error}")
                if self._spool_new(key, value, done):
                    return True

    def _spool_new(self, key: bytes, value: bytes, done: Done | None) -> bool:
        """Append a new event to the spool if in spool mode; False if normal mode resumed."""
        assert self.spool is not None
        if len(key) + len(value) > self._max_record_bytes:  # as librdkafka's produce() would say at once
            raise ProducerError(f"Kafka refused the event: {len(key) + len(value):,} bytes is more than "
                                f"message.max.bytes ({self._max_record_bytes:,})")
        with self._lock:
            while self._handing_over and not self._stop.is_set():
                self._handed_over.wait(0.1)
            if not self._spooling:
                return False
            self.spool.append([(key, value)])  # SpoolFullError reaches the caller: not accepted
            self.counters.add(sent=1, spooled=1)
        self.deliveries.report(value, "spooled", None)
        if done is not None:
            done("spooled", None)
        return True

    def enter_spooling(self, reason: str) -> None:
        if self.spool is not None and not self.spooling:
            log.warning("meterline: Kafka unavailable (%s); spooling events to %s", reason, self.spool.directory)
            with self._lock:
                self._handing_over = self._thread is not None  # the poll thread moves the queue (`_hand_over`)
                self._set_spooling(True)

    def _hand_over(self) -> None:
        """Move the events still in the producer to the spool, ahead of any newer event."""
        producer = self._producer
        if producer is not None:
            # All of them, and all their reports (`_purge` spools them), before a newer event may be
            # spooled. One that was in flight may already be in Kafka: its replay is a duplicate the
            # processors drop. Without a producer there is nothing left: `serve` spooled the failures.
            self._purge(producer)
        with self._lock:
            self._handing_over = False
            self._handed_over.notify_all()

    # -- the poll thread -----------------------------------------------------------------------

    def serve(self, timeout: float) -> None:
        """Serve delivery reports for up to `timeout` seconds (poll thread only)."""
        self.producer.poll(timeout)
        if self.deliveries.failed:
            self._spool_failed()

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (poll thread)."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.enter_spooling(str(error))
        elif error.fatal():
            self._fatal = error
        else:
            log.debug("meterline: producer error %s", error)

    def _spool_failed(self) -> None:
        """Move failed deliveries to the spool, in one append (one fsync)."""
        failed = self.deliveries.take_failed()
        if not failed:
            return
        try:
            if self.spool is None:
                raise SpoolError("the spool is disabled", self.settings.spool_path)
            with self._lock:
                self.spool.append([(key, value) for key, value, _e, _d in failed])
                self._set_spooling(True)
        except (SpoolError, ValueError) as spool_error:
            log.error("meterline: %d event(s) neither delivered nor spooled: %s", len(failed), spool_error)
            self.deliveries.settle(failed, "lost")
        else:
            self.deliveries.settle(failed, "spooled")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception:  # keep serving deliveries whatever happens; say what it was
                log.exception("meterline: poll thread error; continuing")
                time.sleep(0.5)

    def _loop(self) -> None:
        backoff, next_replay, next_adopt = 0.5, 0.0, time.monotonic() + 10
        while not self._stop.is_set():
            self.serve(0.05)
            if self._handing_over:
                self._hand_over()
            if self._fatal is not None:
                self._renew_producer()
            if self.spool is None:
                continue
            self.spool.sync_if_due()
            now = time.monotonic()
            if self.spooling and now >= next_replay:
                if replay_spool(self):
                    backoff = 0.5
                else:
                    next_replay, backoff = now + backoff, min(backoff * 2, 5.0)
            if now >= next_adopt:
                next_adopt = now + 10
                if self.spool.adopt():
                    self.enter_spooling("found events left by an earlier process")

    def resume_if_drained(self) -> bool:
        """Leave spool mode if the spool is empty (under the lock new events are spooled with)."""
        assert self.spool is not None
        with self._lock:
            if self.spool.pending == 0:
                self._set_spooling(False)
        return not self._spooling

    def _renew_producer(self) -> None:
        log.error("meterline: fatal producer error %s; spooling its queue and starting a new producer", self._fatal)
        old, self._producer, self._fatal = self._producer, None, None
        self._refresh()
        if old is not None:
            self._purge(old)

    def _purge(self, producer: Producer) -> None:
        # Purged events fail with _PURGE_QUEUE/_PURGE_INFLIGHT and go to the spool. An "in flight"
        # one may already be in Kafka: its replay is a duplicate the processors drop.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            producer.purge(in_queue=True, in_flight=True)
            while len(producer) and time.monotonic() < deadline:
                producer.poll(0.05)
            # An emit that read the producer just before it was taken away may still land in it.
            time.sleep(0.02)
            if not len(producer):
                break
        self._spool_failed()

    # -- flush and close -----------------------------------------------------------------------

    def stats(self) -> MeterStats:
        return self.counters.snapshot(self.spool.pending if self.spool else 0)

    def flush(self, timeout: float = 30.0) -> MeterStats:
        """Wait up to `timeout` s until every event is in Kafka; what cannot get there stays spooled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._thread is not None and self._thread.is_alive():
            stats = self.stats()
            if stats.in_flight == 0 and not self.deliveries.failed and stats.spool_pending == 0:
                break
            time.sleep(0.01)
        if self.spool is not None:
            self.spool.sync()
        if self.deliveries.lost:
            lost, self.deliveries.lost = self.deliveries.lost, []
            raise DeliveryError([error for error, _v in lost], [value for _e, value in lost])
        return self.stats()

    def close(self, timeout: float = 30.0) -> MeterStats:
        """Flush, then spool whatever Kafka has not acknowledged, and release the spool."""
        if self._closed:
            return self.stats()
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._refresh()
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            with self._lock:  # no slow-path produce() is under way past this point
                producer, self._producer = self._producer, None
            if producer is not None:
                self._purge(producer)
                del producer  # release librdkafka's connections now, not at garbage collection
            if self.spool is not None:
                self.spool.close()
            atexit.unregister(self._exit_hook)
        return self.flush(0)


def _refuse_in_forked_child() -> None:
    # A child process inherits a meter's producer without librdkafka's threads, and its spool
    # segments and locks without their owner: emitting there would hang or write over the
    # parent's spool. The parent keeps everything; in the child the meter refuses to emit.
    for engine in list(_ENGINES):
        engine._lock = threading.Lock()
        engine._handing_over, engine._handed_over = False, threading.Condition(engine._lock)
        engine.counters.lock = threading.Lock()
        engine._closed, engine._fast, engine._thread, engine.spool = True, None, None, None
        engine._closed_reason = ("this meter was created before os.fork(); create a new Meter in the child "
                                 "(gunicorn: post_fork; uWSGI: lazy-apps)")
        _INHERITED.append(engine._producer)  # never destroyed here: its threads live in the parent
        engine._producer = None
        atexit.unregister(engine._exit_hook)


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_INHERITED: list[Producer | None] = []
os.register_at_fork(after_in_child=_refuse_in_forked_child)


def _close_at_exit(engine: Engine) -> Callable[[], None]:
    # Events still in memory at interpreter exit go to the spool rather than vanish. A weak
    # reference, so the hook does not keep a forgotten meter alive.
    reference = weakref.ref(engine)

    def close() -> None:
        alive = reference()
        if alive is not None and not alive._closed:
            alive.close(timeout=5.0)

    return close

"""The Faust app, built from Settings: topics, the two state tables, the usage agent, the HTTP views.

Nothing happens at import: `create_app(settings)` builds it and `worker.run_worker` runs it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from decimal import localcontext
from pathlib import Path
from typing import Any, cast

import faust
from faust.tables import TableManager
from faust.types import AppT, ChannelT, EventT, StreamT

from meterline.auth import resolve_secret
from meterline.pricing import Rater
from meterline.pricing.money import EXACT
from meterline.processors import tables
from meterline.processors.accounts import Accounts, alert_record
from meterline.processors.backfill import RecordReader, read_range
from meterline.processors.batch import BatchProcessor, BatchResult, SourceRecord
from meterline.processors.enforcement import Enforcer
from meterline.processors.outbox import Outbox
from meterline.processors.pools import PoolState, apply_pool_usage, pool_key, read_pool_usage
from meterline.processors.state import UserState, WrittenStates
from meterline.processors.views import register_views
from meterline.processors.watchdog import EXIT_CRASHED, exit_now, watch_recovery
from meterline.price_books import PriceBookFeed, price_book_record, publish
from meterline.revocations import RevocationFeed
from meterline.settings import Settings, private_dir
from meterline.subscriptions import SubscriptionFeed, load_checked_catalogue

log = logging.getLogger(__name__)

USER_STATE_TABLE = "user-state"
REMEMBERED_IDS_TABLE = "remembered-ids"
HOLDS_TABLE = "holds"  # each user's open reservations and rate buckets (processors/holds.py)
TABLES = (USER_STATE_TABLE, REMEMBERED_IDS_TABLE, HOLDS_TABLE)


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"  # Faust's own naming


def faust_data_dir(settings: Settings) -> Path:
    """Faust's data directory. With the memory store Faust only makes empty folders in it, so every
    worker of a home shares one (a folder per port left hundreds behind: benchmarks pick free ports)."""
    return settings.home / "faust"


# Events applied in one synchronous step while reservations are being decided: ~50 us each here,
# so a reserve() waits ~2 ms for a step in progress instead of a whole batch (~100 ms for 2,000).
RESERVING_STEP = 32

# Faust builds its aiokafka consumer with fetch_max_wait_ms=1500, and no setting changes it.
# Measured here (`python -m meterline.benchmarks pipeline`, freshness at 5,000 events/s): balances
# showed up a steady ~1.6 s late (p50 1,580 ms); with 100 ms, p50 ~90 ms.
FETCH_MAX_WAIT_MS = 100


def prepare_process(program: str, loglevel: str) -> list[str]:
    """Set up this process for a Faust worker; return the command line `app.main()` reads.

    uvloop: Faust's per-event path is mostly asyncio machinery (tasks, waits, queues). Faust reads
    its own `--loop` option at `import faust`, too early for us: the policy is set here.
    """
    import mode.loop
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    mode.loop.use("uvloop")
    keep_full_collections_rare()
    create_consumer = AIOKafkaConsumerThread._create_worker_consumer
    if not getattr(create_consumer, "shortened_fetch_wait", False):
        def create_with_short_fetch_wait(thread: Any, transport: Any) -> Any:
            consumer = create_consumer(thread, transport)
            consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
            return consumer

        create_with_short_fetch_wait.shortened_fetch_wait = True  # type: ignore[attr-defined]
        AIOKafkaConsumerThread._create_worker_consumer = create_with_short_fetch_wait  # type: ignore[method-assign]
    if not sys.stdout.isatty():
        # Faust's start-up spinner writes cursor codes even when its output is a log file.
        from faust.worker import Worker

        def without_spinner(worker: Any, _level: int) -> None:
            worker.spinner = None  # every use of it is guarded by `if self.spinner`

        Worker._disable_spinner_if_level_below_WARN = without_spinner  # type: ignore[method-assign]
    return [program, "worker", "--loglevel", loglevel]


# Young collections as often as Python's default; a full one only after 10,000 of the second
# generation (Python's default: 10).
GC_THRESHOLDS = (700, 10, 10_000)


def keep_full_collections_rare() -> None:
    """Spare the worker Python's full garbage collections, which walk the whole heap.

    Measured here (pipeline benchmark's topic, one worker, 100,000 events): 9 full collections of
    ~75 ms each, 0.6-0.7 s of a ~10 s run, and a pause every balance read or reserve() waiting
    meanwhile pays. What is imported by now (Faust, pydantic, ...) lives as long as the process:
    frozen, no collection walks it again (frozen alone, the 9 took ~42 ms each). With full collections rare
    too: none in that run, 0.05-0.1 s of young collections in all. Cyclic garbage still goes, later.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class PromptlyStoppingWorker(faust.Worker):
    """Faust's worker, without the last 2 s of every stop.

    Once `stop()` returned, everything that matters is done: the producer flushed, the offsets
    committed, the consumer closed. mode's loop shutdown then waits up to 1 s for the tasks still
    pending, and sleeps 1 s more before it closes the loop, whatever is left. Here what is left is
    cancelled and awaited, as `asyncio.run` does, and the loop closed: a stop takes ~0.2 s instead
    of ~2.2 (every deploy, restart and test pays it)."""

    def _shutdown_loop(self) -> None:
        self.log.info("Gathering service tasks...")
        with suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self._gather_futures())
        pending = asyncio.all_tasks(self.loop)
        self.log.info("Cancelling %d tasks left...", len(pending))
        for task in pending:
            task.cancel()
        if pending:  # bounded: a task that ignores its cancel does not hold the stop
            self.loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.log.info("Closing event loop")
        self.loop.close()


class TablesDeclaredFirst(TableManager):
    """Faust's table manager, without the 1 s it sleeps before it starts recovery: that leaves time
    for tables declared while the app starts, and `create_app` declares every table before (1 s of
    every start, so of the wait of a restarted worker's users)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def create_faust_app(settings: Settings, app_id: str | None = None) -> faust.App:
    """The Faust app with the worker's settings (the benchmark's do-nothing agent uses it too)."""
    private_dir(settings.home)  # Faust makes its data directory inside, not the home itself
    return faust.App(
        app_id or settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # Tables live in memory and are rebuilt from their compacted changelog topics on start.
        store="memory://",
        topic_partitions=settings.partitions,
        # A standby consumes every other worker's changelogs: CPU this 2-core machine needs for its
        # own partitions. A killed worker's partitions are recovered from Kafka instead.
        table_standby_replicas=0,
        web_host=settings.worker_host,
        web_bind=settings.worker_host,  # Faust binds 0.0.0.0 unless told: keep the API where it was asked to be
        web_port=settings.worker_port,
        web_in_thread=False,
        stream_buffer_maxsize=65536,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # A worker that dies keeps its partitions (and its users' balances) unserved until the
        # session times out: 15 s by default instead of Faust's 60 s, still far above a GC pause.
        broker_session_timeout=settings.worker_session_timeout_seconds,
        # Static membership: a worker restarted within the session timeout takes its partitions
        # back without a rebalance of the others. Its machine and port name it (one worker a port).
        consumer_group_instance_id=f"{settings.app_id}@{socket.gethostname()}:{settings.worker_port}",
        broker_heartbeat_interval=settings.worker_session_timeout_seconds / 5,
        datadir=str(faust_data_dir(settings)),
        Worker=PromptlyStoppingWorker,
        TableManager=TablesDeclaredFirst,
    )


class Engine:
    """Takes batches from the usage stream, applies them, writes the result, then acknowledges."""

    def __init__(self, settings: Settings, states: faust.Table, remembered: faust.Table, holds: faust.Table):
        self.settings = settings
        self.states = states
        self.remembered = remembered
        catalogue = load_checked_catalogue(settings)  # a bad price book or plan stops the worker at start
        self.subscriptions = SubscriptionFeed(settings, catalogue)
        self.revocations = RevocationFeed(settings)
        self.price_books = PriceBookFeed(settings)  # a correction rates what it takes back with the book that charged it
        # The files read once: the version every rated record names is the one this worker publishes.
        self.price_version, self._price_book = price_book_record(settings)
        self.accounts = Accounts(catalogue, settings.default_plan, self.subscriptions.latest)
        self.processor = BatchProcessor(
            Rater.from_catalogue(catalogue), self.accounts, self.price_version,
            settings.dedupe_window_seconds, settings.dedupe_max_ids_per_partition, self.price_books.latest.get,
        )
        self.feeds_read = False
        self.outbox = Outbox(settings.kafka_bootstrap, settings.usage_topic)
        self.source = RecordReader(settings.kafka_bootstrap, settings.usage_topic)  # a correction reads what it corrects
        self.counters: Counter[str] = Counter()
        self.enforcer = Enforcer(settings, holds, states, self.accounts, self.processor.rater, self.outbox, self.counters)
        self.processor.holders = self.enforcer.holders
        self._pending: list[EventT] = []
        self._applying = asyncio.Lock()
        self._pending_since = 0.0
        self._stream: StreamT | None = None
        self._unconfirmed: list[tuple[list[EventT], Counter[str]]] = []
        # Each partition's next source offset, kept in the user-state table under a key no user
        # key can be ("/position/<p>": user keys are "org/user", both parts non-empty).
        self.positions: dict[int, int | None] = {}
        self._confirming: asyncio.Future[None] | None = None
        # Balance streams waiting for a user's next change (views.BalanceStreamView): one queue each.
        self._watchers: dict[bytes, set[asyncio.Queue[None]]] = {}
        self._drainer: asyncio.Future[None] | None = None
        self._pools_unconfirmed: list[EventT] = []
        self._pools_confirming: asyncio.Future[None] | None = None
        self._written = WrittenStates()  # a batch reads the users it touches back without decoding them

    def state_of(self, user_key: bytes) -> UserState:
        return self._written.read(user_key, self.states.data.data.get(user_key))

    async def consume(self, stream: StreamT) -> None:
        """The agent: gather events into batches; `_flush_when_due` sends a batch that waited long enough.

        Events are acknowledged only after Kafka acknowledged what their batch wrote. (Faust's
        `noack_take` was tried first: after a rebalance it stopped yielding events for good.)
        """
        self._stream = stream
        if not self.feeds_read:
            await self._read_subscriptions()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._flush_when_due())
        try:
            await self._take_events(stream)
        except Exception:
            self._crashed()
            raise

    async def _take_events(self, stream: StreamT) -> None:
        """Take every event the stream's channel holds at once, instead of one an event-loop turn.

        Faust's stream iterator gives the event loop a turn before each event (`await sleep(0)`):
        taking them in bulk raised one worker's rate ~9 % (`python -m meterline.benchmarks
        pipeline`). Each event gets the checks that iterator makes (`current_events`).
        """
        queue, batch_size = cast(ChannelT, stream.channel).queue, self.settings.worker_batch_size
        while True:
            events = [await queue.get()]
            while len(self._pending) + len(events) < batch_size and not queue.empty():
                events.append(queue.get_nowait())
            current, stale = current_events(events, stream.app)
            for event in stale:
                await stream.ack(event)
            if current and not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(current)
            if len(self._pending) >= batch_size:
                await self.flush(stream)
            await asyncio.sleep(0)  # one turn a chunk: the web server and the drainer go on

    async def consume_pool_usage(self, stream: StreamT) -> None:
        """The pools agent: apply each org's pool usage to its pool's record (processors/pools.py).

        Each record is applied as it comes (no await in between, like a usage batch) and acknowledged
        once Kafka has what it wrote; confirming runs beside, so a slow acknowledgement never holds the
        stream (a stream that stops taking events stops Faust's delivery to every agent).
        """
        while not self.feeds_read:  # the usage agent reads the subscriptions: a pool's plan comes from them
            await asyncio.sleep(0.05)
        try:
            unacked = stream.noack()
            async for _value in unacked:
                event = unacked.current_event
                if event is None:
                    continue
                self._apply_pool_usage(event.message.partition, event.message.value)
                self._pools_unconfirmed.append(event)
                if self._pools_confirming is None or self._pools_confirming.done():
                    self._pools_confirming = asyncio.ensure_future(self._confirm_pool_usage(stream))
                if len(self._pools_unconfirmed) > self.settings.worker_batch_size:
                    await asyncio.shield(self._pools_confirming)  # back-pressure: Kafka sets the pace
        except Exception:
            self._crashed()
            raise

    async def _confirm_pool_usage(self, stream: StreamT) -> None:
        try:
            while self._pools_unconfirmed:
                events, self._pools_unconfirmed = self._pools_unconfirmed, []
                await self.outbox.flush()  # everything produced so far, these records' writes included
                await self.enforcer.writer.flush()
                for event in events:
                    await stream.ack(event)
        except Exception:
            self._crashed()
            raise

    def _apply_pool_usage(self, partition: int, raw: bytes | None) -> None:
        try:
            org_id, source_partition, entries = read_pool_usage(raw or b"")
        except (ValueError, KeyError, TypeError):  # not written by a worker: skipped and counted, never fatal
            self.counters["pool_usage_unreadable"] += 1
            return
        key = pool_key(org_id)
        state = PoolState.from_bytes(self.states.data.data.get(key))
        try:
            with localcontext(EXACT):
                after, alerts = apply_pool_usage(self.accounts, org_id, source_partition, entries, state)
        except ArithmeticError:  # the bounds on events make it unreachable; never rounded, never a stop
            log.error("org %s: pool usage from partition %d cannot be added exactly, skipped", org_id, source_partition)
            self.counters["pool_usage_unreadable"] += 1
            return
        if after != state:
            self._persist(self.states, partition, key, after.to_bytes())
        now, org_bytes = time.time(), org_id.encode()
        if org_bytes in self.enforcer.holders:  # the org's reservations these events commit
            self.enforcer.commit([(partition, org_bytes, e.request_id, e.credits) for e in entries
                                  if e.request_id and e.events == 1], now)
        self.outbox.put_many(self.settings.alerts_topic, [(partition, org_bytes, alert_record(org_id, None, alert, now))
                                                          for alert in alerts])
        self.counters["pool_usage"] += 1

    async def _read_subscriptions(self) -> None:
        """Before the first batch (and the first balance served): every subscription, key
        revocation and price book published so far (this worker's own published first); then
        follow the topics, each in a thread."""
        try:
            await asyncio.to_thread(publish, self.settings, self.price_version, self._price_book)
        except Exception as error:  # noqa: BLE001 - e.g. a price book past the broker's record size
            log.error("this worker's price book could not be published (%s): a correction of an event it rates "
                      "will be refused, naming its version, by a worker with another price book", error)
        try:
            for feed in (self.subscriptions, self.revocations, self.price_books):
                await asyncio.to_thread(feed.read_to_end, 60.0)
        except Exception:
            # Counting usage under the wrong plans, or letting a revoked key in, would be worse than stopping.
            self._crashed()
            raise
        self.feeds_read = True
        for name, feed in (("subscriptions", self.subscriptions), ("revocations", self.revocations),
                           ("price books", self.price_books)):
            threading.Thread(target=feed.follow, name=name, daemon=True).start()

    async def _flush_when_due(self) -> None:
        """A batch that waited `worker_batch_seconds` goes now, however small.

        A plain asyncio task, not a Faust timer: Faust stops its timers before it waits for every
        event it handed out to be acknowledged, so a timer would leave that wait hanging on stop.
        """
        interval = self.settings.worker_batch_seconds / 2
        try:
            while True:
                await asyncio.sleep(interval)
                if self._stream is not None and self._pending and \
                        time.monotonic() - self._pending_since >= self.settings.worker_batch_seconds:
                    await self.flush(self._stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._crashed()
            raise

    async def flush(self, stream: StreamT) -> None:
        """Apply the gathered events now; they are acknowledged once Kafka confirmed their writes.

        Applying a batch is synchronous (no await between reading a state and writing it). While
        reservations are being decided, a batch is applied in steps of RESERVING_STEP events, each
        a batch of its own, with the event loop free in between: a reserve() waits for one step,
        not for the whole batch. One flush at a time (the agent's or the drainer's), so the steps
        of a partition are applied in offset order. Confirming runs beside the next batches.
        """
        async with self._applying:
            events, self._pending = self._pending, []
            step = RESERVING_STEP if self.enforcer.deciding() else len(events) or 1
            for start in range(0, len(events), step):
                if start:
                    await asyncio.sleep(0)  # a waiting reservation is decided here
                batch = events[start:start + step]
                self._unconfirmed.append((batch, self.apply(batch)))
                if self._confirming is None or self._confirming.done():
                    self._confirming = asyncio.ensure_future(self._confirm(stream))
        if sum(len(batch) for batch, _counts in self._unconfirmed) > 4 * self.settings.worker_batch_size:
            await asyncio.shield(self._confirming)  # back-pressure: Kafka sets the pace

    async def _confirm(self, stream: StreamT) -> None:
        try:
            while self._unconfirmed:
                batches, self._unconfirmed = self._unconfirmed, []
                await self.outbox.flush()  # everything produced so far, these batches' writes included
                await self.enforcer.writer.flush()  # and the holds their events committed
                for events, counts in batches:
                    for event in events:
                        await stream.ack(event)
                    self.counters.update(counts)
        except Exception:
            self._crashed()
            raise

    def _crashed(self) -> None:
        # Faust would restart the agent and skip its unacknowledged events while the web server
        # goes on answering balances that no longer move. Exit at once instead: a clean stop would
        # wait for events that will never be acknowledged, and exiting at any instant is safe
        # (nothing unacknowledged is committed; the next owner replays it, see README.md).
        log.critical("the usage agent crashed; the worker exits", exc_info=True)
        exit_now(EXIT_CRASHED)

    def apply(self, events: list[EventT]) -> Counter[str]:
        """Process one batch and hand its writes to the outbox (and the local tables)."""
        records = [SourceRecord(e.message.partition, e.message.offset, e.message.key, e.message.value,
                                e.message.timestamp) for e in events]
        for partition in {record.partition for record in records}:
            if not self.processor.loaded(partition):
                self.processor.load(partition, self._remembered_batches(partition))
                stored = self.states.data.data.get(_position_key(partition))
                self.positions[partition] = int(stored) if stored else None
        records = self._with_skipped(records)
        now = time.time()
        result = self.processor.process(records, self.state_of, now=now, read_record=self.source.read)
        self._write(result)
        if result.commits:
            self.enforcer.commit(result.commits, now)
        for key in self._watchers.keys() & result.states.keys():
            self._wake(key)
        for partition in {record.partition for record in records}:
            self._persist(self.states, partition, _position_key(partition), str(self.positions[partition]).encode())
        return result.counts

    def _with_skipped(self, records: list[SourceRecord]) -> list[SourceRecord]:
        """`records`, preceded by any record Faust skipped past this partition's next offset."""
        complete: list[SourceRecord] = []
        for record in records:
            expected = self.positions.get(record.partition)
            if expected is not None and record.offset > expected:
                skipped = read_range(self.settings.kafka_bootstrap, self.settings.usage_topic,
                                     record.partition, expected, record.offset)
                log.warning("partition %d: %d record(s) skipped by the consumer (offsets %d..%d), read "
                            "and applied first", record.partition, len(skipped), expected, record.offset - 1)
                self.counters["skipped_and_read"] += len(skipped)
                complete.extend(skipped)
            complete.append(record)
            self.positions[record.partition] = max(expected or 0, record.offset + 1)
        return complete

    def _remembered_batches(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = f"{partition}/".encode()
        return ((key, value) for key, value in list(self.remembered.data.data.items())
                if key.startswith(prefix) and value)

    def _write(self, result: BatchResult) -> None:
        for key, (partition, state) in result.states.items():
            stored = self._persist(self.states, partition, key, state.to_bytes())
            if stored is not None:
                self._written.wrote(key, stored, state)
        for partition, key, value in result.remembered:
            self._persist(self.remembered, partition, key, value)
        for partition, key in result.forgotten:
            self._persist(self.remembered, partition, key, None)  # a tombstone
        self.outbox.put_many(self.settings.rated_topic, result.rated)
        self.outbox.put_many(self.settings.alerts_topic, result.alerts)
        for key, value in result.pool_usage:  # to the org's partition, as Faust routes the org's key
            self.outbox.put(self.settings.pool_usage_topic, None, key, value)
        for letter in result.dead_letters:
            self.outbox.dead_letter(self.settings.dead_letter_topic, letter)

    def _persist(self, table: faust.Table, partition: int, key: bytes, value: bytes | None) -> bytes | None:
        """One table write: to the outbox (the changelog, the truth) and to the in-memory store."""
        self.outbox.put(table.changelog_topic.get_topic_name(), partition, key, value)
        return tables.put(table, partition, key, value)

    async def on_partitions_assigned(self, *_args: Any, **_kwargs: Any) -> None:
        # Another worker may have remembered or forgotten ids while it owned a partition.
        self.processor.forget_partitions()
        self.positions.clear()
        self._written.clear()  # the revoked users' too
        for key in list(self._watchers):
            self._wake(key)  # each stream checks whether its user's partition is still here

    def watch(self, user_key: bytes) -> asyncio.Queue[None]:
        changes: asyncio.Queue[None] = asyncio.Queue(maxsize=1)  # one pending wake-up: changes coalesce
        self._watchers.setdefault(user_key, set()).add(changes)
        return changes

    def unwatch(self, user_key: bytes, changes: asyncio.Queue[None]) -> None:
        watching = self._watchers.get(user_key, set())
        watching.discard(changes)
        if not watching:
            self._watchers.pop(user_key, None)

    def _wake(self, user_key: bytes) -> None:
        for changes in self._watchers.get(user_key, ()):
            if changes.empty():
                changes.put_nowait(None)

    def stats(self) -> dict[str, int]:
        remembered = sum(len(ids) for ids in self.processor.remembered.values())
        forgotten_early = sum(ids.forgotten_early for ids in self.processor.remembered.values())
        unconfirmed = sum(len(events) for events, _counts in self._unconfirmed)
        return {"applied": 0, "duplicates": 0, "conflicts": 0, "replayed": 0, "dead_lettered": 0, "grants": 0,
                "duplicate_grants": 0, "conflicting_grants": 0, "corrections": 0, "duplicate_corrections": 0,
                "conflicting_corrections": 0,
                **self.counters, "remembered_ids": remembered, "forgotten_early": forgotten_early,
                "pending_events": len(self._pending), "unconfirmed_events": unconfirmed,
                "subscriptions": len(self.subscriptions.latest), "subscriptions_unreadable": len(self.subscriptions.unreadable),
                "key_revocations": len(self.revocations.latest), "key_revocations_unreadable": len(self.revocations.unreadable),
                "price_books": len(self.price_books.latest), "price_books_unreadable": len(self.price_books.unreadable)}


def current_events(events: list[EventT], app: AppT) -> tuple[list[EventT], list[EventT]]:
    """(the events to apply, each now tracked as unacknowledged; the events to acknowledge unapplied).

    The checks Faust's stream iterator makes on each event (faust/_cython/streams.pyx,
    `_prepare_event`): an event fetched before a rebalance, or while Faust's flow control is
    suspended for one, is acknowledged unapplied, as Faust does (its partition is read again from
    the committed offset, and `Engine._with_skipped` reads any record a commit passed). Every other
    is tracked, so Faust commits no offset past it and a rebalance waits for its acknowledgement.
    """
    if not app.flow_control.is_active():
        return [], events
    generation, track = app.consumer_generation_id, app.consumer.track_message
    current, stale = [], []
    for event in events:
        message = event.message
        if message.generation_id != generation:
            stale.append(event)
            continue
        if not message.tracked:
            message.tracked = True
            track(message)
        current.append(event)
    return current, stale


def _position_key(partition: int) -> bytes:
    return f"/position/{partition}".encode()


def create_app(settings: Settings) -> faust.App:
    """The worker's Faust app: reads the usage topic, keeps per-user state, serves the API."""
    app = create_faust_app(settings)
    usage = app.topic(settings.usage_topic, key_serializer="raw", value_serializer="raw",
                      partitions=settings.partitions)
    # Keys and values are raw bytes (key_type=bytes selects the raw codec), so Faust's router
    # hashes a key exactly like the producer did when it chose the user's partition.
    states = app.Table(USER_STATE_TABLE, default=None, key_type=bytes, value_type=bytes,
                       partitions=settings.partitions)
    remembered = app.Table(REMEMBERED_IDS_TABLE, default=None, key_type=bytes, value_type=bytes,
                           partitions=settings.partitions)
    holds = app.Table(HOLDS_TABLE, default=None, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    engine = Engine(settings, states, remembered, holds)
    app.agent(usage, name="usage")(engine.consume)
    # The same partition count as the usage topic and the tables: Faust assigns partition p of each
    # to one worker, so the org's pool record is written by the worker that owns its partition.
    pool_usage = app.topic(settings.pool_usage_topic, key_serializer="raw", value_serializer="raw",
                           partitions=settings.partitions)
    app.agent(pool_usage, name="pools")(engine.consume_pool_usage)
    app.on_partitions_assigned.connect(engine.on_partitions_assigned)

    @app.task
    async def exit_when_stuck() -> None:
        await watch_recovery(app, settings.worker_stuck_seconds)

    register_views(app, engine, resolve_secret(settings))
    return app

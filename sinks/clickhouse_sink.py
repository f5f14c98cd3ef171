"""Consume the rated topic and store every record in ClickHouse: buffer, write, then commit.

The worker is the one rating authority: the sink stores its rated records as they are (applied
ones in `rated_events`, re-sent copies in `usage_duplicates`, corrected versions in both
`rated_events` and `usage_corrections`: `queries.TABLES_FOR_STATUS`), so ClickHouse holds exactly
what the balances counted. Guarantees, step by step:
- `add()` only buffers; nothing is acknowledged yet.
- a full (or old enough) batch goes to a writer thread, and the sink reads the next one meanwhile:
  chDB releases the GIL while it inserts, so reading and inserting overlap. At most one batch
  is being written and one gathered, so memory stays bounded; batches are stored and committed
  in order.
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
- a consumer out of its group for `sink_stuck_seconds` while a broker is up (sinks/group_watch.py)
  is replaced by a new one, its buffer dropped uncommitted in the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from meterline.schemas.decision import DECISION_FIELDS, decision_row
from meterline.schemas.rated import RATED_FIELDS, rated_row, rated_status
from meterline.settings import Settings
from meterline.sinks.group_watch import STATISTICS_SECONDS, GroupWatch
from meterline.sinks.queries import DECISIONS, TABLES_FOR_STATUS
from meterline.sinks.warehouse import Warehouse

log = logging.getLogger(__name__)
# A slow or unreachable ClickHouse must not hold a rebalance or a stop for long (quix's rule):
# partitions are handed over uncommitted instead.
REVOKE_SECONDS = 10.0


@dataclass
class Batch:
    """Rated records gathered from the topic, by table, and the offsets they span."""

    records: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    first_offset: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> offset
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    # Per table, records ClickHouse refused and the sink could not convert: set by whichever thread
    # writes the batch (once per table, however many retries), added to the sink's count when stored.
    unreadable: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(records) for records in self.records.values())

    def token(self) -> str:
        """The insert deduplication token: each topic partition's offset range."""
        return ",".join(f"{topic}:{partition}:{self.first_offset[(topic, partition)]}-{self.next_offset[(topic, partition)] - 1}"
                        for topic, partition in sorted(self.next_offset))


class ClickHouseSink:
    """Kafka rated topic -> ClickHouse `rated_events`, `usage_duplicates` and `usage_corrections`;
    the decisions topic -> `usage_decisions`.

    Args:
        settings: broker, topic, consumer group, batch size and interval.
        warehouse: the ClickHouse connection (this process owns it).
    """

    def __init__(self, settings: Settings, warehouse: Warehouse):
        self.settings = settings
        self.warehouse = warehouse
        self.batch = Batch()  # being gathered
        self._writing: tuple[Batch, Future[int]] | None = None  # handed to the writer, not yet committed
        self._writer: ThreadPoolExecutor | None = None
        self._consumer: Consumer | None = None
        self._group_watch: GroupWatch | None = None  # the consumer's
        self._stop: threading.Event | None = None  # run()'s, so a revoke during a stop ends at once
        self.rows_written = 0
        self.unreadable_skipped = 0
        self.batches_written = 0
        self._reported = (time.monotonic(), 0, 0)  # when, rows_written, batches_written

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            watch = self._group_watch = GroupWatch(self.settings.sink_stuck_seconds, time.monotonic())
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "group.id": self.settings.sink_group,
                    "enable.auto.commit": False,  # we commit after the rows are stored
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    # Fetches of 1 MB a partition (the default) kept the sink's reads at ~130,000
                    # records/s here; 8 MB ones read ~250,000 (a batch is ~12 MB of records anyway).
                    "max.partition.fetch.bytes": 8 << 20,
                    "fetch.max.bytes": 64 << 20,
                    "statistics.interval.ms": int(STATISTICS_SECONDS * 1000),
                    "stats_cb": lambda raw: watch.on_statistics(raw, time.monotonic()),
                }
            )
            self._consumer.subscribe([self.settings.rated_topic, self.settings.decisions_topic], on_revoke=self._on_revoke)
        return self._consumer

    def _on_revoke(self, consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a replaced consumer closing: what it held was dropped already
        # Store what we hold before another member takes the partitions over, if ClickHouse lets us
        # within REVOKE_SECONDS; else hand them over uncommitted (nothing is lost, nothing counted twice).
        if not self.flush(self._stop, deadline=time.monotonic() + REVOKE_SECONDS):
            log.warning("ClickHouse unreachable: %d buffered row(s) handed over uncommitted; they are read again",
                        self._buffered())
            self._clear_buffer()

    def add(self, message: Message) -> None:
        self.add_many([message])

    def add_many(self, messages: list[Message]) -> None:
        """Buffer what `consume()` returned. One loop with its lookups bound once: this is per record,
        and at ~100,000 records a second the sink's share of the time beside the insert."""
        batch = self.batch
        first_offset, next_offset, records = batch.first_offset, batch.next_offset, batch.records
        decisions_topic, decisions = self.settings.decisions_topic, batch.records[DECISIONS]
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            where = (topic, partition)
            if where not in next_offset:
                first_offset[where] = offset
            next_offset[where] = offset + 1
            value = message.value()
            if topic == decisions_topic:
                decisions.append(value)
                continue
            try:
                tables = TABLES_FOR_STATUS[rated_status(value)]
            except Exception:  # noqa: BLE001 - the worker wrote it; still, no record may stop the sink
                log.warning("unreadable rated record at %s[%d]@%d, skipped", topic, partition, offset)
                self.unreadable_skipped += 1
                continue
            for table in tables:
                records[table].append(value)

    def _buffered(self) -> int:
        """Records held: gathered, and being written."""
        return len(self.batch) + (len(self._writing[0]) if self._writing else 0)

    def _due(self) -> bool:
        age = time.monotonic() - self.batch.started
        return len(self.batch) >= self.settings.sink_batch_size or (bool(self.batch.next_offset) and age >= self.settings.sink_batch_seconds)

    def write(self, batch: Batch | None = None) -> int:
        """Insert `batch` (default: the one gathered); return the rows stored (a record that could not be converted is not one)."""
        batch = self.batch if batch is None else batch
        token = batch.token()
        return sum(self._insert(batch, table, records, token) for table, records in batch.records.items() if records)

    def _insert(self, batch: Batch, table: str, records: list[bytes], token: str) -> int:
        try:
            self.warehouse.insert_rated_json(table, records, dedupe_token=token)
            return len(records)
        except Exception as error:  # noqa: BLE001 - refused, or unreachable: the typed path tells them apart
            refusal = error
        rows, unreadable = [], 0
        to_row, columns = (decision_row, DECISION_FIELDS) if table == DECISIONS else (rated_row, RATED_FIELDS)
        for raw in records:
            try:
                rows.append(to_row(raw))
            except Exception:  # noqa: BLE001 - the worker wrote it; still, no record may stop the sink
                unreadable += 1
        if rows:
            self.warehouse.insert_rated(table, rows, dedupe_token=token, columns=columns)  # raises while ClickHouse is unreachable
        if unreadable:
            log.warning("%d unreadable rated record(s) in %s skipped (ClickHouse: %s)", unreadable, token, refusal)
            batch.unreadable[table] = unreadable
        return len(rows)

    def flush(self, stop: threading.Event | None = None, deadline: float | None = None) -> bool:
        """Store the batch being written and the one gathered (retrying while ClickHouse is down), committing each.

        Returns False if it gave up first (`stop` set, or past `deadline`): what is held is kept and
        not committed, so it is read again by whoever reads these partitions next.
        """
        if not self._settle(stop, deadline):
            return False
        if self.batch.next_offset:
            self._hand_over()
        return self._settle(stop, deadline)

    def _hand_over(self) -> None:
        """The gathered batch goes to the writer thread; a new one starts. Call only after `_settle`."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        batch, self.batch = self.batch, Batch()
        self._writing = (batch, self._writer.submit(self.write, batch))

    def _settle(self, stop: threading.Event | None, deadline: float | None) -> bool:
        """Wait for the batch being written (retrying it here if it failed), then commit its offsets."""
        if self._writing is None:
            return True
        batch, writing = self._writing
        try:
            stored = writing.result(timeout=None if deadline is None else max(deadline - time.monotonic(), 0))
        except FutureTimeout:
            return False  # ClickHouse is slow: the insert may still land, and the next reader's is dropped
        except Exception as error:  # noqa: BLE001 - any warehouse failure: keep the batch, retry
            retried = self._write_retrying(batch, error, stop, deadline)
            if retried is None:
                return False
            stored = retried
        self._writing = None
        self.rows_written += stored  # once, however many retries
        self.unreadable_skipped += sum(batch.unreadable.values())
        self.batches_written += 1
        self._commit(batch)
        return True

    def _write_retrying(self, batch: Batch, error: Exception, stop: threading.Event | None,
                        deadline: float | None) -> int | None:
        """Write `batch` until it is stored (its rows) or `stop` / `deadline` comes first (None)."""
        delay = 0.5
        while True:
            wait = delay if deadline is None else min(delay, deadline - time.monotonic())
            log.warning("ClickHouse write failed, retrying in %.1fs (%s records behind): %s", max(wait, 0), self.lag(), error)
            if wait <= 0 or (stop or threading.Event()).wait(wait):
                return None  # stopping or out of time: offsets stay uncommitted
            delay = min(delay * 2, 10.0)
            try:
                return self.write(batch)
            except Exception as again:  # noqa: BLE001
                error = again

    def _commit(self, batch: Batch) -> None:
        offsets = [TopicPartition(topic, p, o) for (topic, p), o in batch.next_offset.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            # The rows are stored; only the commit is lost (the group is rebalancing, or its
            # coordinator is away after a broker restart). Whoever reads these partitions next
            # starts from the last commit and stores the batch again: harmless, inserts carry
            # dedupe tokens and the table keeps one row per request id. Dying here is not.
            log.warning("offset commit failed; the stored batch will be read again: %s", error)

    def _clear_buffer(self) -> None:
        self.batch = Batch()
        self._writing = None

    def _replace_stuck_consumer(self) -> None:
        """A new consumer instead of the one out of its group; what is held is read again from the
        last commit (dedupe tokens and one row per request id keep it from counting twice)."""
        log.warning("the sink's consumer has been out of group %s for %.0f s with the broker up; a new one "
                    "replaces it (%d buffered record(s) are read again)", self.settings.sink_group,
                    self.settings.sink_stuck_seconds, self._buffered())
        stuck, self._consumer = self._consumer, None
        self._clear_buffer()
        if stuck is not None:  # its close may wait for the coordinator it cannot find: never the sink's wait
            threading.Thread(target=stuck.close, name="sink-replaced-consumer", daemon=True).start()

    def poll_once(self, timeout: float = 0.2, stop: threading.Event | None = None) -> int:
        if self._group_watch is not None and self._group_watch.stuck(time.monotonic()):
            self._replace_stuck_consumer()
        messages = self.consumer.consume(num_messages=self.settings.sink_batch_size, timeout=timeout)
        self.add_many(messages)
        if self._writing is not None and self._writing[1].done():
            self._settle(stop, None)  # commit it, or retry it here if it failed
        if self._due() and self._settle(stop, None):
            self._hand_over()  # written while the next batch is read
        return len(messages)

    def lag(self) -> int | None:
        """Records of the rated topic not yet stored, over this sink's partitions (from the last fetch)."""
        if self._consumer is None:
            return None
        behind = 0
        try:
            for position in self._consumer.position(self._consumer.assignment()):
                _low, high = self._consumer.get_watermark_offsets(position, cached=True)
                if position.offset >= 0 and high >= 0:
                    behind += max(high - position.offset, 0)
        except KafkaException:  # e.g. in a rebalance: unknown for now, never a reason to stop
            return None
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
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

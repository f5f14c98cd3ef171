"""A compacted topic kept in memory: read to its end, then followed (subscriptions, org key versions).

`read_to_end` is what a command needs; the worker calls it before it serves and then `follow`s
the topic in a thread, so `latest` stays current (one dict assignment per record: readers on other
threads see the old or the new record, never half). A record its feed cannot use is skipped and
named in `unreadable`: its key keeps its previous record.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Generic, TypeVar

from meterline.exceptions import MeterlineError

Record = TypeVar("Record")


class UnusableRecord(Exception):
    """A record a feed skips; its message says why."""


class CompactedFeed(Generic[Record]):
    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.bootstrap = bootstrap
        self.latest: dict[str, Record] = {}
        self.unreadable: list[str] = []
        self._consumer: Any = None  # made by read_to_end, in the process and thread that use it
        self._stopped = threading.Event()
        self._following = False

    def parse(self, key: str, value: bytes) -> Record:
        """The record for `key`; raise UnusableRecord to skip it."""
        raise NotImplementedError

    def read_to_end(self, timeout: float = 30.0) -> dict[str, Record]:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer({"bootstrap.servers": self.bootstrap, "enable.auto.commit": False,
                                   "group.id": f"meterline-feed-{uuid.uuid4().hex}",
                                   "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 10_000})
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            return self.latest  # nothing published yet (the worker creates the topic before it starts)
        ends = {}
        for partition in metadata.partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        self._consumer.assign([TopicPartition(self.topic, p, 0) for p in metadata.partitions])
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for message in self._consumer.consume(500, 0.5):
                if message.error() is None:
                    self._take(message)
                    if message.offset() + 1 >= ends.get(message.partition(), 0):
                        ends.pop(message.partition(), None)
        if ends:
            raise MeterlineError(f"could not read the topic {self.topic} to its end within {timeout}s")
        return self.latest

    def follow(self) -> None:
        """Apply records as they are published, until `close` (run it in a thread)."""
        self._following = True
        try:
            while not self._stopped.is_set():
                for message in self._consumer.consume(500, 0.5):
                    if message.error() is None:
                        self._take(message)
        finally:
            self._consumer.close()  # on the thread that uses it

    def close(self) -> None:
        self._stopped.set()
        if not self._following and self._consumer is not None:
            self._consumer.close()

    def _take(self, message: Any) -> None:
        key = (message.key() or b"").decode("utf-8", "replace")
        if message.value() is None:
            self.latest.pop(key, None)
            return
        try:
            self.latest[key] = self.parse(key, message.value())
        except UnusableRecord as why:  # not written by meterline, or not usable here: named, never fatal
            where = f"partition {message.partition()} offset {message.offset()}"
            self.unreadable.append(f"{where} ({why})" if str(why) else where)

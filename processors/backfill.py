"""Read source records straight from Kafka: the records a batch found missing, and the event a correction corrects.

Each partition's next offset is part of the worker's state (see `Engine.apply`). When Faust hands
over a record past that offset, the records in between were skipped by the consumer (seen here
under rebalance churn: after SIGKILLs, a partition's committed offset ran ahead of what any
worker had applied). They are read here and applied first, so a skip can delay but never lose one.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

from meterline.processors.batch import SourceRecord


def read_range(bootstrap: str, topic: str, partition: int, start: int, end: int,
               timeout: float = 30.0) -> list[SourceRecord]:
    """The records of `topic[partition]` with offsets in [start, end), as they are on the broker."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "meterline-backfill",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    records: list[SourceRecord] = []
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                break  # end of the partition, or an error: what was read is what exists
            if message.offset() >= end:
                break
            records.append(SourceRecord(partition, message.offset(), message.key(), message.value(),
                                        message.timestamp()[1] / 1000))
        else:
            raise TimeoutError(f"reading {topic}[{partition}] {start}..{end} took over {timeout}s")
    finally:
        consumer.close()
    return records


class RecordReader:
    """Reads single earlier records of one topic, with one consumer kept open: a correction reads
    the event it corrects, and a consumer made for each would cost a connection a correction."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._consumer: Consumer | None = None

    def read(self, partition: int, offset: int, timeout: float = 30.0) -> bytes | None:
        """The value at `offset`, or None if the partition no longer (or never) held it."""
        if self._consumer is None:
            self._consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "meterline-backfill",
                                       "enable.auto.commit": False, "enable.partition.eof": True,
                                       "auto.offset.reset": "latest",  # an offset past retention reads nothing
                                       # One record is wanted, not a stream: little prefetch, no fetch left
                                       # waiting at a partition's end for 500 ms (the next read waited behind
                                       # it), no 1 s pause before fetching a partition read just before.
                                       "fetch.wait.max.ms": 10, "queued.min.messages": 1000,
                                       "fetch.queue.backoff.ms": 1})
        self._consumer.assign([TopicPartition(self.topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            if message.partition() != partition or message.offset() < offset:
                continue  # fetched for an earlier assignment
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return None  # the partition ends before it: past retention, or never written
                continue  # transient: retried until the deadline
            return message.value() if message.offset() == offset else None
        raise TimeoutError(f"reading {self.topic}[{partition}]@{offset} took over {timeout}s")

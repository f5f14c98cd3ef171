"""Read a range of source records straight from Kafka: the records a batch found missing.

Each partition's next offset is part of the worker's state (see `Engine.apply`). When Faust hands
over a record past that offset, the records in between were skipped by the consumer (seen here
under rebalance churn: after SIGKILLs, a partition's committed offset ran ahead of what any
worker had applied). They are read here and applied first, so a skip can delay but never lose one.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

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

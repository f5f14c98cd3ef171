"""Replay the spool into Kafka in order; commit a batch only once Kafka acknowledged all of it.

Runs on the meter's poll thread. A batch that fails part-way is not committed and is sent again
later, whole: the part Kafka already had becomes duplicates, which the processors drop by
request id. Nothing is committed that Kafka did not acknowledge, so nothing is lost.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Message

from meterline.producers.spool import Batch

if TYPE_CHECKING:
    from meterline.producers.engine import Engine

log = logging.getLogger(__name__)

REPLAY_BATCH = 5_000  # events per committed batch: a failure re-sends at most this many
PROBE_TIMEOUT = 2.0  # seconds to wait for metadata before calling Kafka unreachable


class ReplayBatch:
    """Acknowledgements of one batch (callbacks run on the poll thread only)."""

    def __init__(self, size: int):
        self.size = size
        self.acked = 0
        self.errors: list[KafkaError] = []

    @property
    def done(self) -> bool:
        return self.acked + len(self.errors) >= self.size

    def callback(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self.acked += 1
        else:
            self.errors.append(error)



def replay_spool(engine: Engine) -> bool:
    """Replay until the spool is empty (True) or Kafka fails or the meter stops (False)."""
    if engine.spool is None or not kafka_answers(engine):
        return False
    while not engine.stopping:
        batch = engine.spool.read(REPLAY_BATCH)
        if batch is None:
            if engine.resume_if_drained():
                log.warning("meterline: spool replayed; Kafka is back, events go straight to it again")
                return True
            continue  # events were appended meanwhile
        if not replay(engine, batch):
            return False
    return False


def kafka_answers(engine: Engine) -> bool:
    """True when the broker answers with a leader for every partition of the usage topic."""
    try:
        metadata = engine.producer.list_topics(engine.topic, timeout=PROBE_TIMEOUT)
    except KafkaException:
        return False
    topic = metadata.topics.get(engine.topic)
    return bool(metadata.brokers) and topic is not None and topic.error is None and bool(topic.partitions) and all(
        partition.leader >= 0 for partition in topic.partitions.values()
    )


def replay(engine: Engine, batch: Batch) -> bool:
    """Send one batch and wait for every acknowledgement; commit it if all came back positive."""
    assert engine.spool is not None
    acks = ReplayBatch(len(batch.records))
    producer = engine.producer
    for key, value in batch.records:
        while True:
            try:
                producer.produce(engine.topic, value, key, on_delivery=acks.callback)
                break
            except BufferError:
                engine.serve(0.05)
            except KafkaException:
                return False  # fatal: the poll thread renews the producer, the batch stays spooled
    deadline = time.monotonic() + engine.settings.delivery_timeout_ms / 1000 + 5
    while not acks.done:
        if engine.stopping or time.monotonic() > deadline:
            return False
        engine.serve(0.05)
    if acks.errors:
        log.warning("meterline: replay of %d spooled event(s) failed (%s); retrying later", len(acks.errors), acks.errors[0])
        return False
    engine.spool.commit(batch)
    engine.counters.add(replayed=acks.acked)
    for _key, value in batch.records:
        engine.deliveries.report(value, "replayed", None)
    return True

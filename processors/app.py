"""The Faust app, its topics and tables, built from Settings.

`faust -A meterline.processors.app worker` (or `meterline worker`) runs it.
"""

from __future__ import annotations

import faust

from meterline.processors.worker import BALANCES_TABLE, SEEN_REQUESTS_TABLE
from meterline.settings import Settings, load_settings


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # Tables live in memory and are rebuilt from their compacted changelog topics on start.
        store="memory://",
        topic_partitions=settings.partitions,
        web_host=settings.worker_host,
        web_bind=settings.worker_host,  # Faust binds 0.0.0.0 unless told: keep the API where it was asked to be
        web_port=settings.worker_port,
        web_in_thread=False,
        producer_acks=-1,
        # Every table write is a changelog message; without lingering aiokafka sends each in its
        # own produce request (acks=all): ~30 % of a profile of the worker was socket writes.
        producer_linger=0.01,
        producer_max_batch_size=1 << 20,
        producer_compression_type="lz4",
        # Commit often: fewer events to replay after a crash (replays are harmless, see ledger.py).
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A worker that dies keeps its partitions (and its users' balances) unserved until the
        # session times out: 15 s instead of 60 s, still far above a GC pause.
        broker_session_timeout=15.0,
        broker_heartbeat_interval=3.0,
        datadir=str(settings.home / "faust"),
    )


settings = load_settings()
app = create_app(settings)

usage_topic = app.topic(settings.usage_topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
dead_letter_topic = app.topic(settings.dead_letter_topic, key_serializer="raw", value_serializer="json")

# Keys are raw bytes (key_type=bytes selects the raw codec), so Faust's router hashes a key
# exactly like the producer did when it chose the user's partition.
# org/user -> Balance.to_json()
balances = app.Table(BALANCES_TABLE, default=None, key_type=bytes, partitions=settings.partitions)
# org/request id -> SeenRequest.to_json(), pruned after the dedupe window.
seen_requests = app.Table(SEEN_REQUESTS_TABLE, default=None, key_type=bytes, partitions=settings.partitions)

# Register agents and views on import of the app module, as `faust -A` expects.
from meterline.processors import agents, views  # noqa: E402,F401

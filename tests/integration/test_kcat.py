"""Emitting without the SDK: the kcat command of producers/README.md, against the real broker.

The same JSON another language would write; the worker must count it like an SDK event.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone

from aiokafka.partitioner import murmur2

from meterline.schemas import parse_event
from meterline.settings import Settings
from meterline.stack import ensure_topics
from tests.integration.pipeline import counted, running_pipeline, wait_for
from tests.integration.test_producer_sdk import consume_all


def kcat_produce(settings: Settings, key: str, document: dict) -> None:
    """`kcat -P` exactly as the README shows it (murmur2 partitioner, idempotent, acks=all)."""
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is required (Debian package `kcat`; .ci/run installs it)"
    subprocess.run(
        [kcat, "-P", "-b", settings.kafka_bootstrap, "-t", settings.usage_topic, "-k", key,
         "-X", "partitioner=murmur2_random", "-X", "enable.idempotence=true", "-X", "acks=all"],
        input=json.dumps(document, separators=(",", ":")).encode(), check=True, timeout=60,
    )


def usage_document(request_id: str, org: str, user: str, tokens: int) -> dict:
    """The minimal CloudEvents usage event of the README."""
    return {
        "specversion": "1.0",
        "id": request_id,
        "source": "billing-service",
        "type": "dev.meterline.usage.v1",
        "subject": user,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {"org_id": org, "user_id": user, "model": "gpt-4o", "input_tokens": tokens, "output_tokens": 0},
    }


def test_kcat_events_parse_land_on_the_users_partition_and_are_counted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ensure_topics(settings)
    users = {f"kcat-user-{i}": 1000 * (i + 1) for i in range(4)}
    with running_pipeline(settings, with_sink=False) as pipeline:
        for i, (user, tokens) in enumerate(users.items()):
            kcat_produce(settings, f"acme/{user}", usage_document(f"kcat-req-{i}", "acme", user, tokens))
        kcat_produce(settings, "acme/kcat-user-0", usage_document("kcat-req-0", "acme", "kcat-user-0", 1000))  # retry

        events = consume_all(settings, len(users) + 1)
        assert len(events) == len(users) + 1
        for raw in events:
            key, partition = raw.pop("_key"), raw.pop("_part")
            event = parse_event(raw)  # the contract accepts what kcat wrote
            assert key == event.user_key.encode()
            assert partition == (murmur2(key) & 0x7FFFFFFF) % settings.partitions  # where the worker looks
            assert event.data.input_tokens == users[event.data.user_id]

        # The worker counts each request id once: the retried kcat-req-0 is a duplicate.
        assert wait_for(lambda: counted(pipeline, "acme", set(users)) == len(users), timeout=90)
        for user, tokens in users.items():
            assert pipeline.balance("acme", user)["events"] == 1

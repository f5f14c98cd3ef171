"""`meterline stack status`: which of broker, workers and sink are running and answering.

The broker by its pid and a metadata request; workers and sink by their Kafka consumer groups
(each running process is a member), and the worker on this port by its /healthz.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from meterline.settings import Settings
from meterline.stack.broker import broker_status


@dataclass(frozen=True)
class Part:
    name: str
    up: bool
    detail: str


def group_members(settings: Settings, group: str) -> int | None:
    """How many consumers the group has now; None if the broker cannot say."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    try:
        return len(admin.describe_consumer_groups([group], request_timeout=3)[group].result().members)
    except KafkaException:
        return None


def worker_health(settings: Settings) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"{settings.worker_url}/healthz", timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None


def stack_report(settings: Settings) -> list[Part]:
    broker = broker_status(settings)
    where = f"pid {broker.pid}" if broker.pid else "not started here"
    parts = [Part("broker", broker.answering,
                  f"{broker.bootstrap}, {where}, {'answering' if broker.answering else 'not answering'}")]
    if not broker.answering:
        return parts + [Part(name, False, "unknown: the broker does not answer") for name in ("workers", "sink")]
    workers = group_members(settings, settings.app_id) or 0
    health = worker_health(settings)
    here = ("not answering" if health is None else
            "serving balances" if health.get("serving") else "answering, still recovering its state")
    parts.append(Part("workers", workers > 0, f"{workers} in group {settings.app_id}; the one on "
                                                f"{settings.worker_url}: {here}"))
    sinks = group_members(settings, settings.sink_group) or 0
    parts.append(Part("sink", sinks > 0, f"{sinks} in group {settings.sink_group}"))
    return parts

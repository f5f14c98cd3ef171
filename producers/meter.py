"""Meter: emit usage events through an idempotent Kafka producer.

A retry must reuse the caller's request id: the id is what makes a duplicate
harmless downstream. Producer idempotence only covers librdkafka's own retries
within one producer session; the processors dedupe everything else.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from uuid6 import uuid7

from meterline.exceptions import MeterlineError
from meterline.schemas import UsageEvent, parse_event
from meterline.settings import Settings, load_settings


class DeliveryError(MeterlineError):
    """Kafka did not acknowledge some events; `errors` holds librdkafka's reasons."""

    def __init__(self, errors: list[KafkaError]):
        self.errors = errors
        super().__init__(f"{len(errors)} event(s) not delivered: {errors[0]}")


def new_request_id() -> str:
    # uuid7 is time-ordered, so request ids sort by creation time in ClickHouse.
    return str(uuid7())


def build_event(
    org_id: str,
    user_id: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    latency_ms: int = 0,
    request_id: str | None = None,
    action: str | None = None,
    cost_usd: Decimal | float | str | None = None,
    cached_input_tokens: int = 0,
    metadata: dict[str, str] | None = None,
    timestamp: datetime | None = None,
    source: str | None = None,
) -> UsageEvent:
    """Validate the arguments into a UsageEvent; raise InvalidEventError naming each bad field."""
    data: dict[str, Any] = {
        "org_id": org_id,
        "user_id": user_id,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached_input_tokens,
        "latency_ms": latency_ms,
        "metadata": metadata or {},
    }
    if action is not None:
        data["action"] = action
    if cost_usd is not None:
        data["cost_usd"] = cost_usd
    return parse_event(
        {
            "id": request_id or new_request_id(),
            "source": source or f"meterline-sdk://{socket.gethostname()}",
            "subject": user_id,
            "time": timestamp if timestamp is not None else datetime.now(timezone.utc),
            "data": data,
        }
    )


class Meter:
    """Emit usage events to Kafka. One line to start: ``meter = Meter()``.

    Args:
        settings: where the broker and topic are; defaults to the METERLINE_ environment.
        producer_config: extra librdkafka settings, applied over ours.
    """

    def __init__(self, settings: Settings | None = None, producer_config: dict[str, Any] | None = None):
        self.settings = settings or load_settings()
        self._config = {
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "enable.idempotence": True,  # off by default in librdkafka
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            # Java-compatible key hashing, so Faust (aiokafka) finds the same partition for a user.
            "partitioner": "murmur2_random",
            **(producer_config or {}),
        }
        self._producer: Producer | None = None
        self._errors: list[KafkaError] = []

    @property
    def producer(self) -> Producer:
        if self._producer is None:  # created lazily so building a Meter never touches the network
            self._producer = Producer(self._config)
        return self._producer

    def emit(self, org_id: str, user_id: str, model: str, input_tokens: int, output_tokens: int, **fields: Any) -> str:
        """Validate and send one event; return its request id. Nothing is sent if it is invalid."""
        return self.send(self.build(org_id, user_id, model, input_tokens, output_tokens, **fields))

    def build(self, org_id: str, user_id: str, model: str, input_tokens: int, output_tokens: int, **fields: Any) -> UsageEvent:
        """Validate into an event without sending it (keep it to re-send on retry)."""
        return build_event(org_id, user_id, model, input_tokens, output_tokens, **fields)

    def send(self, event: UsageEvent) -> str:
        """Send an already-built event (e.g. a re-send with the same request id)."""
        self._produce(event.user_key.encode(), event.to_json())
        return event.request_id

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.settings.usage_topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain, then retry
                self.producer.poll(0.1)
        self.producer.poll(0)

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._errors.append(error)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event is acknowledged; raise DeliveryError if any failed."""
        remaining = self.producer.flush(timeout)
        if remaining:
            raise MeterlineError(f"{remaining} event(s) still unacknowledged after {timeout}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError(errors)

    def close(self) -> None:
        if self._producer is not None:
            self.flush()
            self._producer = None

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

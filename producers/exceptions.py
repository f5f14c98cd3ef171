"""Errors the producer SDK raises. Each carries the data a caller can act on.

Bad input raises `meterline.schemas.InvalidEventError` (re-exported here): it names every
bad field and the rule it broke, and nothing was sent.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError

from meterline.exceptions import MeterlineError
from meterline.schemas import FieldProblem, InvalidEventError

__all__ = [
    "DeliveryError",
    "FieldProblem",
    "InvalidEventError",
    "MeterClosedError",
    "NotRecordedError",
    "ProducerError",
    "SpoolError",
    "SpoolFullError",
]


class ProducerError(MeterlineError):
    """Base class of the SDK's own errors (bad input is `InvalidEventError`)."""


class DeliveryError(ProducerError):
    """Events that reached neither Kafka nor the spool (spool disabled or full).

    Attributes:
        errors: librdkafka's reasons, one per event.
        payloads: the events' JSON, so the caller can still keep them somewhere.
    """

    def __init__(self, errors: list[KafkaError], payloads: list[bytes] | None = None):
        self.errors = errors
        self.payloads = payloads or []
        reason = f"; first reason: {errors[0]}" if errors else ""
        super().__init__(f"{max(len(errors), len(self.payloads))} event(s) neither delivered nor spooled "
                         f"(the spool is disabled or full){reason}")

    @property
    def codes(self) -> list[int]:
        """librdkafka error codes, e.g. `KafkaError._MSG_TIMED_OUT`."""
        return [error.code() for error in self.errors]


class SpoolError(ProducerError):
    """The spool directory cannot be used (permissions, a corrupt segment); the message says which file."""

    def __init__(self, message: str, path: Path):
        self.path = path
        super().__init__(message)


class SpoolFullError(SpoolError):
    """The outage spool reached its size bound; the event was NOT accepted.

    Kafka has been unreachable for long enough to fill `max_bytes`. Raise the bound
    (METERLINE_SPOOL_MAX_BYTES) or bring Kafka back; the spool drains by itself.
    """

    def __init__(self, path: Path, size_bytes: int, max_bytes: int, needed_bytes: int):
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes
        self.needed_bytes = needed_bytes
        super().__init__(
            f"spool {path} is full: {size_bytes:,} of {max_bytes:,} bytes used, {needed_bytes:,} more needed; "
            "the event was not accepted (raise METERLINE_SPOOL_MAX_BYTES or restore Kafka)",
            path,
        )


class MeterClosedError(ProducerError):
    """`emit`/`send` after `close()`."""


class NotRecordedError(ProducerError):
    """A `measure()` block ended without an exception and without `m.record(...)`: usage would be lost."""

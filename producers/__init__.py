"""The SDK services use to emit usage events: `Meter` (sync) and `AsyncMeter` (asyncio).

See producers/README.md: quick start, provider-response helpers, the outage spool and its
guarantees, and how to emit without the SDK.
"""

from meterline.producers.async_meter import AsyncMeter
from meterline.producers.events import build_event
from meterline.producers.exceptions import (
    DeliveryError,
    InvalidEventError,
    MeterClosedError,
    NotRecordedError,
    ProducerError,
    SpoolError,
    SpoolFullError,
)
from meterline.producers.measure import AsyncMeasurement, Measurement
from meterline.producers.meter import Meter
from meterline.producers.request_ids import new_request_id
from meterline.producers.responses import ResponseUsage, usage_from_response
from meterline.producers.stats import DeliveryReport, MeterStats

__all__ = [
    "AsyncMeasurement",
    "AsyncMeter",
    "DeliveryError",
    "DeliveryReport",
    "InvalidEventError",
    "Measurement",
    "Meter",
    "MeterClosedError",
    "MeterStats",
    "NotRecordedError",
    "ProducerError",
    "ResponseUsage",
    "SpoolError",
    "SpoolFullError",
    "build_event",
    "new_request_id",
    "usage_from_response",
]

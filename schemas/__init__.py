"""The usage event contract: CloudEvents 1.0 structured JSON, versioned."""

from meterline.schemas.errors import FieldProblem, InvalidEventError
from meterline.schemas.usage import (
    EVENT_TYPE,
    SCHEMA_VERSION,
    UsageData,
    UsageEvent,
    parse_event,
    record_time,
)

__all__ = [
    "EVENT_TYPE",
    "SCHEMA_VERSION",
    "FieldProblem",
    "InvalidEventError",
    "UsageData",
    "UsageEvent",
    "parse_event",
    "record_time",
]

"""UsageEvent: one AI call, as a CloudEvents 1.0 structured-mode JSON document.

The envelope's `id` is the caller's request id: it is what makes a re-sent event
harmless downstream. `subject` is the end user. Unknown fields are tolerated so a
newer producer never breaks an older processor.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meterline.exceptions import MeterlineError
from meterline.schemas.errors import FieldProblem, InvalidEventError

SCHEMA_VERSION = 1
EVENT_TYPE: Final = "dev.meterline.usage.v1"  # v{SCHEMA_VERSION}; a literal, so the field type checks
MAX_METADATA_BYTES = 8 * 1024
# A whole encoded event; ours stay under ~12 KiB, and Kafka refuses records past ~1 MB.
MAX_EVENT_BYTES = 64 * 1024
# Bounds a real call can reach, with room: the largest context windows hold ~10 million tokens, so
# a count past a billion is a bug or an attack. With them (and the price book's bounds), one event's
# credits and cost fit the warehouse's columns, and no sum of events can overflow (pricing/money.py).
MAX_TOKENS = 10**9
# A reported provider cost past a million dollars for one call is a unit mistake (cents, micros).
MAX_REPORTED_COST_USD = 10**6
MAX_LATENCY_MS = 2**32 - 1
MONEY_DECIMAL_PLACES = 18


def utc_instant(value: datetime) -> datetime:
    """`value` in UTC; ValueError (a validation error) when UTC cannot hold it."""
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before the first UTC instant Python has
        raise ValueError("must be an instant between years 1 and 9999 in UTC") from None


# Clocks drift; an event a little ahead of ours is fine, one from tomorrow is a bug.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def past_instant(value: datetime, info: ValidationInfo) -> datetime:
    """`value` in UTC, at most MAX_CLOCK_SKEW ahead of the validation context's `now` (else this clock)."""
    now = (info.context or {}).get("now") or datetime.now(timezone.utc)
    utc = utc_instant(value)
    if utc - now > MAX_CLOCK_SKEW:
        ahead = utc - now
        raise ValueError(f"must be at most {MAX_CLOCK_SKEW.total_seconds() / 60:g} minutes in the future, "
                         f"got {ahead} ahead (a timestamp from the future is a bug, not clock skew)")
    return utc

# Control characters (C0, DEL, C1) are never part of an id: they hide in logs and terminals, and two
# ids that print alike would be two users. "/" joins org and user in keys; whitespace is always a typo.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
IDENTIFIER_PATTERN = rf"^[^/\s{_CONTROL}]+$"
IDENTIFIER_RULE = "must be 1 to 256 characters, none of them '/', whitespace or a control character"
MAX_IDENTIFIER_CHARS = 256
Identifier = Field(min_length=1, max_length=MAX_IDENTIFIER_CHARS, pattern=IDENTIFIER_PATTERN)
# A request id may hold spaces, but not only spaces, and no control character.
REQUEST_ID_PATTERN = rf"^[^{_CONTROL}]*[^\s{_CONTROL}][^{_CONTROL}]*$"
REQUEST_ID_RULE = "must be 1 to 128 characters, not all whitespace, without control characters"
MAX_REQUEST_ID_CHARS = 128
MAX_MODEL_CHARS = 256
MAX_ACTION_CHARS = 64
MAX_SOURCE_CHARS = 512
# What a broken pattern means, in words (pydantic would print the regular expression).
PATTERN_RULES = {IDENTIFIER_PATTERN: IDENTIFIER_RULE, REQUEST_ID_PATTERN: REQUEST_ID_RULE}


class UsageData(BaseModel):
    """The `data` of a usage event: who used which model, and how much."""

    model_config = ConfigDict(extra="allow", frozen=True)

    org_id: str = Identifier
    user_id: str = Identifier
    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    input_tokens: StrictInt = Field(ge=0, le=MAX_TOKENS)
    output_tokens: StrictInt = Field(ge=0, le=MAX_TOKENS)
    cached_input_tokens: StrictInt = Field(default=0, ge=0, le=MAX_TOKENS)
    latency_ms: StrictInt = Field(default=0, ge=0, le=MAX_LATENCY_MS)
    cost_usd: Decimal | None = Field(default=None, ge=0, le=MAX_REPORTED_COST_USD, decimal_places=MONEY_DECIMAL_PLACES)
    action: str | None = Field(default=None, min_length=1, max_length=MAX_ACTION_CHARS)
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("cost_usd", mode="before")
    @classmethod
    def _finite_cost(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if isinstance(value, float):
            return Decimal(repr(value))  # 0.1 stays 0.1, not 0.1000000000000000055...
        return value

    @field_validator("cached_input_tokens")
    @classmethod
    def _cached_within_input(cls, value: int, info: ValidationInfo) -> int:
        # input_tokens is the total input, cached_input_tokens the part of it served from a cache.
        if not value:  # none cached, as most events send: the validated fields need not be read
            return value
        total = info.data.get("input_tokens")
        if isinstance(total, int) and value > total:
            raise ValueError(f"must be at most input_tokens ({total}), got {value}: input_tokens counts cached ones too")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:  # the usual case: this validator runs for every event
            return value
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes, got {size}")
        return value


class UsageEvent(BaseModel):
    """The CloudEvents envelope around `UsageData`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS, pattern=REQUEST_ID_PATTERN,
                    description="The request id; reuse it on retry.")
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    type: Literal["dev.meterline.usage.v1"] = EVENT_TYPE
    subject: str = Field(min_length=1, max_length=MAX_IDENTIFIER_CHARS, description="The end user's id.")
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: UsageData

    @field_validator("time")
    @classmethod
    def _not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        return past_instant(value, info)

    @model_validator(mode="after")
    def _subject_is_user(self) -> UsageEvent:
        if self.subject != self.data.user_id:
            raise ValueError("subject must equal data.user_id")
        return self

    @property
    def request_id(self) -> str:
        return self.id

    @property
    def user_key(self) -> str:
        """Kafka key and balance key: one user's events stay in order on one partition."""
        return f"{self.data.org_id}/{self.data.user_id}"

    @property
    def dedupe_key(self) -> str:
        """Request ids are unique per org; two orgs may pick the same id."""
        return f"{self.data.org_id}/{self.id}"

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def parse_event(raw: bytes | str | dict[str, Any], now: datetime | None = None) -> UsageEvent:
    """Validate one event from JSON or a dict; raise InvalidEventError naming every bad field."""
    context = {"now": now} if now else None
    try:
        if isinstance(raw, dict):
            return UsageEvent.model_validate(raw, context=context)
        # The model's validator itself, as model_validate_json calls it: the worker's every event
        # spares that wrapper (~8 % of validating one).
        return UsageEvent.__pydantic_validator__.validate_json(raw, context=context)  # type: ignore[no-any-return]
    except ValidationError as error:
        raise InvalidEventError.from_validation_error(error) from None
    except (UnicodeDecodeError, TypeError) as error:
        raise InvalidEventError([FieldProblem("event", f"not a JSON object: {error}")]) from None


@cache
def _identifier_adapter() -> TypeAdapter[str]:
    return TypeAdapter(Annotated[str, Identifier])


def identifier_problem(value: str) -> str | None:
    """Why `value` cannot be an org or user id, or None: the events' own rule, for other callers."""
    try:
        _identifier_adapter().validate_python(value)
    except ValidationError:
        return IDENTIFIER_RULE
    return None


def require_identifiers(**ids: str | None) -> None:
    """Raise MeterlineError for the first given id (org=..., user=...) an event could not carry."""
    for name, value in ids.items():
        if value is not None and (problem := identifier_problem(value)):
            raise MeterlineError(f"{name} id {value!r}: {problem}")


def record_time(kafka_timestamp_seconds: float | None) -> datetime | None:
    """The instant a Kafka record was written, to validate it with; None if the record has none."""
    if kafka_timestamp_seconds is None or kafka_timestamp_seconds <= 0:
        return None
    return datetime.fromtimestamp(kafka_timestamp_seconds, timezone.utc)

"""A correction: void one counted event, or amend its usage, with a reason.

Corrections travel on the usage topic, keyed by the user like the event they correct, so the
worker applies them in order with that user's usage and exactly once: the correction id is
remembered like a request id (a re-send is a duplicate) and its offset makes a replay harmless.
processors/README.md ("Corrections") has the rules the worker keeps.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo, \
    field_validator, model_validator

from meterline.schemas.errors import InvalidEventError
from meterline.schemas.usage import (
    MAX_ACTION_CHARS,
    MAX_MODEL_CHARS,
    MAX_REPORTED_COST_USD,
    MAX_REQUEST_ID_CHARS,
    MAX_TOKENS,
    MONEY_DECIMAL_PLACES,
    REQUEST_ID_PATTERN,
    Identifier,
    past_instant,
)

CORRECTION_TYPE = "dev.meterline.correction.v1"
CORRECTION_TYPE_BYTES = f'"{CORRECTION_TYPE}"'.encode()  # how the worker tells a correction apart, cheaply


class Amendment(BaseModel):
    """The usage fields an amend replaces; a field left out keeps the corrected event's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_CHARS)
    action: str | None = Field(default=None, min_length=1, max_length=MAX_ACTION_CHARS)
    input_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_TOKENS)
    output_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cached_input_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cost_usd: Decimal | None = Field(default=None, ge=0, le=MAX_REPORTED_COST_USD, decimal_places=MONEY_DECIMAL_PLACES)

    @model_validator(mode="after")
    def _changes_something(self) -> Amendment:
        if not self.changes():
            raise ValueError("an amendment must change at least one of " + ", ".join(Amendment.model_fields))
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CorrectionEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["dev.meterline.correction.v1"] = CORRECTION_TYPE
    id: str = Identifier  # the correction id: sending the same correction twice corrects once
    org_id: str = Identifier
    user_id: str = Identifier
    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS, pattern=REQUEST_ID_PATTERN)
    action: Literal["void", "amend"]
    amended: Amendment | None = None  # for an amend: what it changes
    reason: str = Field(min_length=1, max_length=500)
    time: AwareDatetime  # when it was decided

    @field_validator("time")
    @classmethod
    def _not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        return past_instant(value, info)

    @model_validator(mode="after")
    def _amend_has_changes(self) -> CorrectionEvent:
        if self.action == "amend" and self.amended is None:
            raise ValueError("an amend needs `amended`: the usage fields it changes")
        if self.action == "void" and self.amended is not None:
            raise ValueError("a void changes no field: leave `amended` out")
        return self

    @property
    def user_key(self) -> str:
        return f"{self.org_id}/{self.user_id}"

    def effect(self) -> bytes:
        """What the correction does, not when it was sent: a retry with the same id is a duplicate."""
        changes = self.amended.model_dump_json(exclude_none=True) if self.amended else ""
        return f"{self.request_id}\x00{self.action}\x00{changes}".encode()

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def parse_correction(raw: bytes, now: datetime | None = None) -> CorrectionEvent:
    """Validate one correction record (its time judged against `now`); raise InvalidEventError naming every bad field."""
    try:
        return CorrectionEvent.model_validate_json(raw, context={"now": now} if now else None)
    except ValidationError as error:
        raise InvalidEventError.from_validation_error(error) from None

"""A grant: credits given to one user outside the plan (a paid top-up or a promotion), optionally expiring.

Grants travel on the usage topic, keyed by the user like the user's usage, so the worker applies
them in order with that usage and exactly once: the grant id is remembered like a request id
(a re-send within the dedupe window is a duplicate), and the offset makes a replay harmless.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from meterline.schemas.errors import InvalidEventError
from meterline.schemas.usage import Identifier, past_instant, utc_instant

GRANT_TYPE = "dev.meterline.grant.v1"
GRANT_TYPE_BYTES = f'"{GRANT_TYPE}"'.encode()  # how the worker tells a grant from a usage event, cheaply
MAX_GRANT_CREDITS = Decimal(10**9)


class GrantEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["dev.meterline.grant.v1"] = GRANT_TYPE
    id: str = Identifier  # the grant id: granting twice with the same id grants once
    org_id: str = Identifier
    user_id: str = Identifier
    credits: Decimal = Field(gt=0, le=MAX_GRANT_CREDITS, decimal_places=12)
    kind: Literal["topup", "promo"] = "topup"
    expires_at: AwareDatetime | None = None
    reason: str = Field(min_length=1, max_length=500)
    time: AwareDatetime  # when it was granted

    @field_validator("time")
    @classmethod
    def _not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        return past_instant(value, info)

    @field_validator("expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc_instant(value)

    @model_validator(mode="after")
    def _expires_after_granted(self) -> GrantEvent:
        if self.expires_at is not None and self.expires_at <= self.time:
            raise ValueError(f"expires_at ({self.expires_at.isoformat()}) must come after the grant's time "
                             f"({self.time.isoformat()})")
        return self

    @property
    def user_key(self) -> str:
        return f"{self.org_id}/{self.user_id}"

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def parse_grant(raw: bytes, now: datetime | None = None) -> GrantEvent:
    """Validate one grant record (its time judged against `now`); raise InvalidEventError naming every bad field."""
    try:
        return GrantEvent.model_validate_json(raw, context={"now": now} if now else None)
    except ValidationError as error:
        raise InvalidEventError.from_validation_error(error) from None

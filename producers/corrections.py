"""`build_correction`: a void or an amend of one event already sent, validated (the meters' `void` and `amend`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from meterline.producers.request_ids import new_request_id
from meterline.schemas import InvalidEventError
from meterline.schemas.correction import CorrectionEvent


def build_correction(org_id: str, user_id: str, request_id: str, *, reason: str,
                     amended: dict[str, Any] | None = None, correction_id: str | None = None,
                     timestamp: datetime | None = None) -> CorrectionEvent:
    """Validate a correction of the event `request_id` of (org_id, user_id); raise InvalidEventError naming each bad field.

    Args:
        request_id: the request id of the event to correct (one the worker counted, within the dedupe window).
        reason: why, for the audit trail (1-500 characters).
        amended: None voids the event; else the usage fields that replace its own (model, action,
            input_tokens, output_tokens, cached_input_tokens, cost_usd), the others kept.
        correction_id: default a new one. A RETRY MUST REUSE IT: the same id corrects once.
        timestamp: when it was decided; default now.
    """
    try:
        return CorrectionEvent(id=correction_id or new_request_id(), org_id=org_id, user_id=user_id,
                               request_id=request_id, action="void" if amended is None else "amend",
                               amended=amended, reason=reason, time=timestamp or datetime.now(timezone.utc))
    except ValidationError as error:
        raise InvalidEventError.from_validation_error(error) from None

"""The schema's validated path, `build_event`, whose signature is emit's (declared here once).

`Meter.emit`, `AsyncMeter.emit` and `build` take `build_event`'s arguments (`emit_arguments`
copies its signature onto them for `help()` and editors) and pass them on unchanged. `emit`
uses the faster `meterline.producers.encoder.EventEncoder`, which falls back to `build_event`
for anything unusual, so the schema stays the one authority on validity.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TypeVar

from meterline.producers.request_ids import new_request_id
from meterline.schemas import InvalidEventError, UsageEvent, parse_event

_UTC = timezone.utc
F = TypeVar("F", bound=Callable[..., Any])


def default_source() -> str:
    """The CloudEvents `source` of events from this process: ``meterline-sdk://<hostname>``."""
    return f"meterline-sdk://{socket.gethostname()}"


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
    """Validate the arguments into a UsageEvent; raise InvalidEventError naming each bad field.

    These are emit's arguments (`Meter.emit`, `AsyncMeter.emit`, `build`), documented once here:

    Args:
        org_id, user_id: who; 1-256 characters, no "/", whitespace or control character.
        model: the model called.
        input_tokens: all input tokens, cached ones included (int >= 0).
        output_tokens: output tokens, reasoning included (int >= 0).
        latency_ms: the call's latency (int >= 0, default 0).
        request_id: the id of this AI call; default a new UUIDv7. A RETRY MUST REUSE IT.
        action: a credit tier such as "simple_query" (optional).
        cost_usd: the provider cost, if known (finite, >= 0, at most $1,000,000).
        cached_input_tokens: the part of input_tokens read from a prompt cache.
        metadata: str -> str, at most 8 KiB.
        timestamp: when the call happened (timezone-aware, at most 5 min ahead); default now.
        source: the CloudEvents `source` (the meters give their own; default ``meterline-sdk://<hostname>``).
    """
    data: dict[str, Any] = {
        "org_id": org_id,
        "user_id": user_id,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached_input_tokens,
        "latency_ms": latency_ms,
        "metadata": {} if metadata is None else metadata,
    }
    if action is not None:
        data["action"] = action
    if cost_usd is not None:
        data["cost_usd"] = cost_usd
    try:
        return parse_event(
            {
                "id": new_request_id() if request_id is None else request_id,
                "source": source or default_source(),
                "subject": user_id,
                "time": timestamp if timestamp is not None else datetime.now(_UTC),
                "data": data,
            }
        )
    except InvalidEventError as error:
        if "data.user_id" in error.fields:  # `subject` is user_id here: name the argument once
            raise InvalidEventError([p for p in error.problems if p.field != "subject"]) from None
        raise


_PARAMETERS = inspect.signature(build_event).parameters
# emit's arguments: the five it needs, then the options it takes by keyword (`source` is the meter's).
EMIT_REQUIRED = tuple(name for name, p in _PARAMETERS.items() if p.kind is p.POSITIONAL_OR_KEYWORD)
EMIT_OPTIONS = tuple(name for name, p in _PARAMETERS.items() if p.kind is p.KEYWORD_ONLY and name != "source")


def emit_arguments(method: F) -> F:
    """Show `method(self, *args, **options)` with build_event's arguments (help(), editors, docs)."""
    own = inspect.signature(method).parameters
    extra = [p for name, p in own.items() if p.kind is p.KEYWORD_ONLY]  # e.g. AsyncMeter.emit's `wait`
    arguments = [p for name, p in _PARAMETERS.items() if name != "source"]
    method.__signature__ = inspect.signature(method).replace(  # type: ignore[attr-defined]
        parameters=[own["self"], *arguments, *extra])
    return method

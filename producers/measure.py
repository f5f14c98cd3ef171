"""`meter.measure(...)`: time a provider call and record its usage.

    with meter.measure("acme", "user-42", "gpt-4o") as m:
        response = client.chat.completions.create(...)
        m.record(response)

`latency_ms` is the time from entering the block to `record()`. `record()` emits at once:
the provider has charged for the tokens, even if later code in the block fails. If the block
raises before `record()`, nothing is recorded - or, with ``record_failures=True``
(METERLINE_RECORD_FAILURES), one zero-usage event whose metadata says what failed - and the
exception propagates. Leaving the block normally without `record()` raises NotRecordedError,
because usage would otherwise be lost without a word.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from meterline.producers.exceptions import NotRecordedError
from meterline.producers.responses import usage_from_response

OUTCOME_KEY = "meterline.outcome"


class _Measurement:
    """State shared by the sync and async forms; `fields` are emit's keyword arguments."""

    def __init__(self, org_id: str, user_id: str, model: str, fields: dict[str, Any], record_failures: bool):
        self.org_id, self.user_id, self.model = org_id, user_id, model
        self.fields = fields
        self.record_failures = record_failures
        self.started = 0.0
        self.request_id: str | None = None  # set once recorded

    @property
    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def _usage_call(self, response: Any, input_tokens: int | None, output_tokens: int | None,
                    cached_input_tokens: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.request_id is not None:
            raise NotRecordedError(f"usage of this call was already recorded as {self.request_id}")
        fields = {"latency_ms": self.elapsed_ms, **self.fields}
        if response is not None:
            usage = usage_from_response(response)
            input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
            cached_input_tokens = usage.cached_input_tokens
            if usage.metadata:
                fields["metadata"] = {**(fields.get("metadata") or {}), **usage.metadata}
        elif input_tokens is None or output_tokens is None:
            raise TypeError("record() needs a response, or input_tokens and output_tokens")
        fields["cached_input_tokens"] = cached_input_tokens
        return (self.org_id, self.user_id, self.model, input_tokens, output_tokens), fields

    def _failure_call(self, error: BaseException) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # No `action`: an action can carry a credit tier, and a failed call must cost nothing.
        # No `request_id` either: the caller's retry reuses it, and a zero-usage event holding it
        # would make the retry's real usage a "duplicate" that is never billed.
        fields = {k: v for k, v in self.fields.items() if k not in ("action", "cost_usd", "request_id")}
        metadata = {**(fields.get("metadata") or {}), OUTCOME_KEY: "error", "meterline.error": type(error).__name__}
        if self.fields.get("action") is not None:
            metadata["meterline.action"] = str(self.fields["action"])
        if self.fields.get("request_id") is not None:
            metadata["meterline.request_id"] = str(self.fields["request_id"])
        fields.update(latency_ms=self.elapsed_ms, metadata=metadata)
        return (self.org_id, self.user_id, self.model, 0, 0), fields

    def _check_recorded(self) -> None:
        if self.request_id is None:
            raise NotRecordedError(
                f"measure({self.org_id!r}, {self.user_id!r}, {self.model!r}) ended without m.record(...): "
                "call m.record(response) after the provider call"
            )


class Measurement(_Measurement):
    """The sync form, from `Meter.measure`."""

    def __init__(self, emit: Callable[..., str], org_id: str, user_id: str, model: str,
                 fields: dict[str, Any], record_failures: bool):
        super().__init__(org_id, user_id, model, fields, record_failures)
        self._emit = emit

    def __enter__(self) -> Measurement:
        self.started = time.perf_counter()
        return self

    def record(self, response: Any = None, *, input_tokens: int | None = None, output_tokens: int | None = None,
               cached_input_tokens: int = 0) -> str:
        """Emit the call's usage, from a provider `response` or explicit counts; return the request id."""
        args, fields = self._usage_call(response, input_tokens, output_tokens, cached_input_tokens)
        self.request_id = self._emit(*args, **fields)
        return self.request_id

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if error is None:
            self._check_recorded()
        elif self.request_id is None and self.record_failures:
            args, fields = self._failure_call(error)
            self.request_id = self._emit(*args, **fields)


class AsyncMeasurement(_Measurement):
    """The async form, from `AsyncMeter.measure`: ``async with`` and ``await m.record(response)``."""

    def __init__(self, emit: Callable[..., Awaitable[str]], org_id: str, user_id: str, model: str,
                 fields: dict[str, Any], record_failures: bool):
        super().__init__(org_id, user_id, model, fields, record_failures)
        self._emit = emit

    async def __aenter__(self) -> AsyncMeasurement:
        self.started = time.perf_counter()
        return self

    async def record(self, response: Any = None, *, input_tokens: int | None = None,
                     output_tokens: int | None = None, cached_input_tokens: int = 0) -> str:
        """Emit the call's usage, from a provider `response` or explicit counts; return the request id."""
        args, fields = self._usage_call(response, input_tokens, output_tokens, cached_input_tokens)
        self.request_id = await self._emit(*args, **fields)
        return self.request_id

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if error is None:
            self._check_recorded()
        elif self.request_id is None and self.record_failures:
            args, fields = self._failure_call(error)
            self.request_id = await self._emit(*args, **fields)

"""measure(): latency around the call, nothing recorded for a failed call unless asked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from meterline.producers.measure import OUTCOME_KEY, AsyncMeasurement, Measurement
from meterline.producers.exceptions import NotRecordedError

RESPONSE = {"model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 4,
                                         "prompt_tokens_details": {"cached_tokens": 6}}}


class FakeEmit:
    """Stands in for Meter.emit: keeps the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **fields: Any) -> str:
        self.calls.append((args, fields))
        return f"req-{len(self.calls)}"

    async def async_call(self, *args: Any, **fields: Any) -> str:
        return self(*args, **fields)


def measure(emit: FakeEmit, record_failures: bool = False, **fields: Any) -> Measurement:
    return Measurement(emit, "acme", "u-1", "gpt-4o", fields, record_failures)


def test_record_emits_counts_and_the_latency_of_the_call() -> None:
    emit = FakeEmit()
    with measure(emit, action="chat") as m:
        time.sleep(0.05)
        request_id = m.record(RESPONSE)
    ((args, fields),) = emit.calls
    assert request_id == "req-1" and args == ("acme", "u-1", "gpt-4o", 10, 4)
    assert fields["cached_input_tokens"] == 6 and fields["action"] == "chat"
    assert 50 <= fields["latency_ms"] < 1000


def test_a_failed_call_records_nothing_and_reraises() -> None:
    emit = FakeEmit()
    with pytest.raises(TimeoutError), measure(emit):
        raise TimeoutError("provider timed out")
    assert emit.calls == []


def test_a_failed_call_records_a_zero_usage_event_when_configured() -> None:
    emit = FakeEmit()
    with pytest.raises(TimeoutError), measure(emit, record_failures=True, action="analysis", cost_usd=1):
        raise TimeoutError
    ((args, fields),) = emit.calls
    assert args[3:] == (0, 0)
    assert "action" not in fields and "cost_usd" not in fields  # a failure must cost no credits
    assert fields["metadata"] == {OUTCOME_KEY: "error", "meterline.error": "TimeoutError",
                                  "meterline.action": "analysis"}


def test_forgetting_record_is_an_error_not_a_silent_loss() -> None:
    with pytest.raises(NotRecordedError):
        with measure(FakeEmit()):
            pass


def test_explicit_counts_instead_of_a_response() -> None:
    emit = FakeEmit()
    with measure(emit) as m:
        m.record(input_tokens=3, output_tokens=1)
    assert emit.calls[0][0][3:] == (3, 1)


def test_async_form() -> None:
    emit = FakeEmit()

    async def run() -> None:
        async with AsyncMeasurement(emit.async_call, "acme", "u-1", "gpt-4o", {}, False) as m:
            await asyncio.sleep(0.02)
            await m.record(RESPONSE)
        with pytest.raises(ValueError):
            async with AsyncMeasurement(emit.async_call, "acme", "u-1", "gpt-4o", {}, False):
                raise ValueError

    asyncio.run(run())
    assert len(emit.calls) == 1 and emit.calls[0][1]["latency_ms"] >= 20


def test_a_failure_event_does_not_take_the_request_id_the_retry_will_reuse() -> None:
    emit = FakeEmit()
    with pytest.raises(TimeoutError), measure(emit, record_failures=True, request_id="call-7"):
        raise TimeoutError
    ((_args, fields),) = emit.calls
    assert "request_id" not in fields  # a fresh id, so the retry with "call-7" is billed
    assert fields["metadata"]["meterline.request_id"] == "call-7"

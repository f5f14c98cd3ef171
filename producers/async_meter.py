"""AsyncMeter: the same SDK for asyncio code, never blocking the event loop.

    async with AsyncMeter() as meter:
        await meter.emit("acme", "user-42", "gpt-4o", 1200, 340)
        async with meter.measure("acme", "user-42", "gpt-4o") as m:
            m_response = await client.chat.completions.create(...)
            await m.record(m_response)

Queueing an event is a non-blocking call into librdkafka; the SDK's poll thread serves the
delivery reports and hands results back with ``loop.call_soon_threadsafe`` (the pattern of
confluent-kafka's asyncio example). Disk work (the spool while Kafka is away) and waiting
(flush, close) run in a worker thread. ``emit(..., wait=True)`` awaits the event's outcome:
"delivered", or "spooled" when Kafka is unreachable; DeliveryError if it was lost.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError

from meterline.producers.base import MeterBase
from meterline.producers.corrections import build_correction
from meterline.producers.delivery import Done
from meterline.producers.engine import QUEUE_FULL_WAIT
from meterline.producers.encoder import EventEncoder
from meterline.producers.events import emit_arguments
from meterline.producers.exceptions import DeliveryError
from meterline.producers.measure import AsyncMeasurement
from meterline.producers.stats import MeterStats, Status
from meterline.schemas import UsageEvent


def _settle(future: asyncio.Future[Status], status: Status, error: KafkaError | None, value: bytes) -> None:
    if future.done():
        return
    if status == "lost":
        future.set_exception(DeliveryError([error] if error is not None else [], [value]))
    else:
        future.set_result(status)


if TYPE_CHECKING:
    import httpx

    from meterline.producers.reservations import AsyncReservation


class AsyncMeter(MeterBase):
    """Emit usage events from asyncio code. Arguments as for `Meter` (settings, producer_config,
    on_delivery, spool, record_failures, source, **overrides of SdkSettings fields)."""

    _http: httpx.AsyncClient | None = None  # reserve()'s connections, opened on first use

    @emit_arguments
    async def emit(self, *args: Any, wait: bool = False, **options: Any) -> str:
        """Validate and queue one event; return its request id. Arguments as for `Meter.emit`.

        A retry must reuse the first attempt's `request_id`. With ``wait=True``, return only once
        the event is acknowledged by Kafka or durably spooled.

        Raises:
            InvalidEventError: naming every bad field and rule; nothing was sent.
            SpoolFullError: Kafka is unreachable and the spool is full; the event was not accepted.
            DeliveryError: (``wait=True`` only) the event was neither delivered nor spooled.
        """
        request, key, value = self._encode(*args, **options)
        await self._submit(key, value, wait)
        return request

    async def send(self, event: UsageEvent, *, wait: bool = False) -> str:
        """Queue an already-built event (a retry keeps its request id); see `emit` for `wait`."""
        request, key, value = EventEncoder.encode_event(event)
        await self._submit(key, value, wait)
        return request

    async def void(self, org_id: str, user_id: str, request_id: str, *, reason: str, correction_id: str | None = None,
                   wait: bool = False) -> str:
        """As `Meter.void`; see `emit` for `wait`."""
        correction = build_correction(org_id, user_id, request_id, reason=reason, correction_id=correction_id)
        await self._submit(correction.user_key.encode(), correction.to_json(), wait)
        return correction.id

    async def amend(self, org_id: str, user_id: str, request_id: str, *, reason: str, correction_id: str | None = None,
                    wait: bool = False, **amended: Any) -> str:
        """As `Meter.amend`; see `emit` for `wait`."""
        correction = build_correction(org_id, user_id, request_id, reason=reason, correction_id=correction_id,
                                      amended=amended)
        await self._submit(correction.user_key.encode(), correction.to_json(), wait)
        return correction.id

    async def _submit(self, key: bytes, value: bytes, wait: bool) -> None:
        engine = self._engine
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Status] | None = None
        done: Done | None = None
        if wait:
            waiter: asyncio.Future[Status] = loop.create_future()
            future = waiter

            def done(status: Status, error: KafkaError | None) -> None:
                loop.call_soon_threadsafe(_settle, waiter, status, error, value)

        if engine.spooling:  # file appends (and fsync) go to a worker thread
            await asyncio.to_thread(engine.submit, key, value, done=done)
        else:
            deadline = loop.time() + QUEUE_FULL_WAIT
            while not engine.submit(key, value, block=False, done=done):
                if loop.time() > deadline:  # still full: let the blocking path spool it
                    await asyncio.to_thread(engine.submit, key, value, done=done)
                    break
                await asyncio.sleep(0.005)  # the poll thread drains the queue meanwhile
        if future is not None:
            await future

    async def record_response(
        self, org_id: str, user_id: str, response: Any, *, model: str | None = None, **fields: Any
    ) -> str:
        """Emit the usage of an OpenAI or Anthropic response (object or dict); see `Meter.record_response`."""
        args, fields = self._response_fields(response, model, fields)
        return await self.emit(org_id, user_id, *args, **fields)

    def measure(
        self, org_id: str, user_id: str, model: str, *, record_failures: bool | None = None, **fields: Any
    ) -> AsyncMeasurement:
        """Time a provider call: ``async with meter.measure(...) as m: await m.record(await call())``."""
        failures = self.record_failures if record_failures is None else record_failures
        return AsyncMeasurement(self.emit, org_id, user_id, model, fields, failures)

    def reserve(self, org_id: str, user_id: str, model: str, estimate: Decimal | int | str | None = None, *,
                input_tokens: int | None = None, output_tokens: int | None = None, ttl_seconds: float | None = None,
                reservation_id: str | None = None) -> AsyncReservation:
        """``async with meter.reserve(...) as r``, or ``r = await meter.reserve(...)``; see `Meter.reserve`."""
        import httpx  # here, not at import: ~50 ms of every command's start, for callers that never reserve

        from meterline.producers.reservations import AsyncReservation, Endpoint, reservation_body

        body = reservation_body(model, estimate, input_tokens, output_tokens, ttl_seconds, reservation_id)
        if self._http is None:
            self._endpoint, self._http = Endpoint(self.settings), httpx.AsyncClient()
        return AsyncReservation(self._endpoint, self._http, self, org_id, user_id, body)

    async def flush(self, timeout: float = 30.0) -> MeterStats:
        """Wait (in a worker thread) until every event is in Kafka, spool included; see `Meter.flush`."""
        return await asyncio.to_thread(self._engine.flush, timeout)

    async def close(self, timeout: float = 30.0) -> MeterStats:
        """Flush, spool what Kafka has not acknowledged, stop the SDK's thread."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        return await asyncio.to_thread(self._engine.close, timeout)

    async def __aenter__(self) -> AsyncMeter:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

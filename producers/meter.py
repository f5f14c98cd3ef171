"""Meter: emit usage events to Kafka from synchronous code.

    from meterline.producers import Meter

    meter = Meter()  # METERLINE_ environment; or Meter(bootstrap="kafka:9092", usage_topic=...)
    meter.emit("acme", "user-42", "gpt-4o", input_tokens=1200, output_tokens=340)

The request id is what makes a duplicate harmless: the processors count each (org, request id)
once. `emit` generates a time-ordered one when you give none; a retry of the same AI call must
pass the id of its first attempt (`request_id=`), or re-`send` the event from `build`.
Producer idempotence only covers librdkafka's own retries within one producer session.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterline.producers.base import MeterBase
from meterline.producers.corrections import build_correction
from meterline.producers.encoder import EventEncoder
from meterline.producers.events import build_event, emit_arguments
from meterline.producers.exceptions import DeliveryError
from meterline.producers.measure import Measurement
from meterline.producers.request_ids import new_request_id
from meterline.producers.stats import MeterStats
from meterline.schemas import UsageEvent
from meterline.schemas.correction import CorrectionEvent

__all__ = ["DeliveryError", "Meter", "build_event", "new_request_id"]


if TYPE_CHECKING:
    import httpx

    from meterline.producers.reservations import Reservation


class Meter(MeterBase):
    """Emit usage events to Kafka; one line to start: ``meter = Meter()``.

    Delivery is asynchronous: `emit` validates, queues and returns the request id. Each event
    then reaches Kafka or, while Kafka is unreachable, the local outage spool, replayed in
    order when Kafka is back (also by the next process on the same spool directory).
    `stats()` and `on_delivery` show what happened; nothing is dropped silently.

    Args:
        settings: broker, topic and spool settings (SdkSettings); default: read from METERLINE_* variables.
        producer_config: extra librdkafka settings, applied over ours.
        on_delivery: called with a DeliveryReport per event outcome, on the SDK's poll thread.
        spool: False disables the outage spool (failed events then raise DeliveryError at flush).
        record_failures: `measure()` records a zero-usage event for a failed call
            (default: METERLINE_RECORD_FAILURES, false).
        source: the CloudEvents `source` (default ``meterline-sdk://<hostname>``).
        **overrides: any SdkSettings field (a server setting or a typo is a ConfigurationError), e.g. ``bootstrap="kafka:9092"``, ``usage_topic=...``,
            ``spool_dir=...`` (METERLINE_SPOOL_DIR, default ~/.meterline/spool),
            ``spool_max_bytes`` (1 GiB), ``spool_fsync`` ("always" | "interval" | "never",
            default "interval"), ``spool_fsync_interval`` (1.0 s), ``delivery_timeout_ms``
            (30000: unacknowledged this long, an event moves to the spool).
    """

    _http: httpx.Client | None = None  # reserve()'s connections, opened on first use

    @emit_arguments
    def emit(self, *args: Any, **options: Any) -> str:
        """Validate and queue one event; return its request id.

        Arguments: those of `meterline.producers.build_event` (org_id, user_id, model,
        input_tokens, output_tokens, then by keyword latency_ms, request_id, action, cost_usd,
        cached_input_tokens, metadata, timestamp). A retry must reuse the first `request_id`.

        Raises:
            InvalidEventError: naming every bad field and rule; nothing was sent.
            SpoolFullError: Kafka is unreachable and the spool is full; the event was not accepted.
        """
        request, key, value = self._encode(*args, **options)
        self._queue(key, value)
        return request

    def send(self, event: UsageEvent) -> str:
        """Queue an already-built event (e.g. a retry, which keeps the first request id)."""
        request, key, value = EventEncoder.encode_event(event)
        self._engine.submit(key, value)
        return request

    def void(self, org_id: str, user_id: str, request_id: str, *, reason: str, correction_id: str | None = None) -> str:
        """Take one event already sent out of the balance and the warehouse; return the correction id.

        Applied once per correction id, in order with the user's usage; the voided version stays
        in the warehouse's audit trail (`usage_corrections`) with `reason`. A retry must reuse the id.
        Raises InvalidEventError naming every bad field.
        """
        return self._correct(build_correction(org_id, user_id, request_id, reason=reason, correction_id=correction_id))

    def amend(self, org_id: str, user_id: str, request_id: str, *, reason: str, correction_id: str | None = None,
              **amended: Any) -> str:
        """Replace usage fields of one event already sent (model, action, input_tokens, output_tokens,
        cached_input_tokens, cost_usd); the balance changes by the difference. As `void` otherwise."""
        return self._correct(build_correction(org_id, user_id, request_id, reason=reason, correction_id=correction_id,
                                              amended=amended))

    def _correct(self, correction: CorrectionEvent) -> str:
        self._engine.submit(correction.user_key.encode(), correction.to_json())
        return correction.id

    def record_response(
        self, org_id: str, user_id: str, response: Any, *, model: str | None = None, **fields: Any
    ) -> str:
        """Emit the usage of an OpenAI or Anthropic response (object or dict); return the request id.

        Token counts map as documented in `meterline.producers.responses`; the model defaults to
        the response's `model`. `fields` are emit's keywords (latency_ms, request_id, action, ...).
        """
        args, fields = self._response_fields(response, model, fields)
        return self.emit(org_id, user_id, *args, **fields)

    def measure(
        self, org_id: str, user_id: str, model: str, *, record_failures: bool | None = None, **fields: Any
    ) -> Measurement:
        """Time a provider call: ``with meter.measure(org, user, model) as m: m.record(call())``.

        `fields` are emit's keywords (request_id, action, metadata, ...). See
        `meterline.producers.measure` for what a failed call records.
        """
        failures = self.record_failures if record_failures is None else record_failures
        return Measurement(self.emit, org_id, user_id, model, fields, failures)

    def reserve(self, org_id: str, user_id: str, model: str, estimate: Decimal | int | str | None = None, *,
                input_tokens: int | None = None, output_tokens: int | None = None, ttl_seconds: float | None = None,
                reservation_id: str | None = None) -> Reservation:
        """Ask the user's worker to hold `estimate` credits (or the credits of the estimated tokens) for one call.

        Returns the decision at once: ``allowed``, ``model`` (maybe a cheaper one), ``reason``,
        ``retry_after``. Use it as a context manager and `commit` the actual usage (see
        `meterline.producers.reservations`). Raises ReservationUnusable for a bad argument or key.
        """
        import httpx  # here, not at import: ~50 ms of every command's start, for callers that never reserve

        from meterline.producers.reservations import Reservation, Endpoint, reservation_body

        body = reservation_body(model, estimate, input_tokens, output_tokens, ttl_seconds, reservation_id)
        if self._http is None:
            self._endpoint, self._http = Endpoint(self.settings), httpx.Client()
        return Reservation(self._endpoint, self._http, self, org_id, user_id, body)

    def flush(self, timeout: float = 30.0) -> MeterStats:
        """Wait up to `timeout` s until every event so far is acknowledged by Kafka, spool included.

        Events that cannot reach Kafka in time stay safe in the spool (see the returned
        `spool_pending` and `in_flight`). Raises DeliveryError only for events that could be
        neither delivered nor spooled.
        """
        return self._engine.flush(timeout)

    def close(self, timeout: float = 30.0) -> MeterStats:
        """Flush, move anything still unacknowledged to the spool, and stop the SDK's thread."""
        if self._http is not None:
            self._http.close()
            self._http = None
        return self._engine.close(timeout)

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

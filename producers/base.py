"""What Meter and AsyncMeter share: configuration, validation, stats. No I/O here."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from meterline.producers.delivery import DeliveryCallback
from meterline.producers.engine import Engine
from meterline.producers.encoder import EventEncoder
from meterline.producers.events import build_event, emit_arguments
from meterline.producers.responses import usage_from_response
from meterline.producers.stats import MeterStats
from meterline.schemas import FieldProblem, InvalidEventError, UsageEvent
from meterline.settings import SdkSettings, load_sdk_settings


class MeterBase:
    """Configuration shared by both meters; see `Meter` for the arguments."""

    def __init__(
        self,
        settings: SdkSettings | None = None,
        producer_config: dict[str, Any] | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        spool: bool = True,
        record_failures: bool | None = None,
        source: str | None = None,
        **overrides: Any,
    ):
        self.settings = load_sdk_settings(settings, **overrides)
        self.record_failures = self.settings.record_failures if record_failures is None else record_failures
        self._encoder = EventEncoder(source)
        self._engine = Engine(self.settings, config=producer_config, on_delivery=on_delivery, spool=spool)
        # emit's two steps, bound once: it is called for every AI call of the service.
        self._encode = self._encoder.encode
        self._queue = self._engine.submit

    @property
    def producer(self) -> Producer:
        """The underlying confluent-kafka producer (created on first use)."""
        return self._engine.producer

    @property
    def source(self) -> str:
        return self._encoder.source

    def stats(self) -> MeterStats:
        """Counts of sent, delivered, failed, spooled, replayed and lost events (see MeterStats)."""
        return self._engine.stats()

    @emit_arguments
    def build(self, *args: Any, **options: Any) -> UsageEvent:
        """Validate into an event without sending it; keep it to `send` again on retry (same id).

        Raises InvalidEventError naming every bad field. Arguments as for `emit`.
        """
        return build_event(*args, source=self._encoder.source, **options)

    @staticmethod
    def _response_fields(response: Any, model: str | None, fields: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """emit's arguments for a provider response: counts and model from the response."""
        usage = usage_from_response(response)
        chosen = model or usage.model
        if not chosen:
            raise InvalidEventError([FieldProblem("response.model", "is missing: pass model=...")])
        fields = {**fields, "cached_input_tokens": usage.cached_input_tokens}
        if usage.metadata:
            fields["metadata"] = {**(fields.get("metadata") or {}), **usage.metadata}
        return (chosen, usage.input_tokens, usage.output_tokens), fields

"""The SDK services use to emit usage events."""

from meterline.producers.meter import Meter, build_event

__all__ = ["Meter", "build_event"]

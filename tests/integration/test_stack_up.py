"""`meterline stack up` on a fresh data directory returns a broker that is ready for producers."""

from __future__ import annotations

import logging
from pathlib import Path

from confluent_kafka import Producer

from meterline.producers.engine import producer_config
from meterline.settings import Settings
from meterline.stack import stack_down, stack_up
from tests.conftest import free_port


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _coordinator_lines(settings: Settings) -> list[str]:
    """librdkafka's log lines about producer ids, from a new idempotent producer's first event."""
    recorder = _Recorder()
    librdkafka = logging.getLogger(f"test-stack-up.{settings.kafka_port}")
    librdkafka.addHandler(recorder)
    librdkafka.setLevel(logging.DEBUG)
    failures: list[object] = []
    producer = Producer({**producer_config(settings), "logger": librdkafka,
                         "on_delivery": lambda error, _message: failures.append(error) if error else None})
    producer.produce(settings.usage_topic, b"{}", b"acme/u-1")
    assert producer.flush(30) == 0 and not failures
    producer.poll(0)  # serve the log queue
    return [line for line in recorder.lines if "PID" in line or "Coordinator" in line]


def test_a_fresh_or_restarted_broker_gives_producer_ids_at_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_port=free_port(), kafka_controller_port=free_port())
    stack_up(settings)
    try:
        assert _coordinator_lines(settings) == []
        stack_down(settings)
        stack_up(settings)  # same data: a restart
        assert _coordinator_lines(settings) == []
    finally:
        stack_down(settings)

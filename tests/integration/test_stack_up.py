"""`meterline stack up` on a fresh data directory returns a broker that is ready for producers."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from confluent_kafka import Producer

from meterline.exceptions import ConfigurationError, MeterlineError
from meterline.producers.engine import producer_config
from meterline.settings import Settings
from meterline.stack import stack_down, stack_up
from tests.conftest import free_port


def _coordinator_lines(settings: Settings, caplog: pytest.LogCaptureFixture) -> list[str]:
    """librdkafka's log lines about producer ids, from a new idempotent producer's first event."""
    librdkafka = logging.getLogger(f"test-stack-up.{settings.kafka_port}")
    failures: list[object] = []
    with caplog.at_level(logging.DEBUG, logger=librdkafka.name):
        producer = Producer({**producer_config(settings), "logger": librdkafka,
                             "on_delivery": lambda error, _message: failures.append(error) if error else None})
        producer.produce(settings.usage_topic, b"{}", b"acme/u-1")
        assert producer.flush(30) == 0 and not failures
        producer.poll(0)  # serve the log queue
    lines = [record.getMessage() for record in caplog.records if record.name == librdkafka.name]
    return [line for line in lines if "PID" in line or "Coordinator" in line]


def test_a_fresh_or_restarted_broker_gives_producer_ids_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path / "home", kafka_port=free_port(), kafka_controller_port=free_port())
    stack_up(settings)
    try:
        assert _coordinator_lines(settings, caplog) == []
        stack_down(settings)
        stack_up(settings)  # same data: a restart
        assert _coordinator_lines(settings, caplog) == []
    finally:
        stack_down(settings)


def test_the_broker_gets_none_of_our_settings_and_its_data_is_private(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINE_API_SECRET", "s3cret-for-this-test")
    monkeypatch.setenv("METERLINE_CLICKHOUSE_URL", "http://user:hunter2@db:8123")
    settings = Settings(home=tmp_path / "home", kafka_port=free_port(), kafka_controller_port=free_port())
    status = stack_up(settings)
    try:
        environ = Path(f"/proc/{status.pid}/environ").read_bytes()
        assert b"METERLINE_" not in environ and b"s3cret" not in environ and b"hunter2" not in environ
        for directory in (settings.home, settings.kafka_data_dir):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    finally:
        stack_down(settings)


def test_ports_handed_to_tests_and_benchmarks_are_never_the_same_twice() -> None:
    # Two ports asked for in a row were both free, and once in CI they were the same one: the broker's
    # storage format then failed ("two listeners on the same port").
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_broker_given_one_port_for_both_listeners_is_refused_before_java_runs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_port=free_port(), bootstrap=None)
    settings = settings.model_copy(update={"kafka_controller_port": settings.kafka_port})
    with pytest.raises(ConfigurationError, match="kafka_port and kafka_controller_port are both"):
        stack_up(settings)
    assert not (settings.kafka_data_dir / "logs").exists()


def test_a_broker_whose_storage_cannot_be_formatted_says_why(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_host="no such host!", kafka_port=free_port(),
                        kafka_controller_port=free_port())
    with pytest.raises(MeterlineError, match="Kafka could not format its storage in .*: Failed to parse host name") as raised:
        stack_up(settings)
    assert "Traceback" not in str(raised.value) and "\tat " not in str(raised.value)

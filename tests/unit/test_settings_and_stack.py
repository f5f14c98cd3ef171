import pytest

from meterline.exceptions import ConfigurationError
from meterline.settings import Settings
from meterline.stack import broker
from meterline.stack import stack_up


def test_environment_configures_ports_and_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("METERLINE_KAFKA_PORT", "19999")
    monkeypatch.setenv("METERLINE_CLICKHOUSE_URL", "http://u:hunter2@db:8123")
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:19999"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_missing_java_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn on PATH
    settings = Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", kafka_port=1, kafka_controller_port=2)
    with pytest.raises(ConfigurationError, match="`java` was not found"):
        stack_up(settings, wait_seconds=1)


def test_missing_maven_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = Settings(cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigurationError, match="`mvn` was not found"):
        broker.fetch_jars(settings)


def test_broker_properties_use_the_configured_ports_and_directory(tmp_path):
    settings = Settings(home=tmp_path, kafka_port=19092, kafka_controller_port=19093)
    properties = broker._server_properties(settings)
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in properties
    assert f"log.dirs={tmp_path / 'kafka' / 'logs'}" in properties

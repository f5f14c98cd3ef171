"""No Docker engine runs here, so the compose file is checked by parsing it."""

from pathlib import Path

import yaml

from meterline.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_runs_kafka_clickhouse_and_our_services():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["worker"]["command"] == ["worker"]
    assert services["sink"]["command"] == ["sink"]


def test_compose_uses_only_settings_that_exist():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    known = {f"METERLINE_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "sink"):
        variables = set(services[name]["environment"])
        assert variables <= known, variables - known
        assert "METERLINE_BOOTSTRAP" in variables and "METERLINE_CLICKHOUSE_URL" in variables


def test_the_image_installs_the_server_side() -> None:
    """The compose file runs the worker and the sink from this image: the SDK alone lacks both."""
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert "pip install --no-cache-dir '.[server]'" in dockerfile

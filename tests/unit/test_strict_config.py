"""Strict configuration: a misspelt option or variable is an error naming the nearest real one,
the SDK takes only its own settings, and `--check-config` validates without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.cli import main
from meterline.exceptions import ConfigurationError
from meterline.producers import Meter
from meterline.settings import SdkSettings, Settings, load_sdk_settings, load_settings


@pytest.fixture(autouse=True)
def _only_our_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [name for name in __import__("os").environ if name.upper().startswith("METERLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("METERLINE_HOME", str(tmp_path / "home"))


def test_a_misspelt_sdk_option_names_the_nearest_and_a_server_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown SDK option 'bootstrp'; did you mean 'bootstrap'"):
        Meter(bootstrp="kafka:9092", spool_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="'worker_port' is a server setting; the SDK does not read it"):
        Meter(worker_port=7000, spool_dir=tmp_path)
    assert load_sdk_settings(bootstrap="kafka:9092").kafka_bootstrap == "kafka:9092"


def test_the_sdk_settings_hold_the_sdks_fields_only() -> None:
    sdk = set(SdkSettings.model_fields)
    assert {"bootstrap", "usage_topic", "spool_dir", "delivery_timeout_ms"} <= sdk
    assert not sdk & {"worker_port", "api_secret", "clickhouse_url", "sink_group", "kafka_heap"}
    assert sdk < set(Settings.model_fields)  # the server reads the SDK's part too (topic, broker)


def test_a_misspelt_variable_names_the_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINE_BOOTSTRP", "kafka:9092")
    with pytest.raises(ConfigurationError, match="'METERLINE_BOOTSTRP'; did you mean 'METERLINE_BOOTSTRAP'"):
        load_settings()
    with pytest.raises(ConfigurationError, match="METERLINE_BOOTSTRP"):
        Meter()


def test_variables_are_read_in_any_case_and_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("meterline_kafka_port", "19999")
    assert load_settings().kafka_bootstrap == "127.0.0.1:19999"
    monkeypatch.setenv("METERLINE_SPOOL_FSYNC", "sometimes")
    with pytest.raises(ConfigurationError, match="METERLINE_SPOOL_FSYNC: .*'always', 'interval' or 'never'"):
        load_settings()


def test_a_bad_secret_is_named_but_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(api_secret=12345)  # not text
    assert "api_secret" in str(raised.value) and "12345" not in str(raised.value)


def test_check_config_validates_and_starts_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    import meterline.processors.worker as worker

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("--check-config started the worker")

    monkeypatch.setattr(worker, "run_worker", must_not_run)
    monkeypatch.setattr(worker, "prepare_topics", must_not_run)
    assert main(["--check-config", "worker"]) == 0
    assert "configuration of `meterline worker` is valid" in capsys.readouterr().out
    bad = tmp_path / "prices.yaml"
    bad.write_text("version: 1\nmodels:\n  x: {input_per_1k: -1, output_per_1k: 0}\n")
    monkeypatch.setenv("METERLINE_PRICES", str(bad))
    assert main(["--check-config", "worker"]) == 2
    assert "models.x.input_per_1k" in capsys.readouterr().err
    monkeypatch.delenv("METERLINE_PRICES")
    monkeypatch.setenv("METERLINE_DEFAULT_PLAN", "gold")
    assert main(["--check-config", "worker"]) == 2
    assert "METERLINE_DEFAULT_PLAN: unknown plan 'gold'" in capsys.readouterr().err
    monkeypatch.delenv("METERLINE_DEFAULT_PLAN")
    monkeypatch.setenv("METERLINE_WORKER_PROT", "7000")
    assert main(["--check-config", "sink"]) == 2
    assert "did you mean 'METERLINE_WORKER_PORT'" in capsys.readouterr().err


def test_a_worker_with_a_broken_price_book_stops_before_it_wires_anything(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    import meterline.processors.worker as worker

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the worker touched Kafka with a broken configuration")

    monkeypatch.setattr(worker, "prepare_topics", must_not_run)
    monkeypatch.setenv("METERLINE_PLANS", str(tmp_path / "missing.yaml"))
    assert main(["worker"]) == 2


def test_worker_loglevel_is_the_workers_setting_and_a_bad_one_starts_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import meterline.processors.worker as worker

    ran: list[Settings] = []
    monkeypatch.setattr(worker, "prepare_topics", lambda _settings: None)
    monkeypatch.setattr(worker, "run_worker", ran.append)
    assert main(["worker", "--loglevel", "info"]) == 0
    assert ran[-1].worker_log_level == "info"  # and so in every worker it spawns: it is one of WORKER_SETTINGS
    assert "worker_log_level" in worker.WORKER_SETTINGS
    monkeypatch.setenv("METERLINE_WORKER_LOG_LEVEL", "debug")
    assert main(["worker"]) == 0 and ran[-1].worker_log_level == "debug"
    for bad in ("loud", "crit"):  # "crit": Faust takes it, and its logging set-up then fails
        assert main(["worker", "--loglevel", bad]) == 2
        assert "'error', 'warn', 'info' or 'debug'" in capsys.readouterr().err
    assert len(ran) == 2

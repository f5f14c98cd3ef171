"""`meterline emit` against the real broker: flags, JSON, and a JSON-lines file with rejects."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from meterline.cli import main
from meterline.settings import Settings
from meterline.stack import ensure_topics
from tests.integration.test_producer_sdk import consume_all


@pytest.fixture
def cli_settings(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = make_settings()
    ensure_topics(settings)
    for name, value in {"BOOTSTRAP": settings.kafka_bootstrap, "USAGE_TOPIC": settings.usage_topic,
                        "HOME": str(settings.home)}.items():
        monkeypatch.setenv(f"METERLINE_{name}", value)
    return settings


def test_one_event_from_flags_and_one_from_json(cli_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emit", "--org", "acme", "--user", "u-1", "--model", "gpt-4o", "--input-tokens", "12",
                 "--output-tokens", "3", "--metadata", "feature=chat", "--request-id", "cli-1"]) == 0
    event = {"org_id": "acme", "user_id": "u-2", "model": "gpt-4o", "input_tokens": 5, "output_tokens": 1,
             "timestamp": "2025-01-31T12:00:00+00:00", "cost_usd": "0.002"}
    assert main(["emit", "--json", json.dumps(event)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == "cli-1"
    events = {e["id"]: e["data"] for e in consume_all(cli_settings, 2)}
    assert events["cli-1"]["metadata"] == {"feature": "chat"} and events["cli-1"]["input_tokens"] == 12
    assert events[printed[1]]["cost_usd"] == "0.002"


def test_a_bad_single_event_is_rejected_with_the_field(cli_settings: Settings,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emit", "--json", '{"org_id": "acme", "user_id": "u", "model": "m", "input_tokens": -4, '
                                   '"output_tokens": 1}']) == 1
    assert "data.input_tokens" in capsys.readouterr().err


def test_file_with_rejects_sends_the_good_lines_and_lists_the_bad(cli_settings: Settings, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = {"org_id": "acme", "user_id": "u-1", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 2}
    lines = [json.dumps({**good, "request_id": f"ok-{i}"}) for i in range(200)]
    lines[10] = "{not json"
    lines[20] = json.dumps({**good, "input_tokens": -1})
    lines[30] = json.dumps({**good, "timestamp": "2025-01-01T00:00:00"})
    lines[40] = json.dumps({**good, "colour": "red"})
    lines.insert(50, "")  # blank lines are skipped, not rejected
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    assert main(["emit", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    for line_number, reason in [(11, "not JSON"), (21, "data.input_tokens"), (31, "timezone"), (41, "colour")]:
        assert str(line_number) in err and reason in err
    assert "196 accepted" in err
    ids = {event["id"] for event in consume_all(cli_settings, 196)}
    assert ids == {f"ok-{i}" for i in range(200)} - {"ok-10", "ok-20", "ok-30", "ok-40"}


def test_a_line_that_breaks_the_encoder_is_one_reject_and_every_later_line_is_sent(
        cli_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"org_id": "acme", "user_id": "u-1", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 2}
    lines = [json.dumps({**good, "request_id": f"ok-{i}"}) for i in range(20)]
    lines[5] = json.dumps({**good, "timestamp": "0001-01-01T00:00:00+14:00"})  # an OverflowError once
    lines[6] = json.dumps({**good, "request_id": "bell\a"})
    lines[7] = json.dumps({**good, "user_id": "   "})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    assert main(["emit", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "17 accepted" in err
    for line_number, reason in [(6, "time"), (7, "control character"), (8, "whitespace")]:
        assert f"line {line_number}: " in err and reason in err
    ids = {event["id"] for event in consume_all(cli_settings, 17)}
    assert ids == {f"ok-{i}" for i in range(20)} - {"ok-5", "ok-6", "ok-7"}


def test_a_single_event_at_an_instant_outside_utc_is_a_reject_naming_time(
        cli_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emit", "--org", "acme", "--user", "u-1", "--model", "gpt-4o", "--input-tokens", "1",
                 "--output-tokens", "1", "--timestamp", "0001-01-01T00:00:00+14:00"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "time:" in err


def test_an_unknown_model_is_named_up_front_and_strict_refuses_it(
        cli_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--org", "acme", "--user", "u-1", "--input-tokens", "1", "--output-tokens", "1"]
    assert main(["emit", *flags, "--model", "gpt-4o-mni", "--request-id", "warned"]) == 0
    err = capsys.readouterr().err
    assert "'gpt-4o-mni' is not in the price book" in err and "gpt-4o-mini" in err  # the nearest known name
    assert main(["emit", "--strict", *flags, "--model", "gpt-4o-mni", "--request-id", "refused"]) == 1
    assert "not in the price book" in capsys.readouterr().err
    assert main(["emit", "--strict", *flags, "--model", "gpt-4o-mini", "--request-id", "known"]) == 0
    # Everything sent is in the topic once the last one is; the refused one never is.
    assert {event["id"] for event in consume_all(cli_settings, 2)} == {"warned", "known"}


def test_while_kafka_is_down_emit_says_so_in_words_not_librdkafka_lines(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    env = {name: value for name, value in os.environ.items() if not name.startswith("METERLINE_")}
    env.update({"METERLINE_HOME": str(tmp_path), "METERLINE_BOOTSTRAP": f"127.0.0.1:{free_port()}"})  # nobody there
    result = subprocess.run([sys.executable, "-m", "meterline.cli", "emit", "--org", "acme", "--user", "u-1", "--model",
                             "gpt-4o", "--input-tokens", "1", "--output-tokens", "1", "--timeout", "3"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3  # accepted, and waiting in the spool
    assert "rdkafka" not in result.stderr and "%3|" not in result.stderr
    assert " ".join(result.stderr.split()).count("Kafka unreachable") == 1

"""`meterline stack status` says which of broker, workers and sink run and answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from meterline.producers import Meter
from meterline.settings import Settings
from meterline.sinks import queries
from meterline.stack.status import stack_report, worker_health

from tests.integration.pipeline import make_events, running_pipeline, wait_for


def test_status_names_the_running_worker_and_sink_then_their_absence(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with running_pipeline(settings):
        assert wait_for(lambda: all(part.up for part in stack_report(settings)), timeout=60), stack_report(settings)
        broker, workers, sink = stack_report(settings)
        assert "1 in group" in workers.detail and "serving balances" in workers.detail
        assert "1 in group" in sink.detail
        health = worker_health(settings)
        assert health is not None and health["state_restored"] and health["broker_reachable"]
    # Stopped (the worker by SIGTERM, the sink by its stop event): both leave their groups.
    assert wait_for(lambda: [part.up for part in stack_report(settings)] == [True, False, False], timeout=60), \
        stack_report(settings)
    assert "not answering" in stack_report(settings)[1].detail
    assert "\x1b[" not in (settings.home / "worker.log").read_text()  # no terminal codes in a log file


def test_the_sink_logs_what_it_stored_and_its_lag_at_its_report_interval(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(sink_report_seconds=1.0)
    with caplog.at_level(logging.INFO, logger="meterline.sinks"), running_pipeline(settings) as pipeline, \
            Meter(settings) as meter:
        for event in make_events(meter, "org-sink-log", 300, users=5, seed=3):
            meter.send(event)
        meter.flush()
        assert wait_for(lambda: pipeline.warehouse.query(queries.count_distinct_events("org-sink-log"))[0][0] == 300,
                        timeout=60)
        time.sleep(2.5)  # two report intervals
    lines = [record.getMessage() for record in caplog.records if record.name == "meterline.sinks.clickhouse_sink"]
    assert any(" rows in " in line and "records behind" in line for line in lines), lines
    assert sum(int(line.split()[1]) for line in lines if line.startswith("stored ")) >= 300
    assert len(lines) < 20  # calm: a line per interval, not per batch

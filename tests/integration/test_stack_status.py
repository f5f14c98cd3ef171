"""`meterline stack status` says which of broker, workers and sink run and answer."""

from __future__ import annotations

from collections.abc import Callable

from meterline.settings import Settings
from meterline.stack.status import stack_report, worker_health

from tests.integration.pipeline import running_pipeline, wait_for


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

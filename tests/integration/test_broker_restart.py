"""The broker restarts mid-stream: the worker and the sink lose nothing and count nothing twice."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterline.producers import Meter
from meterline.settings import Settings
from meterline.sinks import queries
from meterline.stack import stack_down, stack_up
from meterline.stack.status import worker_health
from tests.conftest import free_port
from tests.integration.pipeline import (
    balance_differences,
    balances_match,
    expected_credits,
    make_events,
    running_pipeline,
    wait_for,
)


@pytest.fixture
def own_broker(tmp_path: Path, broker_settings: Settings) -> Iterator[Settings]:
    """A broker of this test's own, to stop and start; chDB stays the session's (one per process)."""
    settings = broker_settings.model_copy(update={
        "home": tmp_path / "home", "kafka_port": free_port(), "kafka_controller_port": free_port(),
        "worker_port": free_port(), "sink_batch_seconds": 0.2,
    })
    stack_up(settings)
    yield settings
    stack_down(settings)


def test_worker_and_sink_ride_out_a_broker_restart(own_broker: Settings):
    settings, org = own_broker, "org-broker-restart"
    with running_pipeline(settings) as pipeline, Meter(settings) as meter:
        events = make_events(meter, org, 2000, users=25, seed=9)
        for event in events[:1000]:
            meter.send(event)
        meter.flush()
        assert worker_health(settings)["broker_reachable"] is True
        stack_down(settings)
        assert worker_health(settings)["broker_reachable"] is False  # /healthz says so while it is down
        stack_up(settings)
        for event in events[1000:] + random.Random(10).sample(events, 200):  # plus client retries
            meter.send(event)
        meter.flush(timeout=120)
        expected = expected_credits(events)
        assert wait_for(balances_match(pipeline, org, expected), timeout=180), balance_differences(pipeline, org, expected)
        assert wait_for(lambda: pipeline.warehouse.query(queries.count_distinct_events(org))[0][0] >= 2000, timeout=120)
        assert pipeline.warehouse.query(queries.count_distinct_events(org))[0][0] == 2000
        stored = {user: credits for _o, user, credits, _n in pipeline.warehouse.query(queries.credits_per_user(org))}
        assert stored == expected_credits(events)

"""The whole path on a real broker and real chDB: emit -> dedupe + roll-up -> ClickHouse."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from meterline.producers import Meter
from meterline.schemas import InvalidEventError
from meterline.sinks import queries
from meterline.stack import ensure_topics
from tests.integration.pipeline import (
    balance_differences,
    balances_match,
    counted,
    expected_credits,
    make_events,
    running_pipeline,
    topic_size,
    wait_for,
)


def test_duplicates_change_no_balance_and_clickhouse_holds_each_event_once(make_settings):
    settings = make_settings()
    org = "org-dedupe"
    with running_pipeline(settings) as pipeline, Meter(settings) as meter:
        distinct = make_events(meter, org, 800, users=50, seed=1)
        resent = random.Random(2).sample(distinct, 200)
        stream = distinct + resent
        random.Random(3).shuffle(stream)
        for event in stream:
            meter.send(event)
        meter.flush()
        assert len(stream) == 1000

        expected = expected_credits(distinct)
        assert wait_for(balances_match(pipeline, org, expected)), balance_differences(pipeline, org, expected)
        assert wait_for(lambda: pipeline.warehouse.query(queries.count_distinct_events(org))[0][0] >= 800)
        assert pipeline.warehouse.query(queries.count_distinct_events(org))[0][0] == 800
        stored = {user: credits for _o, user, credits, _n in pipeline.warehouse.query(queries.credits_per_user(org))}
        assert stored == expected
        counted = sum(pipeline.balance(org, user)["events"] for user in expected)
        assert counted == 800


def test_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(make_settings):
    settings = make_settings()
    org = "org-restart"
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        events = make_events(meter, org, 3000, users=20, seed=4)
        for event in events[:1500]:
            meter.send(event)
        meter.flush()
        # Kill while the first half is being processed, so some offsets are uncommitted.
        users = {event.data.user_id for event in events}
        assert wait_for(lambda: counted(pipeline, org, users) > 0, interval=0.05)
        pipeline.kill_worker()
        for event in events[1500:] + events[:100]:  # the second half, plus 100 client retries
            meter.send(event)
        meter.flush()
        pipeline.start_worker()
        expected = expected_credits(events)
        # The killed member holds its partitions until its session times out, then tables recover.
        assert wait_for(balances_match(pipeline, org, expected), timeout=180), balance_differences(pipeline, org, expected)
        assert counted(pipeline, org, users) == len(events)


def test_invalid_event_raises_naming_the_field_and_sends_nothing(make_settings):
    settings = make_settings()
    meter = Meter(settings)
    cases = [
        ({"input_tokens": -1}, "data.input_tokens"),
        ({"user_id": ""}, "data.user_id"),
    ]
    for override, field in cases:
        arguments = {"org_id": "o", "user_id": "u", "model": "m", "input_tokens": 1, "output_tokens": 1, **override}
        with pytest.raises(InvalidEventError) as raised:
            meter.emit(**arguments)
        assert field in raised.value.fields
    with pytest.raises(InvalidEventError) as raised:
        meter.emit("o", "u", "m", 1, 1, timestamp=datetime(2026, 1, 1, 12, 0))  # naive: no time zone
    assert raised.value.fields == ["time"]
    ensure_topics(settings)
    assert topic_size(settings, settings.usage_topic) == 0

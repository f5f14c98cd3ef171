"""The usage event contract: every rule names its field; unknown fields are tolerated."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterline.producers import build_event
from meterline.producers.encoder import EventEncoder
from meterline.schemas import EVENT_TYPE, InvalidEventError, parse_event, record_time

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def valid_document(**data_overrides: object) -> dict:
    data = {"org_id": "acme", "user_id": "u1", "model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5}
    data.update(data_overrides)
    return {
        "specversion": "1.0",
        "id": "req-1",
        "source": "svc://chat",
        "type": EVENT_TYPE,
        "subject": data["user_id"],
        "time": "2026-11-22T11:59:00Z",
        "datacontenttype": "application/json",
        "data": data,
    }


def test_a_valid_cloudevent_parses_and_round_trips():
    event = parse_event(json.dumps(valid_document()), now=NOW)
    assert event.request_id == "req-1"
    assert event.user_key == "acme/u1"
    again = parse_event(event.to_json(), now=NOW)
    assert again == event


def test_unknown_fields_are_tolerated_at_both_levels():
    document = valid_document(future_field={"x": 1})
    document["traceparent"] = "00-abc"
    event = parse_event(document, now=NOW)
    assert event.data.input_tokens == 10


@pytest.mark.parametrize(
    ("data_overrides", "field"),
    [
        ({"input_tokens": -1}, "data.input_tokens"),
        ({"output_tokens": 1.5}, "data.output_tokens"),
        ({"input_tokens": "10"}, "data.input_tokens"),
        ({"org_id": ""}, "data.org_id"),
        ({"org_id": "a/b"}, "data.org_id"),
        ({"model": ""}, "data.model"),
        ({"cost_usd": -0.01}, "data.cost_usd"),
        ({"cost_usd": float("nan")}, "data.cost_usd"),
        ({"metadata": {"k": "v" * 9000}}, "data.metadata"),
    ],
)
def test_each_bad_data_field_is_named(data_overrides, field):
    with pytest.raises(InvalidEventError) as raised:
        parse_event(valid_document(**data_overrides), now=NOW)
    assert field in raised.value.fields


def test_missing_user_id_is_named():
    document = valid_document()
    del document["data"]["user_id"]
    with pytest.raises(InvalidEventError) as raised:
        parse_event(document, now=NOW)
    assert "data.user_id" in raised.value.fields


@pytest.mark.parametrize(
    ("time", "rule"),
    [("2026-11-22T11:59:00", "timezone"), ((NOW + timedelta(hours=1)).isoformat(), "future")],
)
def test_naive_and_future_timestamps_are_rejected(time, rule):
    document = valid_document()
    document["time"] = time
    with pytest.raises(InvalidEventError) as raised:
        parse_event(document, now=NOW)
    assert raised.value.fields == ["time"]
    assert rule in str(raised.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidEventError) as raised:
        parse_event(valid_document(input_tokens=-1, output_tokens=-2), now=NOW)
    assert {"data.input_tokens", "data.output_tokens"} <= set(raised.value.fields)


def test_subject_must_be_the_user():
    document = valid_document()
    document["subject"] = "someone-else"
    with pytest.raises(InvalidEventError):
        parse_event(document, now=NOW)


def test_not_json_is_a_clear_error():
    with pytest.raises(InvalidEventError) as raised:
        parse_event(b"\xff not json")
    assert raised.value.problems


def test_build_event_generates_time_ordered_request_ids_and_keeps_decimal_cost():
    first = build_event("acme", "u1", "m", 1, 1, cost_usd=0.1)
    second = build_event("acme", "u1", "m", 1, 1)
    assert first.request_id < second.request_id
    assert first.data.cost_usd == Decimal("0.1")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"latency_ms": 2**32}, "data.latency_ms"),  # the warehouse column is UInt32
        ({"input_tokens": 2**63}, "data.input_tokens"),
        ({"input_tokens": 2**63 - 1}, "data.input_tokens"),  # 64-bit, but no real call: sums overflowed
        ({"input_tokens": 10**9 + 1}, "data.input_tokens"),  # just past the bound
        ({"cost_usd": Decimal(10**6) + Decimal("0.01")}, "data.cost_usd"),
        ({"cost_usd": Decimal("0." + "1" * 19)}, "data.cost_usd"),  # Decimal(38, 18) would cut it
    ],
)
def test_values_the_warehouse_cannot_store_exactly_are_refused_by_both_emit_paths(fields, field):
    arguments = {"input_tokens": 1, "output_tokens": 1, **fields}
    with pytest.raises(InvalidEventError) as raised:
        build_event("acme", "u1", "gpt-4o", **arguments)
    assert field in raised.value.fields
    with pytest.raises(InvalidEventError) as raised:  # the SDK's fast encoder agrees with the schema
        EventEncoder().encode("acme", "u1", "gpt-4o", **arguments)
    assert field in raised.value.fields


def test_future_is_judged_against_the_record_time_so_every_consumer_agrees():
    document = valid_document()
    document["time"] = "2026-11-22T12:04:00Z"
    written = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).timestamp()
    assert parse_event(document, now=record_time(written)).data.user_id == "u1"  # 4 min ahead of the record
    with pytest.raises(InvalidEventError):
        parse_event(document, now=record_time(written - 3600))  # an hour ahead of it
    assert record_time(None) is None and record_time(-1) is None

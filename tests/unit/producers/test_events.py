"""The fast encoder emit uses agrees with the schema: same accepted events, same meaning."""

from __future__ import annotations

import math
import os
import sys
import uuid
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.producers.encoder import EventEncoder
from meterline.producers.events import build_event, new_request_id
from meterline.schemas import InvalidEventError, parse_event

UTC = timezone.utc
encoder = EventEncoder("meterline-sdk://test")
VALID = {"org_id": "acme", "user_id": "u-1", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 20}


def both(**overrides: object) -> tuple[object, object]:
    """(fast result or its error, schema result or its error) for the same arguments."""
    args = {**VALID, **overrides}
    args.setdefault("request_id", "req-1")
    args.setdefault("timestamp", datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    try:
        encoded = encoder.encode(**args)  # type: ignore[arg-type]
    except InvalidEventError as error:
        fast: object = sorted(error.fields)
    else:
        fast = parse_event(encoded[2])  # what the encoder accepted must parse: no error expected here
    try:
        slow: object = build_event(**args, source=encoder.source)  # type: ignore[arg-type]
    except InvalidEventError as error:
        slow = sorted(error.fields)
    return fast, slow


# Each bad-input rule of the issue, the field it must name, and a rule word in the message.
BAD_INPUT = [
    ("negative tokens", {"input_tokens": -1}, "data.input_tokens", "greater than or equal to 0"),
    ("negative output", {"output_tokens": -5}, "data.output_tokens", "greater than or equal to 0"),
    ("fractional tokens", {"input_tokens": 1.5}, "data.input_tokens", "valid integer"),
    ("numeric string tokens", {"output_tokens": "12"}, "data.output_tokens", "valid integer"),
    ("boolean tokens", {"input_tokens": True}, "data.input_tokens", "valid integer"),
    ("empty user id", {"user_id": ""}, "data.user_id", "at least 1 character"),
    ("naive timestamp", {"timestamp": datetime(2025, 1, 1, 12, 0)}, "time", "timezone"),
    ("far-future timestamp", {"timestamp": datetime.now(UTC) + timedelta(days=2)}, "time", "in the future"),
    ("metadata over 8 KiB", {"metadata": {"prompt": "x" * 8200}}, "data.metadata", "at most 8192 bytes"),
    ("NaN cost", {"cost_usd": float("nan")}, "data.cost_usd", "finite"),
    ("NaN decimal cost", {"cost_usd": Decimal("NaN")}, "data.cost_usd", "finite"),
    ("negative cost", {"cost_usd": -0.01}, "data.cost_usd", "greater than or equal to 0"),
    ("cached above input", {"cached_input_tokens": 101}, "data.cached_input_tokens", "at most input_tokens"),
]


@pytest.mark.parametrize(("overrides", "field", "rule"), [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
def test_each_bad_input_rule_names_the_field_and_the_rule(overrides: dict, field: str, rule: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        encoder.encode(**{**VALID, **overrides})
    assert caught.value.fields == [field]  # only the bad field, named once (not also `subject`)
    assert rule in str(caught.value) and field in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidEventError) as caught:
        encoder.encode(**{**VALID, "input_tokens": -1, "output_tokens": 0.5, "user_id": ""})
    assert sorted(caught.value.fields) == ["data.input_tokens", "data.output_tokens", "data.user_id"]


def test_fast_path_json_means_what_the_schema_builds() -> None:
    fast, slow = both(cost_usd=0.1, action="summarise", metadata={"feature": "chat"}, cached_input_tokens=40,
                      latency_ms=250)
    assert fast == slow
    assert orjson.loads(encoder.encode(**VALID)[2])["type"] == "dev.meterline.usage.v1"


def test_unusual_but_valid_arguments_go_through_the_schema() -> None:
    fast, slow = both(cost_usd="0.25", timestamp=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))))
    assert fast == slow
    assert fast.data.cost_usd == Decimal("0.25")  # type: ignore[attr-defined]


ids = st.one_of(st.text(min_size=0, max_size=5), st.sampled_from(["acme", "u-1", "a/b", " x", "é"]), st.none())
counts = st.one_of(st.integers(min_value=-3, max_value=10**12), st.floats(allow_nan=True), st.booleans(),
                   st.text(max_size=3))
# Decimal(38, 18) holds 20 whole digits: costs around 10**20 are drawn on purpose.
costs = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**9),
                  st.decimals(allow_nan=True, allow_infinity=True), st.sampled_from(["0.5", "x", "-1"]),
                  st.integers(10**19, 10**22), st.floats(1e19, 1e22), st.decimals(10**19, 10**22, places=3),
                  st.sampled_from([Decimal("1E+20"), Decimal("99999999999999999999.5"), 10**20 - 1, 10**20]))
times = st.one_of(st.none(), st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))])),
                  st.datetimes(),
                  # The first and last instants, in offsets that push them outside what UTC can show.
                  st.sampled_from([datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
                                   datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))]))
# Request ids: whitespace and control characters drawn on purpose.
request_ids = st.one_of(st.none(), st.text(max_size=6),  # None: both() gives one id to both sides
                        st.sampled_from(["req-1", "  ", "a b", "a\x07b", "x\n", "\x85", "\t", "r" * 129]))


@settings(max_examples=400, deadline=None)
@given(org=ids, user=ids, model=ids, inp=counts, out=counts, cached=counts, cost=costs, when=times,
       meta=st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)),
       rid=request_ids)
def test_fast_path_and_schema_agree_on_any_input(org, user, model, inp, out, cached, cost, when, meta, rid) -> None:
    when = when if when is None or when.year < 9999 or when.utcoffset() else None
    fast, slow = both(org_id=org, user_id=user, model=model, input_tokens=inp, output_tokens=out,
                      cached_input_tokens=cached, cost_usd=cost, timestamp=when or datetime(2024, 5, 1, tzinfo=UTC),
                      metadata=meta, **({} if rid is None else {"request_id": rid}))
    assert fast == slow


# Counts below 10,000 take a lookup table in the template path: its edges are drawn on purpose.
common_counts = st.one_of(st.sampled_from([0, 1, 9_999, 10_000, 10_001]), st.integers(min_value=-3, max_value=20_000),
                          st.integers(min_value=0, max_value=10**10))


@settings(max_examples=300, deadline=None)
@given(user=st.sampled_from(["u-1", "u-2", "é", "a\\b"]), inp=common_counts, out=common_counts,
       cached=common_counts, latency=common_counts)
def test_common_call_means_what_the_schema_builds(user, inp, out, cached, latency) -> None:
    """The template path (no id, action, cost, metadata or time given) against the schema."""
    args = {**VALID, "user_id": user, "input_tokens": inp, "output_tokens": out, "cached_input_tokens": cached,
            "latency_ms": latency}
    encoder.encode(**{**VALID, "user_id": user})  # so the next call finds its cached pieces
    try:
        request_id, key, value = encoder.encode(**args)
    except InvalidEventError as error:
        with pytest.raises(InvalidEventError) as schema_error:
            build_event(**args, source=encoder.source)
        assert sorted(error.fields) == sorted(schema_error.value.fields)
        return
    event = parse_event(value)
    assert event == build_event(**args, source=encoder.source, request_id=request_id, timestamp=event.time)
    assert key == f"acme/{user}".encode()


def freeze_clock(monkeypatch: pytest.MonkeyPatch, nanoseconds: int) -> None:
    """Stop the clock for ids (the encoder's inline read of it included)."""
    for module in ("meterline.producers.encoder", "meterline.producers.request_ids"):
        monkeypatch.setattr(f"{module}._time_ns", lambda: nanoseconds)


def test_ids_stay_unique_past_4096_in_one_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = 1_795_000_000_123_456_789
    freeze_clock(monkeypatch, frozen)
    fresh = EventEncoder("meterline-sdk://test")
    generated = [fresh.encode(**VALID)[0] for _ in range(10_000)]
    assert len(set(generated)) == len(generated)
    assert generated[:4096] == sorted(generated[:4096])  # ordered while the counter lasts
    assert {int(rid.replace("-", "")[:12], 16) for rid in generated} == {frozen // 1_000_000}
    assert {uuid.UUID(rid).version for rid in generated} == {7}


def test_threads_sharing_an_encoder_get_unique_ids() -> None:
    shared = EventEncoder("meterline-sdk://test")
    shared.encode(**VALID)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, mid-encode included
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            batches = list(pool.map(lambda _: [shared.encode(**VALID)[0] for _ in range(5_000)], range(8)))
    finally:
        sys.setswitchinterval(interval)
    generated = [rid for batch in batches for rid in batch]
    assert len(set(generated)) == len(generated) == 40_000


def test_a_forked_child_does_not_repeat_its_parents_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_clock(monkeypatch, 1_795_000_000_123_456_789)
    fresh = EventEncoder("meterline-sdk://test")
    fresh.encode(**VALID)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the same millisecond in both processes
        os.write(write, "\n".join(fresh.encode(**VALID)[0] for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        in_child = set(pipe.read().split("\n"))
    in_parent = {fresh.encode(**VALID)[0] for _ in range(100)}
    assert len(in_child) == 100 and not in_child & in_parent


def test_request_ids_are_uuid7_time_ordered_and_unique() -> None:
    generated = [new_request_id() for _ in range(20_000)]
    assert len(set(generated)) == len(generated)
    assert generated == sorted(generated)
    parsed = uuid.UUID(generated[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    ms = int(generated[0].replace("-", "")[:12], 16)
    assert math.isclose(ms / 1000, datetime.now(UTC).timestamp(), abs_tol=5)


def test_emit_generates_an_id_and_keeps_a_given_one() -> None:
    generated, key, _value = encoder.encode(**VALID)
    assert uuid.UUID(generated).version == 7 and key == b"acme/u-1"
    assert encoder.encode(**VALID, request_id="retry-7")[0] == "retry-7"


def test_fast_path_ids_and_times_come_from_one_clock_reading() -> None:
    results = [encoder.encode(**VALID) for _ in range(5_000)]
    ids = [request_id for request_id, _k, _v in results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(rid).version for rid in ids} == {7}
    for request_id, _key, value in results[:: 500]:
        event = parse_event(value)
        id_millis = int(request_id.replace("-", "")[:12], 16)
        assert abs(event.time.timestamp() * 1000 - id_millis) < 1  # same instant in both
        assert abs(event.time - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_lone_surrogate_in_metadata_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEventError) as caught:
        encoder.encode(**VALID, metadata={"note": "\ud800"})
    assert caught.value.fields == ["data.metadata"]


def test_strings_that_need_escaping_survive() -> None:
    fast, slow = both(model='gpt "4o"\\\n', action="naïve ✓", metadata={"q": "line\nbreak \"quoted\""},
                      request_id="req\t1")
    assert fast == slow


@pytest.mark.parametrize("when", [datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
                                  datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))])
def test_an_instant_outside_utc_is_an_error_naming_time_not_an_overflow(when: datetime) -> None:
    for make in (encoder.encode, build_event):
        with pytest.raises(InvalidEventError) as error:
            make(**VALID, timestamp=when)  # type: ignore[operator]
        assert error.value.fields == ["time"]


@pytest.mark.parametrize(("field", "value"), [
    ("user_id", "   "), ("user_id", "u\x01x"), ("user_id", "u\x85"), ("org_id", "ac\x7fme"), ("user_id", "u-1\n"),
    ("request_id", "   "), ("request_id", "a\x07b"), ("request_id", "\t"), ("request_id", "r-1\n"),
])
def test_blank_ids_and_control_characters_are_refused_with_the_rule(field: str, value: str) -> None:
    for make in (encoder.encode, build_event):
        with pytest.raises(InvalidEventError) as error:
            make(**{**VALID, field: value})  # type: ignore[operator]
        (problem,) = error.value.problems
        assert problem.field == {"request_id": "id", "org_id": "data.org_id", "user_id": "data.user_id"}[field]
        assert "control character" in problem.rule  # the rule in words, not a regular expression


def test_new_request_id_is_the_encoders_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_clock(monkeypatch, 1_796_000_000_000_000_000)
    ids = [new_request_id() for _ in range(3)] + [EventEncoder("meterline-sdk://test").encode(**VALID)[0]]
    # One method (RFC 9562 6.2, method 1): the 12 bits after the version count ids within a millisecond.
    assert [int(rid.replace("-", "")[13:16], 16) for rid in ids] == [0, 1, 2, 0]
    assert {rid[:15] for rid in ids} == {ids[0][:15]}  # the same millisecond, the same version


def test_emit_takes_build_events_arguments_and_names_a_misspelt_one(tmp_path: Path) -> None:
    import inspect

    from meterline.producers import AsyncMeter, Meter

    expected = [name for name in inspect.signature(build_event).parameters if name != "source"]
    assert list(inspect.signature(Meter.emit).parameters)[1:] == expected
    assert list(inspect.signature(Meter.build).parameters)[1:] == expected
    assert list(inspect.signature(AsyncMeter.emit).parameters)[1:] == [*expected, "wait"]
    meter = Meter(bootstrap="127.0.0.1:1", spool_dir=tmp_path, producer_config={"log_level": 0})
    with pytest.raises(TypeError, match="'latency'; did you mean 'latency_ms'"):
        meter.emit("acme", "u-1", "gpt-4o", 10, 5, latency=120)
    assert meter.stats().sent == 0
    meter.close(0)

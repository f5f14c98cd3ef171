"""The producer SDK on a real broker: outages, restarts, bad input, provider responses, async."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace as Obj

import orjson
import pytest
from aiokafka.partitioner import murmur2

from meterline.producers import AsyncMeter, DeliveryReport, InvalidEventError, Meter
from meterline.settings import Settings
from meterline.stack import ensure_topics, stack_down, stack_up
from tests.conftest import free_port
from tests.integration.pipeline import read_topic, topic_size


def consume_all(settings: Settings, expected: int, timeout: float = 60.0) -> list[dict]:
    """Every event in the usage topic (each copy, duplicates included), read from the start."""
    return [
        {**orjson.loads(message.value()), "_key": message.key(), "_part": message.partition()}
        for message in read_topic(settings, settings.usage_topic, expected, timeout, drain=True)
    ]


@pytest.fixture
def topic_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """make_settings, with the test's topics created."""

    def build(**overrides: object) -> Settings:
        settings = make_settings(**overrides)
        ensure_topics(settings)
        return settings

    return build


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Settings]:
    """A broker of this test's own, to stop and start without disturbing the session's."""
    settings = Settings(home=tmp_path / "home", kafka_port=free_port(), kafka_controller_port=free_port(),
                        partitions=4, usage_topic="usage-outage", delivery_timeout_ms=4000)
    stack_up(settings)
    yield settings
    stack_down(settings)


def test_10000_events_across_a_broker_stop_and_start_all_arrive(own_broker: Settings) -> None:
    settings = own_broker
    sent: list[str] = []
    reports: list[DeliveryReport] = []
    meter = Meter(settings, on_delivery=reports.append, producer_config={"log_level": 0})

    def outage() -> None:
        stack_down(settings)
        time.sleep(3)
        stack_up(settings)

    restart = threading.Thread(target=outage)
    for i in range(10_000):
        sent.append(meter.emit("acme", f"u-{i % 97}", "gpt-4o-mini", i, 1))
        if i == 3_000:
            restart.start()  # stops the broker while events keep coming
        if i % 100 == 0:
            time.sleep(0.01)  # about 10 s of traffic, so the outage falls in the middle
    restart.join()
    stats = meter.flush(timeout=90)
    meter.close()

    assert stats.spooled > 0, "the outage should have sent events through the spool"
    assert stats.sent == 10_000 and stats.lost == 0 and stats.spool_pending == 0
    assert stats.delivered + stats.replayed == 10_000
    events = consume_all(settings, 10_000)
    ids = [event["id"] for event in events]
    # Each request id is in Kafka; a copy beyond one can only be a replay the processors dedupe.
    assert set(ids) == set(sent) and len(set(sent)) == 10_000
    by_id = {event["id"]: event for event in events}
    assert all(by_id[rid]["data"]["input_tokens"] == i for i, rid in enumerate(sent))
    final = {report.request_id: report.status for report in reports if report.status in ("delivered", "replayed")}
    assert set(final) == set(sent)


def test_a_new_meter_replays_the_spool_an_earlier_process_left(topic_settings: Callable[..., Settings],
                                                               tmp_path: Path) -> None:
    settings = topic_settings(spool_dir=tmp_path / "spool")
    unreachable = settings.model_copy(update={"bootstrap": f"127.0.0.1:{free_port()}"})  # nothing listens there
    with Meter(unreachable, producer_config={"log_level": 0}) as offline:
        first = [offline.emit("acme", f"u-{i % 5}", "gpt-4o", 10 + i, 2) for i in range(300)]
        closed = offline.close(timeout=3)
    assert closed.spooled == 300 and closed.spool_pending == 300 and closed.lost == 0
    assert topic_size(settings, settings.usage_topic) == 0

    with Meter(settings) as restarted:  # a new process on the same spool directory
        later = restarted.emit("acme", "u-0", "gpt-4o", 1, 1)
        stats = restarted.flush(timeout=60)
    # The new event queued behind the adopted ones in the spool, so it was replayed too.
    assert stats.replayed == 301 and stats.spooled == 1 and stats.spool_pending == 0
    events = consume_all(settings, 301)
    ids = [event["id"] for event in events]
    assert set(ids) == set(first) | {later}
    spooled_order = [rid for rid in ids if rid in set(first)]
    for user in range(5):  # a user's events share a partition, and the replay keeps their order
        mine = [rid for i, rid in enumerate(first) if i % 5 == user]
        assert [rid for rid in spooled_order if rid in set(mine)] == mine
    assert list((tmp_path / "spool").glob("*.spool")) == []


BAD = [
    ({"input_tokens": -1}, "data.input_tokens"),
    ({"output_tokens": 2.5}, "data.output_tokens"),
    ({"user_id": ""}, "data.user_id"),
    ({"timestamp": datetime(2025, 1, 1)}, "time"),
    ({"timestamp": datetime(2999, 1, 1, tzinfo=timezone.utc)}, "time"),
    ({"metadata": {"prompt": "x" * 9000}}, "data.metadata"),
    ({"cost_usd": float("nan")}, "data.cost_usd"),
]


def test_bad_input_raises_naming_the_field_and_sends_nothing(topic_settings: Callable[..., Settings]) -> None:
    settings = topic_settings()
    base = {"org_id": "acme", "user_id": "u-1", "model": "gpt-4o", "input_tokens": 5, "output_tokens": 5}
    with Meter(settings) as meter:
        for overrides, field in BAD:
            with pytest.raises(InvalidEventError) as caught:
                meter.emit(**{**base, **overrides})
            assert caught.value.fields == [field], caught.value
        stats = meter.flush()
    assert stats.sent == 0
    assert topic_size(settings, settings.usage_topic) == 0


def test_provider_responses_are_recorded_with_the_right_counts(topic_settings: Callable[..., Settings]) -> None:
    settings = topic_settings()
    openai_chat = {"model": "gpt-4o", "usage": {"prompt_tokens": 1200, "completion_tokens": 340,
                                                 "prompt_tokens_details": {"cached_tokens": 1024}}}
    openai_responses = {"model": "gpt-4.1", "usage": {"input_tokens": 900, "output_tokens": 80, "total_tokens": 980,
                                                      "input_tokens_details": {"cached_tokens": 512}}}
    anthropic = {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 50, "output_tokens": 120,
                                                         "cache_read_input_tokens": 2000,
                                                         "cache_creation_input_tokens": 300}}

    def obj(value: object) -> object:
        return Obj(**{k: obj(v) for k, v in value.items()}) if isinstance(value, dict) else value

    # (input, cached, output) worked out by hand from the provider docs' definitions
    expected = {"gpt-4o": (1200, 1024, 340), "gpt-4.1": (900, 512, 80), "claude-sonnet-4-5": (2350, 2000, 120)}
    with Meter(settings) as meter:
        ids = {}
        for response in (openai_chat, openai_responses, anthropic):
            ids[meter.record_response("acme", "u-dict", response)] = response["model"]
            ids[meter.record_response("acme", "u-obj", obj(response))] = response["model"]
        with meter.measure("acme", "u-measured", "claude-sonnet-4-5") as m:
            time.sleep(0.02)
            ids[m.record(obj(anthropic))] = "claude-sonnet-4-5"
        meter.flush()
    events = {event["id"]: event for event in consume_all(settings, 7)}
    assert set(events) == set(ids)
    for rid, model in ids.items():
        data = events[rid]["data"]
        assert (data["model"], data["input_tokens"], data["cached_input_tokens"], data["output_tokens"]) == (
            model, *expected[model])
    measured = next(e["data"] for e in events.values() if e["data"]["user_id"] == "u-measured")
    assert measured["latency_ms"] >= 20
    assert measured["metadata"] == {"anthropic.cache_creation_input_tokens": "300"}


def test_async_meter_emits_without_blocking_and_waits_when_asked(topic_settings: Callable[..., Settings]) -> None:
    settings = topic_settings()

    async def run() -> tuple[list[str], str, int]:
        ticks = 0

        async def ticker() -> None:  # keeps running while the meter works: the loop is never blocked
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        async with AsyncMeter(settings) as meter:
            ids = [await meter.emit("acme", f"u-{i % 3}", "gpt-4o", i, 1) for i in range(500)]
            waited = await meter.emit("acme", "u-wait", "gpt-4o", 7, 7, wait=True)
            async with meter.measure("acme", "u-m", "gpt-4o") as m:
                ids.append(await m.record({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}))
            stats = await meter.flush()
            assert stats.delivered == 502 and stats.lost == 0
        tick_task.cancel()
        return ids, waited, ticks

    ids, waited, ticks = asyncio.run(run())
    assert ticks > 10
    events = consume_all(settings, 502)
    assert {event["id"] for event in events} == set(ids) | {waited}


def test_keys_partition_like_java_so_the_worker_finds_each_user(topic_settings: Callable[..., Settings]) -> None:
    settings = topic_settings()
    users = [f"u-{i}" for i in range(20)]
    with Meter(settings) as meter:
        for user in users:
            meter.emit("acme", user, "gpt-4o", 1, 1)
    events = consume_all(settings, len(users))
    assert len(events) == len(users)
    for event in events:  # Kafka's Java partitioner: murmur2(key) & 0x7fffffff mod partitions
        assert event["_part"] == (murmur2(event["_key"]) & 0x7FFFFFFF) % settings.partitions

"""The sink's watch on its consumer's group membership, fed librdkafka-shaped statistics (no broker)."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from meterline.settings import Settings
from meterline.sinks import clickhouse_sink
from meterline.sinks.clickhouse_sink import ClickHouseSink
from meterline.sinks.group_watch import STATISTICS_SECONDS, GroupWatch

LIMIT = 60.0


def statistics(state: str = "up", join_state: str = "steady", broker: str = "UP") -> str:
    """The fields librdkafka's statistics JSON has (STATISTICS.md), with the rest left out."""
    return orjson.dumps({"cgrp": {"state": state, "join_state": join_state, "assignment_size": 8},
                         "brokers": {"127.0.0.1:9092/1": {"state": broker}, "GroupCoordinator": {"state": broker}}}).decode()


def run(watch: GroupWatch, start: float, seconds: float, raw: str) -> float:
    """Poll every 0.2 s for `seconds`, with statistics every STATISTICS_SECONDS; the first time stuck, or -1."""
    now = start
    while now < start + seconds:
        if round((now - start) / 0.2) % round(STATISTICS_SECONDS / 0.2) == 0:
            watch.on_statistics(raw, now)
        if watch.stuck(now):
            return now
        now = round(now + 0.2, 6)
    return -1.0


def test_a_steady_member_is_never_stuck() -> None:
    assert run(GroupWatch(LIMIT, 0.0), 0.0, 10 * LIMIT, statistics()) == -1.0


def test_out_of_its_group_with_the_broker_up_it_is_stuck_after_the_limit() -> None:
    watch = GroupWatch(LIMIT, 0.0)
    run(watch, 0.0, 20.0, statistics())  # steady until 20 s (last seen at 15 s)
    stuck_at = run(watch, 20.0, 2 * LIMIT, statistics(state="wait-coord", join_state="steady"))
    assert 15.0 + LIMIT < stuck_at <= 15.0 + LIMIT + 0.4


@pytest.mark.parametrize("state,join_state", [("query-coord", "steady"), ("up", "wait-join"), ("up", "init")])
def test_each_way_of_being_out_of_the_group_counts(state: str, join_state: str) -> None:
    assert run(GroupWatch(LIMIT, 0.0), 0.0, 2 * LIMIT, statistics(state=state, join_state=join_state)) > LIMIT


def test_while_no_broker_answers_it_is_never_stuck_and_the_count_starts_when_one_does() -> None:
    watch = GroupWatch(LIMIT, 0.0)
    assert run(watch, 0.0, 10 * LIMIT, statistics(state="wait-coord", broker="DOWN")) == -1.0
    back = 10 * LIMIT
    stuck_at = run(watch, back, 2 * LIMIT, statistics(state="wait-coord"))
    assert back + LIMIT < stuck_at <= back + LIMIT + 0.4


def test_a_gap_in_polling_starts_the_count_again() -> None:
    """The sink waiting for ClickHouse polls nothing, so no statistics arrive: that is not the group's fault."""
    watch = GroupWatch(LIMIT, 0.0)
    watch.on_statistics(statistics(state="wait-coord"), 0.0)
    assert not watch.stuck(0.0)
    resumed = 5 * LIMIT  # no poll in between
    stuck_at = run(watch, resumed, 2 * LIMIT, statistics(state="wait-coord"))
    assert resumed + LIMIT < stuck_at <= resumed + LIMIT + 0.4


@pytest.mark.parametrize("raw", ["", "not json", "[]", '{"cgrp": "up"}', '{"brokers": []}', '{"brokers": {"b": 1}}',
                                 '{"cgrp": null, "brokers": null}'])
def test_statistics_it_cannot_read_change_nothing(raw: str) -> None:
    watch = GroupWatch(LIMIT, 0.0)
    watch.on_statistics(statistics(), 0.0)
    watch.on_statistics(raw, 1.0)  # never raises
    assert (watch.steady_at, watch.broker_up_since) == (0.0, 0.0)


class _StuckConsumer:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed.set()


class _NewConsumer(_StuckConsumer):
    made: list[_NewConsumer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config, self.subscribed = config, False
        _NewConsumer.made.append(self)

    def subscribe(self, topics: list[str], on_revoke: Any) -> None:
        self.subscribed = True


def test_the_sink_replaces_a_stuck_consumer_and_drops_what_it_held_uncommitted(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.setattr(clickhouse_sink, "Consumer", _NewConsumer)
    _NewConsumer.made.clear()
    sink = ClickHouseSink(Settings(home=tmp_path), warehouse=None)  # type: ignore[arg-type]
    stuck, now = _StuckConsumer(), time.monotonic()
    watch = GroupWatch(LIMIT, now)
    sink._consumer, sink._group_watch = stuck, watch  # type: ignore[assignment]
    watch.on_statistics(statistics(state="wait-coord"), now - LIMIT - 1)  # out of its group that long, broker up
    watch.steady_at = now - LIMIT - 1  # and polled all along
    sink.batch.next_offset[("rated", 0)] = 10  # something held, not stored

    sink.poll_once(timeout=0)

    assert stuck.closed.wait(5)  # closed aside: its close may hang
    assert [new.subscribed for new in _NewConsumer.made] == [True] and sink._consumer is _NewConsumer.made[0]
    assert not sink.batch.next_offset  # read again from the last commit by the new member
    assert sink._group_watch is not watch and not sink._group_watch.stuck(time.monotonic())
    assert "stats_cb" in _NewConsumer.made[0].config
    sink._on_revoke(stuck, [])  # type: ignore[arg-type]  # the replaced one's revoke, from its close: ignored
    assert sink._consumer is _NewConsumer.made[0]

"""When a Kafka consumer has been out of its group too long, with a broker there to rejoin through.

Seen once in about 50 looped runs of tests/integration/test_broker_restart.py, and once in CI:
after a broker restart, the sink's consumer logged "session timed out ... without a successful
response from the group coordinator (broker -1)" and stored nothing more, while the workers went on
with the same broker. librdkafka issues #2944 and #3082 describe consumers that stay so. A new
consumer joins in seconds, so the sink replaces one that this watch calls stuck.

Fed librdkafka's statistics (its `stats_cb`, served inside `consume()`): `cgrp.state` "up" with
`cgrp.join_state` "steady" is a member holding its assignment; a broker connection "UP" means
rejoining is possible. While no broker answers, a new consumer would do no better: not stuck.
Pure apart from reading its statistics: the clock is passed in.
"""

from __future__ import annotations

import orjson

STATISTICS_SECONDS = 5.0  # librdkafka's `statistics.interval.ms`, in seconds


class GroupWatch:
    def __init__(self, limit_seconds: float, now: float):
        self.limit_seconds = limit_seconds
        self.steady_at = now  # last seen a steady member (or made, or back to polling)
        self.broker_up_since: float | None = None  # connected to a broker without a break since
        self._polled_at = now

    def on_statistics(self, raw: str, now: float) -> None:
        try:
            statistics = orjson.loads(raw)
        except ValueError:  # never a reason to stop the sink
            return
        group = statistics.get("cgrp") if isinstance(statistics, dict) else None
        brokers = statistics.get("brokers") if isinstance(statistics, dict) else None
        if not isinstance(group, dict) or not isinstance(brokers, dict):
            return  # not a group consumer's statistics
        steady = group.get("state") == "up" and group.get("join_state") == "steady"
        broker_up = any(isinstance(broker, dict) and broker.get("state") == "UP" for broker in brokers.values())
        if steady:
            self.steady_at = now
        if not broker_up:
            self.broker_up_since = None
        elif self.broker_up_since is None:
            self.broker_up_since = now

    def stuck(self, now: float) -> bool:
        """Called on each poll: True once the consumer has been out of its group `limit_seconds`
        while a broker was up. A poll after a long gap (the sink waiting for ClickHouse) starts the
        count again: no statistics were served meanwhile."""
        if now - self._polled_at > 2 * STATISTICS_SECONDS:
            self.steady_at = now
        self._polled_at = now
        if self.broker_up_since is None:
            return False
        return now - max(self.steady_at, self.broker_up_since) > self.limit_seconds

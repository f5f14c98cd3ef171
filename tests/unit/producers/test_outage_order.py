"""Events emitted before and after Kafka is found unreachable are spooled in emission order (no broker)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from meterline.producers import Meter
from tests.conftest import free_port


def test_events_queued_before_the_outage_was_noticed_are_spooled_ahead_of_later_ones(tmp_path: Path) -> None:
    meter = Meter(bootstrap=f"127.0.0.1:{free_port()}", spool_dir=tmp_path, producer_config={"log_level": 0})
    before = [meter.emit("acme", "u-1", "gpt-4o", 1, 1) for _ in range(100)]  # into the producer's queue
    deadline = time.monotonic() + 30
    while not meter._engine.spooling and time.monotonic() < deadline:  # librdkafka: all brokers down
        time.sleep(0.01)
    after = [meter.emit("acme", "u-1", "gpt-4o", 2, 2) for _ in range(100)]  # straight to the spool
    meter.close(timeout=1)
    spooled = [orjson.loads(line.split(b" ", 2)[2])["id"]
               for path in sorted(tmp_path.glob("*.spool")) for line in path.read_bytes().splitlines()]
    assert spooled == before + after

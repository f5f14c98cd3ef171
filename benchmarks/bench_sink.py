"""The sink's rate into the embedded warehouse (target: >= 100,000 rows/s), beside a bare insert of the same rows.

The same rated records, made once: a new rated topic holds them. Then, alternating, each into a
fresh database of one chDB directory (chDB opens one directory per process):

- bare JSON insert: the rated records already in memory, inserted as they are (JSONEachRow, the
  sink's own format) in batches of the sink's size (`sink_batch_size`) - the engine's ceiling for
  the sink, which also reads them from Kafka and commits;
- bare typed insert: the rows already decoded, inserted with clickhouse-connect's typed insert
  (the sink's fallback for a batch ClickHouse refuses);
- sink: `ClickHouseSink` reading the topic (route by status, one insert per table per batch
  with a dedupe token, commit offsets), timed from its first stored batch to its last, so the group join
  is left out.

Bounded: each run has a deadline; medians over RUNS, ratios from the same run.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from meterline.processors.accounts import Placement
from meterline.benchmarks.results import Figure
from meterline.producers import build_event
from meterline.schemas.rated import rated_record, rated_row
from meterline.settings import Settings, load_settings
from meterline.sinks import ClickHouseSink, Warehouse
from meterline.sinks.queries import RATED_EVENTS
from meterline.stack import stack_up
from meterline.traffic import simulate

ROWS = 300_000
USERS = 10_000
RUNS = 3
DEADLINE = 180.0
console = Console()


def fill_rated_topic(settings: Settings, count: int = ROWS) -> tuple[str, list[bytes]]:
    """A new rated topic holding `count` distinct rated records; returns it and the records."""
    topic = f"bench-rated-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, settings.partitions, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20, "compression.type": "lz4"})
    placement = Placement("free", datetime(2026, 12, 1, tzinfo=timezone.utc), False)
    records = []
    for offset, call in enumerate(simulate(count, USERS, resend_ratio=0.0, seed=5)):
        event = build_event("bench", call.user_id, call.model, call.input_tokens, call.output_tokens,
                            latency_ms=call.latency_ms, action=call.action)
        record = rated_record(event, provider_cost_usd=Decimal("0.00123"), credits=Decimal("1.5"), credit_rule="base",
                              price_version="bench", status="applied", partition=offset % settings.partitions,
                              offset=offset, processed_at=time.time(), placement=placement)
        records.append(record)
        while True:
            try:
                producer.produce(topic, record, event.user_key.encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    return topic, records


@contextmanager
def fresh_warehouse(settings: Settings) -> Iterator[Warehouse]:
    warehouse = Warehouse(settings.model_copy(update={"clickhouse_database": f"bench_sink_{uuid.uuid4().hex[:8]}"}))
    try:
        yield warehouse
    finally:
        warehouse.command(f"DROP DATABASE IF EXISTS `{warehouse.database}`")


def run_bare(settings: Settings, method: str, items: list[Any]) -> float:
    """Insert `items` (rows or records) in batches of the sink's size with the Warehouse's `method`, nothing else; rows/s."""
    with fresh_warehouse(settings) as warehouse:
        insert = getattr(warehouse, method)
        batch = settings.sink_batch_size
        began = time.monotonic()
        for start in range(0, len(items), batch):
            insert(RATED_EVENTS, items[start:start + batch], dedupe_token=f"{method}:{start}")
        return len(items) / (time.monotonic() - began)


def run_sink(settings: Settings, topic: str, count: int) -> float:
    with fresh_warehouse(settings) as warehouse:
        sink_settings = settings.model_copy(update={"rated_topic": topic, "sink_group": f"bench-sink-{uuid.uuid4().hex[:8]}",
                                                    "sink_report_seconds": 3600.0})
        sink = ClickHouseSink(sink_settings, warehouse)
        stop = threading.Event()
        thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        thread.start()
        began, first, first_rows = time.monotonic(), 0.0, 0
        try:
            while sink.rows_written < count and time.monotonic() - began < DEADLINE:
                if not first and sink.rows_written:
                    first, first_rows = time.monotonic(), sink.rows_written
                time.sleep(0.005)
            done = time.monotonic()
        finally:
            stop.set()
            thread.join(60)
        if sink.rows_written < count or not first or done <= first:
            return float("nan")
        return (count - first_rows) / (done - first)


def main(quick: bool = False) -> list[Figure]:
    stack_up(load_settings())
    directory = tempfile.mkdtemp(prefix="meterline-bench-sink-")
    try:
        return measure(load_settings().model_copy(update={"chdb_path": Path(directory), "clickhouse_url": None}),
                       *((1, ROWS // 3) if quick else (RUNS, ROWS)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(settings: Settings, runs: int = RUNS, count: int = ROWS) -> list[Figure]:
    with console.status(f"making {count:,} rated records..."):
        topic, records = fill_rated_topic(settings, count)
        rows = [rated_row(record) for record in records]
    # The harness's own decoded rows (~10 million objects for 300,000) would make every full collection
    # in this process long, the sink's included; out of the collector's sight, as a sink has no such heap.
    gc.freeze()
    contenders = {
        "bare JSON insert (ceiling)": lambda: run_bare(settings, "insert_rated_json", records),
        "bare typed insert": lambda: run_bare(settings, "insert_rated", rows),
        "meterline sink": lambda: run_sink(settings, topic, count),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for run in range(runs):
        for name, contender in contenders.items():
            with console.status(f"run {run + 1}/{runs}: {name}..."):
                rates[name].append(contender())
    table = Table(title=f"{count:,} rated rows into embedded chDB, batches of {settings.sink_batch_size:,}, {runs} alternating runs")
    for column in ("contender", "median rows/s", "runs (rows/s)", "vs the ceiling"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    ceiling = rates["bare JSON insert (ceiling)"]
    figures = []
    for name, series in rates.items():
        ratio = statistics.median(own / base for own, base in zip(series, ceiling))
        table.add_row(name, f"{statistics.median(series):,.0f}", " ".join(f"{rate:,.0f}" for rate in series), f"{ratio:.2f}x")
        sink = name == "meterline sink"
        figures.append(Figure(name, statistics.median(series), "rows/s", "bare JSON insert", ratio,
                              ">= 100,000 rows/s" if sink else "", statistics.median(series) >= 100_000 if sink else None))
    console.print(table)
    console.print("target: the sink >= 100,000 rows/s")
    return figures


if __name__ == "__main__":
    main()

"""What the accounts (cycles, plans, alerts) and corrections cost the worker's per-batch logic.

In one process, no Kafka: the same power-law batches through `BatchProcessor.process`, alternating
- with the accounts, as the worker runs;
- without them: `Accounts` replaced by `NoAccounts`, which places every event nowhere (no cycle,
  no alert) - the engine's logic as it was before accounts, the ceiling this figure is a ratio to.
  The whole worker with and without them is in `python -m meterline.benchmarks pipeline`.
Then corrections: a batch of amends of events of earlier batches, each reading its event back
from an in-memory log. The worker reads it from Kafka with one kept consumer (`RecordReader`):
its latency per read is measured last, on the local stack's broker, at random offsets.

Bounded: RUNS alternating runs of EVENTS events; medians, and the ratio within each run.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from datetime import datetime, timezone
import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from meterline.pricing.catalogue import default_catalogue
from meterline.pricing.rating import default_rater
from meterline.benchmarks.results import Figure
from meterline.benchmarks.without_accounts import NoAccounts
from meterline.processors.accounts import Accounts
from meterline.processors.backfill import RecordReader
from meterline.processors.batch import BatchProcessor, SourceRecord
from meterline.processors.state import UserState
from meterline.producers import build_event
from meterline.settings import load_settings
from meterline.stack import stack_up
from meterline.traffic import simulate

EVENTS = 200_000
USERS = 10_000
BATCH = 2_000  # the worker's default batch size
CORRECTIONS = 5_000
RUNS = 3
ORG = "bench"
console = Console()


def make_records(events: int = EVENTS) -> list[SourceRecord]:
    at = datetime.now(timezone.utc).replace(microsecond=0)
    records = []
    for offset, call in enumerate(simulate(events, USERS, resend_ratio=0.0)):
        event = build_event(ORG, call.user_id, call.model, call.input_tokens, call.output_tokens,
                            request_id=f"r{offset}", action=call.action, timestamp=at, source="bench")
        records.append(SourceRecord(0, offset, event.user_key.encode(), event.to_json(), at.timestamp()))
    return records


def make_corrections(records: list[SourceRecord], count: int = CORRECTIONS) -> list[SourceRecord]:
    at = datetime.now(timezone.utc).isoformat()
    corrections = []
    for n, record in enumerate(records[:count]):
        event = orjson.loads(record.value or b"")
        corrections.append(SourceRecord(0, len(records) + n, record.key, orjson.dumps({
            "type": "dev.meterline.correction.v1", "id": f"c{n}", "org_id": ORG, "user_id": event["data"]["user_id"],
            "request_id": event["id"], "action": "amend", "amended": {"input_tokens": 1}, "reason": "bench", "time": at})))
    return corrections


def run(accounts: Accounts, records: list[SourceRecord], corrections: list[SourceRecord]) -> tuple[float, float]:
    """Seconds per event, and per correction."""
    processor = BatchProcessor(default_rater(), accounts, "bench", 35 * 86_400, 10_000_000)
    processor.load(0, [])
    store: dict[bytes, UserState] = {}
    log = {(r.partition, r.offset): r.value for r in records}

    def apply(batch: list[SourceRecord]) -> None:
        result = processor.process(batch, lambda key: store.get(key, UserState()), time.time(),
                                   lambda partition, offset: log.get((partition, offset)))
        store.update({key: state for key, (_partition, state) in result.states.items()})

    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        apply(records[start:start + BATCH])
    per_event = (time.perf_counter() - started) / len(records)
    started = time.perf_counter()
    for start in range(0, len(corrections), BATCH):
        apply(corrections[start:start + BATCH])
    return per_event, (time.perf_counter() - started) / len(corrections)


def read_back_latencies(reads: int = 300) -> list[float]:
    """Seconds per `RecordReader.read` of a random earlier record of a new 8-partition topic."""
    settings = load_settings()
    stack_up(settings)
    topic = f"bench-readback-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 8, 1)])[topic].result(30)
    written: dict[int, list[int]] = {}
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20})
    for n in range(20_000):
        producer.produce(topic, b"x" * 600, f"k{n}".encode(),
                         on_delivery=lambda _error, message: written.setdefault(message.partition(), []).append(message.offset()))
        producer.poll(0)
    producer.flush(30)
    reader = RecordReader(settings.kafka_bootstrap, topic)
    rng = random.Random(7)
    latencies = []
    for _ in range(reads):
        partition = rng.choice(sorted(written))
        started = time.perf_counter()
        reader.read(partition, rng.choice(written[partition]))
        latencies.append(time.perf_counter() - started)
    admin.delete_topics([topic])
    return sorted(latencies)


def main(quick: bool = False) -> list[Figure]:
    # A quick run: a quarter of the events and amends, over the same users.
    runs, events, count = (1, EVENTS // 4, CORRECTIONS // 4) if quick else (RUNS, EVENTS, CORRECTIONS)
    with console.status(f"making {events:,} events for {USERS:,} users..."):
        records = make_records(events)
        corrections = make_corrections(records, count)
    catalogue = default_catalogue()
    contenders = {"with accounts (the worker)": lambda: Accounts(catalogue, "free", {}),
                  "without accounts (ceiling)": lambda: NoAccounts(catalogue, "free", {})}
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for number in range(runs):
        for name, make in contenders.items():
            with console.status(f"run {number + 1}/{runs}: {name}..."):
                timings[name].append(run(make(), records, corrections))
    table = Table(title=f"BatchProcessor.process: {events:,} events in batches of {BATCH:,}, then {count:,} amends; "
                        f"{runs} alternating runs, medians")
    for column in ("contender", "µs per event", "events/s", "vs without accounts", "µs per correction"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    ceiling = [per_event for per_event, _ in timings["without accounts (ceiling)"]]
    figures = []
    for name, series in timings.items():
        per_event = statistics.median(e for e, _ in series)
        ratio = statistics.median(base / own for (own, _), base in zip(series, ceiling))
        table.add_row(name, f"{per_event * 1e6:.1f}", f"{1 / per_event:,.0f}", f"{ratio:.2f}x",
                      f"{statistics.median(c for _, c in series) * 1e6:.1f}")
        figures.append(Figure(f"batch processing, {name}", 1 / per_event, "events/s", "without accounts", ratio))
    console.print(table)
    console.print("The worker's whole rate (Kafka, Faust, changelogs) is `python -m meterline.benchmarks pipeline`.")
    with console.status("reading earlier records back from Kafka..."):
        latencies = read_back_latencies()
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99)]
    console.print(f"A correction reads its event back from Kafka: p50 {p50 * 1e3:.1f} ms, "
                  f"p99 {p99 * 1e3:.1f} ms per read ({len(latencies)} reads).")
    return [*figures, Figure("a correction's read back from Kafka, p50", p50 * 1e3, "ms"),
            Figure("a correction's read back from Kafka, p99", p99 * 1e3, "ms")]


if __name__ == "__main__":
    main()

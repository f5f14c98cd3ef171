"""reserve() round trip under stream load, side by side with a plain read of the same worker.

One worker on the local stack. A separate process emits usage through the SDK at STREAM_RATE
events/s (power-law users); meanwhile CLIENTS processes share RESERVE_RATE calls a second, each
paced (a call due is made as soon as the previous one is answered), through the SDK's Meter:
- `reserve()`: decided by the user's owner, its hold acknowledged by Kafka before the answer;
- the baseline: GET of the same users' balances over the same client (httpx, kept-alive
  connections), the worker's cheapest authenticated answer: routing, key check, one state read;
- the floor: one record written with the holds' producer settings straight to the broker, and its
  acknowledgement awaited - what the durability of a hold alone costs, with no worker in between.
Alternating phases of PHASE_SECONDS each, RUNS times; the medians of each phase's p50 and p99,
and the ratios of reserve to the baseline and to the floor within each run. Then reserve with no stream, once.
Bounded: about 2.5 minutes; every wait has a deadline.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from meterline.auth import org_key, resolve_secret
from meterline.benchmarks.bench_pipeline import delete_topics
from meterline.benchmarks.results import Figure, percentile
from meterline.client import wait_until_serving
from meterline.pricing.config import default_path
from meterline.processors.outbox import HOLD_PRODUCER_CONFIG
from meterline.processors.worker import spawn_worker
from meterline.producers import Meter
from meterline.settings import Settings, load_settings
from meterline.stack import ensure_topics, free_port, stack_up
from meterline.traffic import simulate

STREAM_RATE = 5_000
RESERVE_RATE = 500
PHASE_SECONDS = 10
QUICK_PHASE_SECONDS = 4
STREAM_FIRST_SECONDS, QUICK_STREAM_FIRST_SECONDS = 5.0, 2.0  # the stream runs alone first, to reach its rate
RUNS = 3
CLIENTS = 4  # processes sharing RESERVE_RATE, as an app's replicas would: one Python client alone cannot offer it
USERS = 1_000
ORG = "bench-reserve"
console = Console()
FAILED: dict[str, int] = {}


def unlimited_plans(directory: Path) -> Path:
    """The default plans, Free's rate and concurrency limits lifted: every reserve takes the hold path."""
    catalogue = yaml.safe_load(default_path("plans.yaml").read_text())
    catalogue["plans"]["free"]["limits"].update(concurrent_requests=100_000, requests_per_minute=10**9)
    path = directory / "plans.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    return path


def emit_steadily(settings: Settings, rate: int, stop: Any) -> None:
    """In its own process (its own GIL): `rate` events a second until `stop` is set."""
    calls = list(simulate(20_000, 10_000, resend_ratio=0.05))
    with Meter(settings) as meter:
        began, sent = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - began) * rate)
            for n in range(sent, due):
                call = calls[n % len(calls)]
                meter.emit("bench-stream", call.user_id, call.model, call.input_tokens, call.output_tokens)
            sent = due
            time.sleep(0.002)


def writes_topic(settings: Settings) -> str:
    return f"{settings.app_id}-writes"  # compacted, as the holds' changelog


def write_acknowledged(producer: Producer, topic: str, user: str) -> bool:
    """One record, as a hold is written (keyed by its user), once Kafka acknowledged it."""
    failures: list[object] = []
    producer.produce(topic, b'{"hold": "bench"}', user.encode(),
                     on_delivery=lambda error, _message: failures.append(error) if error else None)
    return producer.flush(10) == 0 and not failures


def _call(meter: Meter, client: httpx.Client, producer: Producer, settings: Settings, token: str, kind: str,
          user: str) -> bool:
    """One call of `kind`; whether it was answered as asked (allowed, 200, or acknowledged)."""
    if kind == "reserve":
        return meter.reserve(ORG, user, "gpt-4o-mini", estimate=Decimal("0.001"), ttl_seconds=5).allowed
    if kind == "write":
        return write_acknowledged(producer, writes_topic(settings), user)
    return client.get(f"{settings.worker_url}/v1/orgs/{ORG}/users/{user}/balance",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200


def serve_calls(settings: Settings, token: str, rate: float, seed: int, ready: Any, phases: Any, results: Any) -> None:
    """In its own process, for every phase (kind, seconds) taken from `phases` until None: `rate`
    calls a second (each due call made as soon as the previous one is answered), from when every
    client is ready (`ready`, a barrier: a client still importing would take the CPU from the
    others' measurement); puts (latencies, calls not answered as asked, seconds) on `results`."""
    chooser = random.Random(seed)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **HOLD_PRODUCER_CONFIG})
    with Meter(settings, enforcement_url=settings.worker_url, api_key=token) as meter, httpx.Client() as client:
        # Warm: this process's connections and producer, and the worker's holds producer.
        meter.reserve(ORG, "warm-up", "gpt-4o-mini", estimate=Decimal("0.001"), ttl_seconds=1)
        client.get(f"{settings.worker_url}/healthz")
        write_acknowledged(producer, writes_topic(settings), "warm-up")
        while (phase := phases.get()) is not None:
            kind, seconds = phase
            latencies, failed = [], 0
            ready.wait(120)
            began = time.perf_counter()
            for n in range(int(rate * seconds)):
                pause = began + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                started = time.perf_counter()
                failed += not _call(meter, client, producer, settings, token, kind, f"u{chooser.randrange(USERS)}")
                latencies.append(time.perf_counter() - started)
            results.put((latencies, failed, time.perf_counter() - began))


class Clients:
    """CLIENTS processes sharing RESERVE_RATE calls a second: started once, then given each phase in turn."""

    def __init__(self, settings: Settings, token: str):
        context = multiprocessing.get_context("spawn")
        self._results, self._ready = context.Queue(), context.Barrier(CLIENTS)
        self._phases = [context.Queue() for _ in range(CLIENTS)]
        self._processes = [context.Process(target=serve_calls, args=(settings, token, RESERVE_RATE / CLIENTS, n, self._ready,
                                                                     phases, self._results))
                           for n, phases in enumerate(self._phases)]
        for process in self._processes:
            process.start()

    def phase(self, kind: str, seconds: float) -> tuple[list[float], float]:
        """The latencies (s) of a phase of `kind` calls, and the rate achieved."""
        for phases in self._phases:
            phases.put((kind, seconds))
        latencies, calls_per_second = [], 0.0
        for _ in self._processes:
            own, failed, elapsed = self._results.get(timeout=seconds * 4 + 120)
            latencies += own
            calls_per_second += len(own) / elapsed
            FAILED[kind] = FAILED.get(kind, 0) + failed
        return latencies, calls_per_second

    def close(self) -> None:
        for phases in self._phases:
            phases.put(None)
        for process in self._processes:
            process.join(30)


WRITE = "Kafka write (a hold's), under load"


def measure(settings: Settings, token: str, runs: int = RUNS, seconds: float = PHASE_SECONDS,
            stream_first: float = STREAM_FIRST_SECONDS) -> dict[str, list[tuple[float, float, float]]]:
    results: dict[str, list[tuple[float, float, float]]] = {
        "balance read, under load": [], WRITE: [], "reserve(), under load": [], "reserve(), no stream": []}
    context = multiprocessing.get_context("spawn")
    clients = Clients(settings, token)
    try:
        for run in range(runs):
            stop = context.Event()
            stream = context.Process(target=emit_steadily, args=(settings, STREAM_RATE, stop))
            stream.start()
            time.sleep(stream_first)  # the stream at its rate first
            try:
                for kind, name in (("read", "balance read, under load"), ("write", WRITE), ("reserve", "reserve(), under load")):
                    console.log(f"run {run + 1}/{runs}: {name}, {RESERVE_RATE}/s for {seconds:g} s")
                    latencies, rate = clients.phase(kind, seconds)
                    results[name].append((percentile(latencies, 0.5), percentile(latencies, 0.99), rate))
            finally:
                stop.set()
                stream.join(60)
        console.log(f"reserve(), no stream, {RESERVE_RATE}/s for {seconds:g} s")
        latencies, rate = clients.phase("reserve", seconds)
        results["reserve(), no stream"].append((percentile(latencies, 0.5), percentile(latencies, 0.99), rate))
    finally:
        clients.close()
    return results


def main(quick: bool = False) -> list[Figure]:
    runs, seconds, stream_first = (1, QUICK_PHASE_SECONDS, QUICK_STREAM_FIRST_SECONDS) if quick else (
        RUNS, PHASE_SECONDS, STREAM_FIRST_SECONDS)
    base = load_settings()
    stack_up(base)
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as directory:
        settings = base.model_copy(update={
            "usage_topic": f"bench-reserve-{run}", "app_id": f"bench-reserve-{run}", "worker_port": free_port(),
            "dead_letter_topic": f"bench-reserve-dlq-{run}", "decisions_topic": f"bench-decisions-{run}",
            "plans": unlimited_plans(Path(directory))})
        ensure_topics(settings, compacted=(writes_topic(settings),))
        worker = spawn_worker(settings)
        try:
            token = org_key(resolve_secret(settings), ORG)
            wait_until_serving(settings.worker_url, token, ORG, timeout=120)
            results = measure(settings, token, runs, seconds, stream_first)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    delete_topics(base)
    baseline = results["balance read, under load"]
    table = Table(title=f"reserve() round trip, {RESERVE_RATE}/s for {seconds:g} s a phase, stream {STREAM_RATE:,} "
                        f"events/s, {runs} alternating runs, medians (target: p99 <= 5 ms under load)")
    for column in ("call", "calls/s", "p50 ms", "p99 ms", "p99 per run (ms)", "p50 vs read", "p99 vs read"):
        table.add_column(column, justify="left" if column == "call" else "right")
    figures = []
    for name, measured in results.items():
        p50 = statistics.median(p for p, _, _ in measured)
        p99 = statistics.median(p for _, p, _ in measured)
        paired = name.endswith("under load")
        p99_ratio = statistics.median(own[1] / base[1] for own, base in zip(measured, baseline)) if paired else None
        table.add_row(name, f"{statistics.median(r for _, _, r in measured):,.0f}", f"{p50 * 1000:.2f}", f"{p99 * 1000:.2f}",
                      " ".join(f"{p * 1000:.1f}" for _, p, _ in measured),
                      f"{statistics.median(own[0] / base[0] for own, base in zip(measured, baseline)):.2f}x" if paired else "-",
                      f"{p99_ratio:.2f}x" if paired else "-")
        target = name == "reserve(), under load"
        figures += [Figure(f"{name}, p50", p50 * 1000, "ms"),
                    Figure(f"{name}, p99", p99 * 1000, "ms", "balance read, under load" if paired else "", p99_ratio,
                           "<= 5 ms at 500/s under 5,000 events/s" if target else "", p99 <= 0.005 if target else None)]
    floor = statistics.median(own[1] / write[1] for own, write in zip(results["reserve(), under load"], results[WRITE]))
    figures.append(Figure("reserve(), under load, p99 vs a bare Kafka write's", floor, "x", WRITE, floor))
    console.print(table)
    console.print(f"reserve() p99 / an acknowledged Kafka write's p99, under the same load: {floor:.2f}x "
                  "(a hold is durable before the answer, so no reserve() can be quicker than that write)")
    console.print(f"calls not answered as asked (allowed, 200, acknowledged) after the warm-up: {FAILED or 'none'}")
    return figures


if __name__ == "__main__":
    main()

"""End to end under stepped load: emit -> Kafka -> two workers -> balances, and the sink -> ClickHouse, all at once.

The offered load steps up (STEPS events/s, STEP_SECONDS each) through the SDK: power-law users,
5 % of calls sent again with their first request id, every 50th event to a probe user whose
balance is polled. At each step: the rate the emitter reached, the rates into balances (rated
records the workers published) and into ClickHouse (rated offsets the sink committed after
ClickHouse acknowledged), the workers' and the sink's lag at the step's end, and the probes'
emit -> balance freshness. The knee is the first step whose balances fall behind the offered
load (lag grew by more than 5 % of what was offered). Writes bench/results/load.png.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from meterline.auth import org_key, resolve_secret
from meterline.benchmarks.bench_pipeline import delete_topics
from meterline.benchmarks.probes import ProbeWatch
from meterline.benchmarks.profile import cpu_seconds, start_sampling, summarize
from meterline.benchmarks.results import PROFILE_PATH, RESULTS_DIR, Figure, percentile
from meterline.processors.worker import spawn_worker
from meterline.producers import Meter
from meterline.settings import Settings, load_settings
from meterline.stack import broker_status, ensure_topics, free_port, stack_up
from meterline.traffic import simulate

STEPS = (1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000)
QUICK_STEPS = (1_000, 5_000, 10_000)
STEP_SECONDS = 20.0
QUICK_STEP_SECONDS = 5.0
WORKERS = 2
USERS = 10_000
ORG = "load"
PROBE = "probe"
PROBE_EVERY = 50
TICK_SECONDS = 0.005  # the emitter sends what is due each tick: a sleep per event would cost a core
KNEE_LAG_SHARE = 0.05
PROFILED_RATE = 10_000  # the step whose first worker py-spy samples: the rate the seeds ask for
WARM_UP_RATE, WARM_UP_SECONDS = 500, 8.0  # not measured: group joins and the first rebalance
QUICK_WARM_UP_SECONDS = 3.0  # a quick run's broker has no initial rebalance delay
console = Console()


@dataclass(frozen=True)
class Step:
    offered: int  # events/s asked for
    emitted: float  # events/s the emitter reached
    into_balances: float  # events/s
    into_clickhouse: float  # rows/s
    balance_lag: int  # events emitted and not yet counted, at the step's end
    sink_lag: int  # rated records not yet stored, at the step's end
    freshness_p50: float  # s
    freshness_p99: float  # s
    probes: int
    cores: dict[str, float]  # CPU seconds per wall second during the step, per part of the pipeline


def _run_sink(settings: Settings) -> None:
    """The sink in a child process of its own, as deployed: SIGTERM stops it."""
    from meterline.sinks import ClickHouseSink, Warehouse

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ClickHouseSink(settings, Warehouse(settings)).run(stop)


class Offsets:
    """High watermarks and a group's committed offsets, summed over a topic's partitions."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.sink_group,
                                   "enable.auto.commit": False})

    def end(self, topic: str) -> int:
        return sum(self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(self._settings.partitions))

    def committed(self, topic: str) -> int:
        found = self._consumer.committed([TopicPartition(topic, p) for p in range(self._settings.partitions)], timeout=10)
        return sum(max(part.offset, 0) for part in found)

    def close(self) -> None:
        self._consumer.close()


def _emit_step(meter: Meter, rate: int, seconds: float, probes: ProbeWatch, calls, sent: list[str]) -> float:  # type: ignore[no-untyped-def]
    """Emit at `rate` for `seconds`; return the rate reached."""
    began, total, i = time.monotonic(), int(rate * seconds), 0
    while i < total and time.monotonic() - began < seconds + 5:
        due = min(total, int((time.monotonic() - began) * rate) + 1)
        for i in range(i, due):
            if i % PROBE_EVERY == 0:
                meter.emit(ORG, PROBE, "gpt-4o-mini", 100, 10)
                probes.emitted.append(time.monotonic())
                continue
            call = next(calls)
            if call.resend and sent:  # the same call again, with its first request id: counted once
                meter.emit(ORG, call.user_id, call.model, call.input_tokens, call.output_tokens,
                           latency_ms=call.latency_ms, request_id=sent[-1], action=call.action)
            else:
                sent.append(meter.emit(ORG, call.user_id, call.model, call.input_tokens, call.output_tokens,
                                       latency_ms=call.latency_ms, action=call.action))
        i = due
        time.sleep(TICK_SECONDS)
    return i / (time.monotonic() - began)


def run_steps(settings: Settings, steps: tuple[int, ...], seconds: float, warm_up: float = WARM_UP_SECONDS) -> list[Step]:
    workers = [spawn_worker(settings.model_copy(update={"worker_port": port}))
               for port in [settings.worker_port] + [free_port() for _ in range(WORKERS - 1)]]
    sink = multiprocessing.get_context("spawn").Process(target=_run_sink, args=(settings,), daemon=True)
    sink.start()
    PROFILE_PATH.unlink(missing_ok=True)  # a profile is this run's or none
    offsets = Offsets(settings)
    probes = ProbeWatch(settings.worker_url, org_key(resolve_secret(settings), ORG), ORG, PROBE)
    found = []
    try:
        with Meter(settings) as meter:
            meter.emit(ORG, PROBE, "gpt-4o-mini", 100, 10)  # connects; the probe user's first event
            probes.emitted.append(time.monotonic())
            meter.flush(30)
            probes.start()
            calls, sent = iter(simulate(sum(steps) * int(seconds) * 2 + WARM_UP_RATE * 10, USERS, resend_ratio=0.05,
                                        seed=11)), []
            with console.status("warming up: the workers share the partitions, the sink joins..."):
                _emit_step(meter, WARM_UP_RATE, warm_up, probes, calls, sent)
                meter.flush(30)
            sampler = None
            parts = {"emitter (SDK)": [os.getpid()], "workers": [worker.pid for worker in workers], "sink": [sink.pid],
                     "broker": [broker_status(settings).pid or 0]}
            for rate in steps:
                with console.status(f"offering {rate:,} events/s for {seconds:.0f} s..."):
                    if rate == PROFILED_RATE:  # where a worker's time goes, at the rate the issue asks for
                        sampler = start_sampling(workers[0].pid, seconds - 2, PROFILE_PATH)
                    used = {part: sum(map(cpu_seconds, pids)) for part, pids in parts.items() if all(pids)}
                    before = (time.monotonic(), offsets.end(settings.rated_topic), offsets.committed(settings.rated_topic),
                              len(probes.latencies))
                    emitted = _emit_step(meter, rate, seconds, probes, calls, sent)
                    meter.flush(30)
                    now, rated, stored = time.monotonic(), offsets.end(settings.rated_topic), offsets.committed(settings.rated_topic)
                    cores = {part: (sum(map(cpu_seconds, parts[part])) - was) / (now - before[0]) for part, was in used.items()}
                    produced = offsets.end(settings.usage_topic)
                latencies = probes.latencies[before[3]:]
                found.append(Step(rate, emitted, (rated - before[1]) / (now - before[0]), (stored - before[2]) / (now - before[0]),
                                  produced - rated, rated - stored, percentile(latencies, 0.5), percentile(latencies, 0.99),
                                  len(latencies), cores))
    finally:
        if sampler is not None:
            sampler.wait(seconds + 30)
        probes.stop()
        offsets.close()
        sink.terminate()
        sink.join(30)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(60)
    return found


def knee(steps: list[Step], seconds: float) -> Step | None:
    """The first step whose balance lag grew by more than KNEE_LAG_SHARE of the events it offered."""
    previous = 0
    for step in steps:
        if step.balance_lag - previous > KNEE_LAG_SHARE * step.emitted * seconds:
            return step
        previous = step.balance_lag
    return None


def plot(steps: list[Step], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    from matplotlib import pyplot

    figure, rates = pyplot.subplots(figsize=(8, 4.5))
    offered = [step.offered for step in steps]
    for label, values in (("emitted", [s.emitted for s in steps]), ("into balances", [s.into_balances for s in steps]),
                          ("into ClickHouse", [s.into_clickhouse for s in steps])):
        rates.plot(offered, values, marker="o", label=label)
    rates.plot(offered, offered, linestyle=":", color="grey", label="offered")
    rates.set_xlabel("offered events/s")
    rates.set_ylabel("sustained events/s")
    latency = rates.twinx()
    latency.plot(offered, [s.freshness_p50 * 1000 for s in steps], color="black", linestyle="--", label="freshness p50")
    latency.plot(offered, [s.freshness_p99 * 1000 for s in steps], color="red", linestyle="--", label="freshness p99")
    latency.set_ylabel("emit -> balance, ms")
    latency.set_yscale("log")
    handles = rates.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    rates.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize="small")
    rates.set_title(f"meterline end to end, {WORKERS} workers and the sink, stepped load")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(quick: bool = False) -> list[Figure]:
    base = load_settings()
    stack_up(base)
    steps, seconds, warm_up = (QUICK_STEPS, QUICK_STEP_SECONDS, QUICK_WARM_UP_SECONDS) if quick else (
        STEPS, STEP_SECONDS, WARM_UP_SECONDS)
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as directory:
        settings = base.model_copy(update={
            "usage_topic": f"bench-load-{run}", "rated_topic": f"bench-load-rated-{run}", "app_id": f"bench-load-{run}",
            "dead_letter_topic": f"bench-load-dlq-{run}", "sink_group": f"bench-load-sink-{run}", "worker_port": free_port(),
            "chdb_path": Path(directory) / "chdb", "clickhouse_url": None})
        ensure_topics(settings)
        measured = run_steps(settings, steps, seconds, warm_up)
    delete_topics(base)
    table = Table(title=f"end to end, {WORKERS} workers + the sink, {seconds:.0f} s a step, {USERS:,} power-law users, 5 % re-sent")
    # events/s offered and reached; lags in events at the step's end; emit -> balance freshness of the probes
    for column in ("offered", "emitted", "balances", "ClickHouse", "lag", "sink lag", "p50 ms", "p99 ms", "probes"):
        table.add_column(column, justify="right")
    for s in measured:
        table.add_row(f"{s.offered:,}", f"{s.emitted:,.0f}", f"{s.into_balances:,.0f}", f"{s.into_clickhouse:,.0f}",
                      f"{s.balance_lag:,}", f"{s.sink_lag:,}", f"{s.freshness_p50 * 1000:,.0f}",
                      f"{s.freshness_p99 * 1000:,.0f}", str(s.probes))
    console.print(table)
    bend = knee(measured, seconds)
    console.print(f"knee: {'none up to the last step' if bend is None else f'{bend.offered:,} events/s offered'}")
    path = RESULTS_DIR / "load.png"
    plot(measured, path)
    console.print(f"plot: {path}")
    best = max((s.into_balances for s in measured if bend is None or s.offered < bend.offered), default=float("nan"))
    figures = [Figure("end to end, sustained into balances below the knee", best, "events/s", target=">= 10,000 events/s",
                      met=None if quick else best >= 10_000),  # a quick run's steps are too short to sustain
               Figure("end to end, the knee (offered events/s where lag starts to grow)",
                      float("nan") if bend is None else bend.offered, "events/s")]
    for s in measured:
        figures += [Figure(f"end to end at {s.offered:,}/s offered: into balances", s.into_balances, "events/s"),
                    Figure(f"end to end at {s.offered:,}/s offered: into ClickHouse", s.into_clickhouse, "rows/s"),
                    Figure(f"end to end at {s.offered:,}/s offered: freshness p99", s.freshness_p99 * 1000, "ms",
                           target="<= 1,000 ms at 5,000/s" if s.offered == 5_000 else "",
                           met=s.freshness_p99 <= 1 if s.offered == 5_000 else None)]
    return figures + where_the_time_goes(measured)


def where_the_time_goes(measured: list[Step]) -> list[Figure]:
    """The CPU each part of the pipeline used at each step, and py-spy's sample of a worker."""
    parts = list(measured[0].cores) if measured else []
    table = Table(title=f"where the CPU goes: cores used per step, of {os.cpu_count()} (the broker, the emitter and "
                        f"the sink share them with the workers)")
    for column in ("offered", *parts, "total"):
        table.add_column(column, justify="right")
    for s in measured:
        table.add_row(f"{s.offered:,}", *(f"{s.cores[part]:.2f}" for part in parts), f"{sum(s.cores.values()):.2f}")
    console.print(table)
    figures = [Figure(f"end to end at {s.offered:,}/s offered: cores used by the {part}", s.cores[part], "cores")
               for s in measured if s.offered == PROFILED_RATE for part in parts]
    if not PROFILE_PATH.exists():
        console.print("no profile of a worker: py-spy is not installed, or could not attach")
        return figures
    samples, packages, functions = summarize(PROFILE_PATH)
    table = Table(title=f"one worker at {PROFILED_RATE:,}/s offered: py-spy, {samples:,} samples on a CPU ({PROFILE_PATH})")
    for column in ("own code of", "share", "meterline function (and what it calls)", "share"):
        table.add_column(column, justify="right" if column == "share" else "left")
    for (package, own), (function, within) in zip(packages, functions):
        table.add_row(package, f"{own:.0%}", function, f"{within:.0%}")
    console.print(table)
    return figures + [Figure(f"a worker at {PROFILED_RATE:,}/s: CPU samples in {package}'s own code", own * 100, "%")
                      for package, own in packages[:6]]

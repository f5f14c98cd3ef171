"""Emit throughput of the SDK vs bare confluent-kafka, same bytes, same broker, same run.

    python -m meterline.benchmarks emit      # or `make bench`; ~15 s

The process is pinned to one CPU (librdkafka's threads included). Runs alternate SDK and bare
so both see the same broker and machine state. The ratio is the median over pairs of adjacent
runs (an SDK run and the bare run right after it), which cancels most of a shared machine's drift;
each side also reports the median of its runs.
A run counts from the first emit to the last acknowledgement (`flush`), so it measures
delivered events, not queued ones.

- SDK: ``Meter.emit(org, user, model, input_tokens, output_tokens)`` - validation, request id,
  timestamp, JSON, produce, delivery accounting.
- bare: ``Producer.produce(topic, value, key)`` and ``poll(0)`` of the JSON bytes the SDK
  produced, prepared before the clock starts, with the SDK's producer configuration and a
  default delivery callback that counts failures (the minimum a correct producer does). Like
  the SDK, it gets every delivery report in Python and passes no keyword to `produce`.
- bare, on_delivery= per call: the same, written as confluent-kafka's examples do. Parsing that
  keyword costs ~0.4 us a call; shown for reference, it is not what the target compares with.

Targets (issue 4): SDK >= 50,000 events/s, and SDK time per event <= 2x bare.
The broker is the local one (`meterline stack up`; METERLINE_* variables are honoured).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from meterline.benchmarks.results import Figure
from meterline.producers import Meter, build_event
from meterline.producers.engine import producer_config
from meterline.producers.encoder import EventEncoder
from meterline.settings import Settings, load_settings
from meterline.stack import ensure_topics, stack_up

EVENTS = 100_000  # per run
RUNS = 11  # per side, alternating
USERS = 1_000
TARGET_RATE = 50_000
TARGET_RATIO = 2.0


def _pin_to_one_cpu() -> str:
    try:
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):  # not Linux: report it rather than pretend
        return "not pinned (no sched_setaffinity)"


def _calls() -> list[tuple[str, str, str, int, int]]:
    return [("acme", f"user-{i % USERS}", "gpt-4o-mini", 200 + i % 3000, 50 + i % 700) for i in range(EVENTS)]


def _run_sdk(meter: Meter, calls: list[tuple[str, str, str, int, int]]) -> float:
    emit = meter.emit
    start = time.perf_counter()
    for org, user, model, tokens_in, tokens_out in calls:
        emit(org, user, model, tokens_in, tokens_out)
    stats = meter.flush(60)
    elapsed = time.perf_counter() - start
    if stats.in_flight or stats.spool_pending or stats.lost:
        raise RuntimeError(f"SDK run did not deliver everything: {stats}")
    return EVENTS / elapsed


class _Bare:
    """A plain confluent-kafka producer with the SDK's configuration; counts failed deliveries."""

    def __init__(self, settings: Settings, per_call: bool):
        self.failures = 0
        self.per_call = per_call  # pass the callback to each produce() rather than as the default
        self.producer = Producer({**producer_config(settings), "on_delivery": self.delivered})

    def delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self.failures += 1

    def run(self, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
        produce, poll, delivered = self.producer.produce, self.producer.poll, self.delivered
        start = time.perf_counter()
        for key, value in messages:
            while True:
                try:
                    if self.per_call:
                        produce(topic, value, key, on_delivery=delivered)
                    else:
                        produce(topic, value, key)
                    break
                except BufferError:
                    poll(0.005)
            poll(0)
        remaining = self.producer.flush(60)
        elapsed = time.perf_counter() - start
        if remaining or self.failures:
            raise RuntimeError(f"bare run: {remaining} unacknowledged, {self.failures} failed")
        return len(messages) / elapsed


def _micro(calls: list[tuple[str, str, str, int, int]]) -> dict[str, float]:
    """Per-event CPU cost of the encoding step alone (no Kafka), in microseconds."""
    sample = calls[:20_000]
    encoder = EventEncoder()
    for call in sample:  # as in the runs: each user's escaped strings already cached
        encoder.encode(*call)
    start = time.perf_counter()
    for call in sample:
        encoder.encode(*call)
    fast = (time.perf_counter() - start) / len(sample) * 1e6
    start = time.perf_counter()
    for org, user, model, tokens_in, tokens_out in sample:
        build_event(org, user, model, tokens_in, tokens_out).to_json()
    schema = (time.perf_counter() - start) / len(sample) * 1e6
    return {"fast encoder (emit)": fast, "pydantic build_event + to_json": schema}


def main(quick: bool = False) -> list[Figure]:
    """Run the comparison, print the table, return the figures."""
    runs = 3 if quick else RUNS
    settings: Settings = load_settings()
    stack_up(settings)
    topic = f"bench-emit-{os.getpid()}"
    bench = settings.model_copy(update={"usage_topic": topic, "dead_letter_topic": f"{topic}-dlq"})
    ensure_topics(bench)
    pinning = _pin_to_one_cpu()
    calls = _calls()
    with tempfile.TemporaryDirectory() as spool:
        meter = Meter(bench, spool_dir=Path(spool))
        # The bare side sends exactly the bytes the SDK produces, encoded before the clock starts.
        encoder = EventEncoder(meter.source)
        messages = [encoder.encode(*call)[1:] for call in calls]
        bare, idiom = _Bare(bench, per_call=False), _Bare(bench, per_call=True)
        # warm-up: connections, producer ids, topic metadata
        _run_sdk(meter, calls[:5_000])
        bare.run(topic, messages[:5_000])
        idiom.run(topic, messages[:5_000])
        rates: dict[str, list[float]] = {"SDK": [], "bare": [], "bare, on_delivery= per call": []}
        started = time.perf_counter()
        for _ in range(runs):
            rates["SDK"].append(_run_sdk(meter, calls))
            rates["bare"].append(bare.run(topic, messages))
            rates["bare, on_delivery= per call"].append(idiom.run(topic, messages))
        wall = time.perf_counter() - started
        meter.close()
    micro = _micro(calls)
    sdk = statistics.median(rates["SDK"])
    pairs = sorted(bare_rate / sdk_rate for sdk_rate, bare_rate in zip(rates["SDK"], rates["bare"], strict=True))
    ratio = statistics.median(pairs)
    print(f"emit throughput: {EVENTS:,} events per run, {runs} runs per side alternating, {pinning}, "
          f"{len(messages[0][1])} B/event, lz4, acks=all, idempotent; {wall:.1f} s")
    print(f"{'':<29}{'median ev/s':>12}{'us/event':>10}{'min':>10}{'max':>10}   runs")
    for name, series in rates.items():
        median = statistics.median(series)
        print(f"{name:<29}{median:>12,.0f}{1e6 / median:>10.2f}{min(series):>10,.0f}{max(series):>10,.0f}   "
              + ", ".join(f"{rate:,.0f}" for rate in series))
    print(f"SDK cost vs bare: {ratio:.2f}x per event, median of {len(pairs)} adjacent pairs "
          f"(quartiles {pairs[len(pairs) // 4]:.2f}-{pairs[3 * len(pairs) // 4]:.2f}; target <= {TARGET_RATIO}x)  "
          f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
    idiom_ratio = statistics.median(rates["bare, on_delivery= per call"]) / sdk
    print(f"  (vs bare with on_delivery= per call: {idiom_ratio:.2f}x; for reference only)")
    print(f"SDK rate: {sdk:,.0f} ev/s (target >= {TARGET_RATE:,})  {'OK' if sdk >= TARGET_RATE else 'MISSED'}")
    for name, micros in micro.items():
        print(f"  encode only, {name}: {micros:.2f} us/event")
    return [Figure("SDK emit", sdk, "events/s", "bare confluent-kafka produce", 1 / ratio, f">= {TARGET_RATE:,} events/s",
                   sdk >= TARGET_RATE),
            Figure("SDK cost per event vs bare produce", ratio, "x", "bare confluent-kafka produce", ratio,
                   f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO)]

"""Emit throughput of the SDK vs bare confluent-kafka, same bytes, same broker, same run.

    python -m meterline.benchmarks emit      # or `make bench`; ~25 s

The process is pinned to one CPU (librdkafka's threads included). Runs alternate SDK and bare
so both see the same broker and machine state; each side reports the median of its runs.
A run counts from the first emit to the last acknowledgement (`flush`), so it measures
delivered events, not queued ones.

- SDK: ``Meter.emit(org, user, model, input_tokens, output_tokens)`` - validation, request id,
  timestamp, JSON, produce, delivery accounting.
- bare: ``Producer.produce(topic, value, key, on_delivery=...)`` of the JSON bytes the SDK
  produced, prepared before the clock starts, with the SDK's librdkafka settings and a
  delivery callback that counts failures (the minimum a correct producer does).

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

from meterline.producers import Meter, build_event
from meterline.producers.engine import producer_config
from meterline.producers.encoder import EventEncoder
from meterline.settings import Settings, load_settings
from meterline.stack import ensure_topics, stack_up

EVENTS = 100_000  # per run
RUNS = 5  # per side, alternating
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


def _run_bare(producer: Producer, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    failures = 0

    def delivered(error: object, _message: object) -> None:
        nonlocal failures
        if error is not None:
            failures += 1

    produce, poll = producer.produce, producer.poll
    start = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                poll(0.005)
        poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - start
    if remaining or failures:
        raise RuntimeError(f"bare run: {remaining} unacknowledged, {failures} failed")
    return EVENTS / elapsed


def _micro(calls: list[tuple[str, str, str, int, int]]) -> dict[str, float]:
    """Per-event CPU cost of the encoding step alone (no Kafka), in microseconds."""
    sample = calls[:20_000]
    encoder = EventEncoder()
    start = time.perf_counter()
    for call in sample:
        encoder.encode(*call)
    fast = (time.perf_counter() - start) / len(sample) * 1e6
    start = time.perf_counter()
    for org, user, model, tokens_in, tokens_out in sample:
        build_event(org, user, model, tokens_in, tokens_out).to_json()
    schema = (time.perf_counter() - start) / len(sample) * 1e6
    return {"fast encoder (emit)": fast, "pydantic build_event + to_json": schema}


def main(seconds: float = 25.0) -> None:
    """Run the comparison and print the table; `seconds` is informational (runs are fixed-size)."""
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
        bare = Producer(producer_config(bench))
        _run_sdk(meter, calls[:5_000] * 1)  # warm-up: connections, producer id, topic metadata
        bare.produce(topic, messages[0][1], messages[0][0])
        bare.flush(30)
        sdk_rates, bare_rates = [], []
        started = time.perf_counter()
        for _ in range(RUNS):
            sdk_rates.append(_run_sdk(meter, calls))
            bare_rates.append(_run_bare(bare, topic, messages))
        wall = time.perf_counter() - started
        meter.close()
    micro = _micro(calls)
    sdk, raw = statistics.median(sdk_rates), statistics.median(bare_rates)
    ratio = raw / sdk
    print(f"emit throughput: {EVENTS:,} events per run, {RUNS} runs per side alternating, {pinning}, "
          f"{len(messages[0][1])} B/event, lz4, acks=all, idempotent; {wall:.1f} s")
    print(f"{'':<8}{'median ev/s':>14}{'min':>12}{'max':>12}   runs")
    for name, rates in (("SDK", sdk_rates), ("bare", bare_rates)):
        print(f"{name:<8}{statistics.median(rates):>14,.0f}{min(rates):>12,.0f}{max(rates):>12,.0f}   "
              + ", ".join(f"{rate:,.0f}" for rate in rates))
    print(f"SDK cost vs bare: {ratio:.2f}x per event (target <= {TARGET_RATIO}x)  "
          f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
    print(f"SDK rate: {sdk:,.0f} ev/s (target >= {TARGET_RATE:,})  {'OK' if sdk >= TARGET_RATE else 'MISSED'}")
    for name, micros in micro.items():
        print(f"  encode only, {name}: {micros:.2f} us/event")

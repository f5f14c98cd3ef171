"""Helpers for tests that run the real worker and sink."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from meterline.auth import operator_key, org_key
from meterline.client import get_balance, wait_until_serving
from meterline.exceptions import MeterlineError
from meterline.processors.watchdog import EXIT_STUCK
from meterline.processors.worker import spawn_worker
from meterline.producers import Meter
from meterline.schemas import UsageEvent
from meterline.settings import Settings
from meterline.sinks import ClickHouseSink, Warehouse
from meterline.stack import ensure_topics, free_port


@dataclass
class Pipeline:
    settings: Settings
    warehouse: Warehouse
    worker: subprocess.Popen[bytes]

    def start_worker(self) -> None:
        self.worker = spawn_worker(self.settings, log_path=str(self.settings.home / "worker.log"))
        self.wait_until_serving()

    def restart_if_stuck(self) -> None:
        """Start the worker again if it exited as stuck (code 75), as its supervisor does in production
        (processors/supervisor.py). Any other exit, a test's own kill or a crash, is left for the test."""
        if self.worker.poll() == EXIT_STUCK:
            self.worker = spawn_worker(self.settings, log_path=str(self.settings.home / "worker.log"))
            print(f"the worker exited as stuck (code {EXIT_STUCK}); started again, as a supervisor would")

    def wait_until_serving(self) -> None:
        token = org_key(self.settings.api_secret.get_secret_value(), "probe-org")  # type: ignore[union-attr]
        wait_until_serving(self.settings.worker_url, token, "probe-org", timeout=180)

    def kill_worker(self) -> None:
        stop(self.worker, kill=True)

    def stats(self) -> dict[str, int]:
        """The worker's counters (/v1/worker/stats, with the operator key)."""
        token = operator_key(self.settings.api_secret.get_secret_value())  # type: ignore[union-attr]
        request = urllib.request.Request(f"{self.settings.worker_url}/v1/worker/stats",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def balance(self, org_id: str, user_id: str) -> dict:
        token = org_key(self.settings.api_secret.get_secret_value(), org_id)  # type: ignore[union-attr]
        return get_balance(self.settings.worker_url, token, org_id, user_id)

    def org_balance(self, org_id: str) -> dict:
        """GET /v1/orgs/{org}/balance: the org's total and its pool's current cycle."""
        token = org_key(self.settings.api_secret.get_secret_value(), org_id)  # type: ignore[union-attr]
        request = urllib.request.Request(f"{self.settings.worker_url}/v1/orgs/{org_id}/balance",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def another_worker(settings: Settings) -> tuple[Settings, subprocess.Popen[bytes]]:
    """One more worker of the same app (it shares the partitions), on a port of its own."""
    other = settings.model_copy(update={"worker_port": free_port()})
    return other, spawn_worker(other, log_path=str(settings.home / f"worker-{other.worker_port}.log"))


def stop(process: subprocess.Popen[bytes], kill: bool = False) -> None:
    """SIGKILL, or SIGTERM, which must stop a worker promptly (a hang is a failure, after a kill)."""
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise AssertionError(f"worker {process.pid} did not stop within 30 s of SIGTERM") from None


def wait_for(condition: Callable[[], bool], timeout: float = 90.0, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def counted(pipeline: Pipeline, org_id: str, users: set[str]) -> int:
    """Events the worker has counted for these users, or -1 while it cannot answer."""
    try:
        return sum(pipeline.balance(org_id, user)["events"] for user in users)
    except urllib.error.URLError:
        return -1


def off_balances(pipeline: Pipeline, org_id: str, expected: dict[str, Decimal]) -> dict[str, tuple[Decimal, Decimal]]:
    """The balances that differ from `expected`, as (API, expected); URLError while the worker cannot answer."""
    actual = {user: pipeline.balance(org_id, user)["credits_used"] for user in expected}
    return {user: (actual[user], credits) for user, credits in expected.items() if actual[user] != credits}


def balances_match(pipeline: Pipeline, org_id: str, expected: dict[str, Decimal]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return not off_balances(pipeline, org_id, expected)
        except urllib.error.URLError:  # 503 while the worker rebalances, or not listening yet
            return False

    return check


def balance_differences(pipeline: Pipeline, org_id: str, expected: dict[str, Decimal]) -> str:
    """For an assertion message: which balances are off, as (API, expected), or why none could be read."""
    try:
        return f"balances off (API, expected): {off_balances(pipeline, org_id, expected)}"
    except urllib.error.HTTPError as error:
        return f"the worker answers {error.code} {error.read().decode(errors='replace')}\n{worker_logs(pipeline.settings)}"
    except urllib.error.URLError as error:
        return f"the worker does not answer: {error}\n{worker_logs(pipeline.settings)}"


def worker_logs(settings: Settings, lines: int = 40) -> str:
    """The last lines of every worker log in this test's home, for a failure's message."""
    tails = []
    for path in sorted(settings.home.glob("*worker*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(tails)


@contextmanager
def running_pipeline(settings: Settings, with_sink: bool = True) -> Iterator[Pipeline]:
    """A worker child process plus a sink thread in this process (it owns chDB)."""
    ensure_topics(settings)
    warehouse = Warehouse(settings)
    stopping = threading.Event()
    sink_thread = None
    if with_sink:
        sink_thread = threading.Thread(target=ClickHouseSink(settings, warehouse).run, args=(stopping,), daemon=True)
        sink_thread.start()
    pipeline = Pipeline(settings, warehouse, spawn_worker(settings, log_path=str(settings.home / "worker.log")))
    keeper = threading.Thread(target=keep_restarting_when_stuck, args=(pipeline, stopping), daemon=True)
    keeper.start()
    try:
        pipeline.wait_until_serving()
        yield pipeline
    finally:
        stopping.set()
        keeper.join(timeout=100)
        if pipeline.worker.poll() is None:
            stop(pipeline.worker)
        if sink_thread is not None:
            sink_thread.join(timeout=30)


def keep_restarting_when_stuck(pipeline: Pipeline, stopping: threading.Event) -> None:
    while not stopping.wait(0.5):
        try:
            pipeline.restart_if_stuck()
        except MeterlineError as error:  # it did not come up (the broker is down, say): again, as a supervisor would
            print(f"the worker did not start again: {error}")


def topic_size(settings: Settings, topic: str, attempts: int = 50) -> int:
    """Messages ever written to `topic` (sum of high watermarks), retrying while leaders settle."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "size-probe"})
    try:
        for attempt in range(attempts):
            try:
                return sum(
                    consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
                    for partition in range(settings.partitions)
                )
            except KafkaException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def expected_credits(events: list[UsageEvent]) -> dict[str, Decimal]:
    """Ground truth, computed here: every event without an action costs tokens / 1000 credits."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for event in events:
        totals[event.data.user_id] += (Decimal(event.data.input_tokens) + event.data.output_tokens) / 1000
    return dict(totals)


def make_events(meter: Meter, org_id: str, count: int, users: int, seed: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    return [
        meter.build(org_id, f"u{rng.randrange(users)}", "gpt-4o-mini", rng.randrange(0, 5000), rng.randrange(0, 2000))
        for _ in range(count)
    ]


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 60.0,
               drain: bool = False) -> list[Message]:
    """Messages of `topic` from the start until `expected` have arrived (or `timeout` passes);
    with `drain`, also whatever follows within a second (copies beyond `expected`)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(messages) < expected:
            messages.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        if drain:
            messages.extend(m for m in consumer.consume(1000, timeout=1.0) if m.error() is None)
    finally:
        consumer.close()
    return messages

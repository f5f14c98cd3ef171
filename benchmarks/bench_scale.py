"""Scale: the same number of events over 10,000 and over 1,000,000 distinct users.

Each case, on a topic of its own holding EVENTS events (every request id distinct, so the dedupe
memory is the same size in both and what differs is the per-user state):

1. one worker processes the topic from a fresh state: its rate, and its memory (RSS) once done;
2. the state it wrote: records and bytes on the broker's disk of the user-state and
   remembered-ids changelogs;
3. a restart: the worker stopped (how long its clean stop takes), a new one started; the recovery time is its start -> its first
   balance answer (it reads every changelog record back first), and its memory once restored;
4. (not in a quick run) a second worker joins (how long until both serve), then is killed with SIGKILL: one probe user
   per partition gets an event right after the kill, and each probe's wait is the kill -> the
   first balance answer counting that event. The survivor's users are served at once; the killed
   worker's wait for the broker to notice (the session timeout) and their partitions' recovery.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from meterline.auth import operator_key, org_key, resolve_secret
from meterline.benchmarks.bench_load import Offsets
from meterline.benchmarks.bench_pipeline import delete_topics, get_json, handled, worker_settings
from meterline.benchmarks.results import Figure
from meterline.client import get_balance
from meterline.processors.app import REMEMBERED_IDS_TABLE, USER_STATE_TABLE, changelog_topic
from meterline.processors.enforcement import user_partition
from meterline.processors.worker import spawn_worker
from meterline.producers import build_event
from meterline.settings import Settings, load_settings
from meterline.stack import free_port, produce_and_wait, stack_up

EVENTS, QUICK_EVENTS = 1_000_000, 20_000
USERS, QUICK_USERS = (10_000, 1_000_000), (1_000, 20_000)
ORG = "scale"
POLL_SECONDS = 0.05
console = Console()


@dataclass(frozen=True)
class Case:
    users: int
    events_per_second: float
    start_up_seconds: float  # a worker with no state: its start -> its first event processed
    rss_after_processing: int  # bytes
    state_records: int  # user-state changelog records written
    state_bytes: int  # on the broker's disk
    id_records: int
    id_bytes: int
    stop_seconds: float  # SIGTERM -> the process gone (a clean stop: flushed, committed)
    recovery_seconds: float  # a restart: its start -> its first balance answer
    rss_restored: int
    join_seconds: float  # a second worker joins: until both serve
    waits: list[float]  # per probe user: the kill -> served again, s (the survivor's users: at once)


def fill_topic(settings: Settings, topic: str, events: int, users: int) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})  # kept: its futures end with it
    admin.create_topics([NewTopic(topic, settings.partitions, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 20, "compression.type": "lz4"})
    for i in range(events):
        event = build_event(ORG, f"user-{i % users}", "gpt-4o-mini", 100 + i % 900, 10 + i % 90)
        while True:
            try:
                producer.produce(topic, event.to_json(), event.user_key.encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)


def rss(process: subprocess.Popen[bytes]) -> int:
    """The process's resident memory, bytes."""
    line = next(line for line in Path(f"/proc/{process.pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def on_disk(settings: Settings, topic: str) -> int:
    """Bytes of records the broker holds for the topic."""
    logs = settings.kafka_data_dir / "logs"
    # Only the segments: the broker preallocates each partition's index files (10 MiB apiece).
    return sum(file.stat().st_size for p in range(settings.partitions) for file in (logs / f"{topic}-{p}").glob("*.log"))


def wait_for(condition, deadline: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll until `condition()` holds; the seconds it took. A benchmark that cannot go on fails, it does not hang."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > deadline:
            raise TimeoutError(f"{what}: not within {deadline:.0f} s")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - began


def _answers(url: str, token: str, user: str, events: int) -> bool:
    try:
        return get_balance(url, token, ORG, user)["events"] >= events
    except OSError:  # not served this moment: refused, 503 while recovering, a redirect to the dead owner
        return False


def _serving(url: str) -> bool:
    try:
        return get_json(f"{url}/healthz").get("serving") is True
    except OSError:
        return False


def probe_users(partitions: int) -> list[str]:
    """One user per partition (the SDK's partitioner decides where a user lives)."""
    found: dict[int, str] = {}
    for k in range(100 * partitions):
        found.setdefault(user_partition(f"{ORG}/probe-{k}".encode(), partitions), f"probe-{k}")
    return [found[p] for p in sorted(found)]


def _emit_probes(settings: Settings, topic: str, users: list[str]) -> None:
    events = [build_event(ORG, user, "gpt-4o-mini", 100, 10) for user in users]
    produce_and_wait(settings, topic, [(event.user_key.encode(), event.to_json()) for event in events])


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        process.wait(60)


def measure(base: Settings, users: int, events: int, failover: bool = True) -> Case:
    topic = app_id = f"bench-scale-{uuid.uuid4().hex[:8]}"  # so the app's topics (changelogs, rated records) are named after it
    with console.status(f"{users:,} users: filling a topic with {events:,} events..."):
        fill_topic(base, topic, events, users)
    operator, token = operator_key(resolve_secret(base)), org_key(resolve_secret(base), ORG)
    probes = probe_users(base.partitions)
    first = worker_settings(base, topic, app_id)
    with console.status(f"{users:,} users: one worker processes {events:,} events..."):
        began = time.monotonic()
        worker = spawn_worker(first)
        try:
            stats_url = f"{first.worker_url}/v1/worker/stats"
            wait_for(lambda: handled(get_json(stats_url, operator)) > 0, 120, "the first event")
            start_up, first_event = time.monotonic() - began, time.monotonic()  # the rate leaves start-up out
            wait_for(lambda: handled(get_json(stats_url, operator)) >= events, events / 1_000 + 60, "processing the topic")
            rate = events / (time.monotonic() - first_event)
            _emit_probes(first, topic, probes)  # each probe user's first event
            wait_for(lambda: all(_answers(first.worker_url, token, user, 1) for user in probes), 60, "the probes' first events")
            memory = rss(worker)
        finally:
            stopping = time.monotonic()
            _stop(worker)
            stop = time.monotonic() - stopping
    state, ids = changelog_topic(first, USER_STATE_TABLE), changelog_topic(first, REMEMBERED_IDS_TABLE)
    with console.status(f"{users:,} users: a restart recovers the state..."):
        began = time.monotonic()
        survivor = spawn_worker(first)
        try:
            # Every partition is this worker's: its answer for the last user means all are recovered.
            wait_for(lambda: _answers(first.worker_url, token, f"user-{(events - 1) % users}", 1), 600, "the restart's recovery")
            recovery = time.monotonic() - began
            memory_restored = rss(survivor)
            join, waits = join_and_kill(first, topic, token, probes) if failover else (float("nan"), [])
        finally:
            _stop(survivor)
    offsets = Offsets(base)
    try:
        found = Case(users, rate, start_up, memory, offsets.end(state), on_disk(base, state), offsets.end(ids), on_disk(base, ids),
                    stop, recovery, memory_restored, join, waits)
    finally:
        offsets.close()
    delete_topics(base, topic)  # gigabytes a later benchmark's broker would otherwise keep compacting
    return found


def join_and_kill(first: Settings, topic: str, token: str, probes: list[str]) -> tuple[float, list[float]]:
    """A second worker beside `first`'s: how long until both serve; then its SIGKILL, and each probe
    user's wait until the survivor serves them with the event emitted right after the kill."""
    second = first.model_copy(update={"worker_port": free_port()})
    joined = time.monotonic()
    joiner = spawn_worker(second)
    try:
        # Until it has its share of the partitions (before its first assignment it answers, not
        # serving) and every user is served through either worker.
        wait_for(lambda: _serving(second.worker_url) and all(
            _answers(url, token, user, 1) for url in (first.worker_url, second.worker_url) for user in probes),
                 600, "the second worker's join")
        join = time.monotonic() - joined
    finally:
        _stop(joiner, signal.SIGKILL)
    killed = time.monotonic()
    _emit_probes(first, topic, probes)
    waits: dict[str, float] = {}
    while len(waits) < len(probes) and time.monotonic() - killed < 600:
        for user in probes:
            if user not in waits and _answers(first.worker_url, token, user, 2):
                waits[user] = time.monotonic() - killed
        time.sleep(POLL_SECONDS)
    if len(waits) < len(probes):
        raise TimeoutError("a killed worker's users were not served again within 600 s")
    return join, sorted(waits.values())


def main(quick: bool = False) -> list[Figure]:
    base = load_settings()
    stack_up(base)
    events, cases = (QUICK_EVENTS, QUICK_USERS) if quick else (EVENTS, USERS)
    # A quick run leaves the failover out: the kill alone waits out the session timeout.
    measured = [measure(base, users, events, failover=not quick) for users in cases]
    failover = "" if quick else f", a second worker and its SIGKILL (session timeout {base.worker_session_timeout_seconds:g} s)"
    table = Table(title=f"scale: {events:,} events (every request id distinct), one worker, then a restart{failover}")
    table.add_column("")
    for c in measured:
        table.add_column(f"{c.users:,} users", justify="right")
    mib = 2**20
    rows = {"one worker, events/s": lambda c: f"{c.events_per_second:,.0f}",
            "start-up with no state, s": lambda c: f"{c.start_up_seconds:.1f}",
            "memory once processed, MiB": lambda c: f"{c.rss_after_processing / mib:,.0f}",
            "user-state changelog: records / MiB": lambda c: f"{c.state_records:,} / {c.state_bytes / mib:,.1f}",
            "remembered-ids changelog: records / MiB": lambda c: f"{c.id_records:,} / {c.id_bytes / mib:,.1f}",
            "a clean stop (SIGTERM -> gone), s": lambda c: f"{c.stop_seconds:.1f}",
            "restart: start -> first answer, s": lambda c: f"{c.recovery_seconds:.1f}",
            "memory once restored, MiB": lambda c: f"{c.rss_restored / mib:,.0f}",
            "a second worker joins: until both serve, s": lambda c: f"{c.join_seconds:.1f}" if c.waits else "-",
            "it is killed: users wait, least / most, s": lambda c: f"{min(c.waits):.1f} / {max(c.waits):.1f}" if c.waits else "-"}
    for label, shown in rows.items():
        table.add_row(label, *(shown(c) for c in measured))
    console.print(table)
    small, large = measured
    per_user = (large.rss_restored - small.rss_restored) / (large.users - small.users)
    console.print(f"memory per user state (restored RSS, {large.users:,} vs {small.users:,} users): {per_user:,.0f} bytes")
    figures = [Figure("scale: memory per user state in a worker", per_user, "bytes")]
    for c in measured:
        case = f"scale, {c.users:,} users"
        against = c is large  # the rate with many users as a ratio to the rate with few
        figures += [Figure(f"{case}: one worker's rate", c.events_per_second, "events/s", f"{small.users:,} users" if against else "",
                           c.events_per_second / small.events_per_second if against else None),
                    Figure(f"{case}: worker memory once restored", c.rss_restored / mib, "MiB"),
                    Figure(f"{case}: state on the broker (user states + ids)", (c.state_bytes + c.id_bytes) / mib, "MiB"),
                    Figure(f"{case}: a clean stop", c.stop_seconds, "s"),
                    Figure(f"{case}: recovery after a restart", c.recovery_seconds, "s")]
        if c.waits:
            figures += [Figure(f"{case}: a second worker joins, until both serve", c.join_seconds, "s"),
                        Figure(f"{case}: a killed worker's users wait (max)", max(c.waits), "s")]
    return figures

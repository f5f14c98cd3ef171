"""`meterline demo`: the whole path on embedded defaults, with a summary that checks itself.

Emit simulated power-law traffic (about 5 % re-sent with the same request id),
let the worker dedupe and roll up and the sink store rows in ClickHouse, then
compare the balance API with ClickHouse for every user. Exit code 1 if any differ.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from meterline.auth import org_key, resolve_secret
from meterline.client import get_balance, wait_until_serving
from meterline.pricing import Rater
from meterline.processors.worker import spawn_worker
from meterline.producers import Meter
from meterline.schemas import UsageEvent
from meterline.settings import Settings
from meterline.sinks import ClickHouseSink, Warehouse, queries
from meterline.stack import broker_status, stack_down, stack_up
from meterline.traffic import simulate

console = Console()


@dataclass
class Sent:
    events: list[UsageEvent] = field(default_factory=list)  # each built once: all distinct request ids
    resent: int = 0


def emit_traffic(meter: Meter, org_id: str, events: int, users: int, seed: int) -> Sent:
    rng = random.Random(seed)
    sent = Sent()
    for call in simulate(events, users, seed=seed):
        if call.resend and sent.events:
            meter.send(rng.choice(sent.events))  # a client retry: same request id, same payload
            sent.resent += 1
            continue
        event = meter.build(org_id, call.user_id, call.model, call.input_tokens, call.output_tokens,
                            latency_ms=call.latency_ms, action=call.action)
        meter.send(event)
        sent.events.append(event)
    meter.flush()
    return sent


def _wait_for_rows(warehouse: Warehouse, org_id: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        stored = warehouse.query(queries.count_distinct_events(org_id))[0][0]
        if stored >= expected:
            break
        time.sleep(0.5)
    return stored


def _api_balances(settings: Settings, token: str, org_id: str, expected: dict[str, Decimal],
                  timeout: float) -> dict[str, dict]:
    """Poll the balance API until it shows the expected credits (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    balances: dict[str, dict] = {}
    while True:
        try:
            balances = {user: get_balance(settings.worker_url, token, org_id, user) for user in expected}
        except urllib.error.HTTPError as error:
            if error.code != 503 or time.monotonic() > deadline:  # 503: rebalancing for a moment
                raise
            time.sleep(0.2)
            continue
        if all(balances[u]["credits_used"] == expected[u] for u in expected) or time.monotonic() > deadline:
            return balances
        time.sleep(0.5)


def run_demo(settings: Settings, events: int = 20_000, users: int = 300, seed: int = 7) -> int:
    started_broker = not broker_status(settings).answering
    with console.status("starting Kafka (first run fetches the jars with Maven)..."):
        stack_up(settings)
    stop = threading.Event()
    worker: subprocess.Popen[bytes] | None = None
    sink_thread: threading.Thread | None = None
    try:
        with console.status("starting the worker and the sink..."):
            # The warehouse first: if another process owns chDB this fails before anything is started.
            warehouse = Warehouse(settings)
            worker = spawn_worker(settings, log_path=str(settings.home / "worker.log"))
            sink = ClickHouseSink(settings, warehouse)
            sink_thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
            sink_thread.start()
        org_id = f"demo-{int(time.time())}"
        with console.status(f"emitting {events:,} events for {users} users..."), Meter(settings) as meter:
            sent = emit_traffic(meter, org_id, events, users, seed)
        expected: dict[str, Decimal] = {}
        rater = Rater.from_files(settings.prices, settings.plans)
        for event in sent.events:
            expected[event.data.user_id] = expected.get(event.data.user_id, Decimal(0)) + rater.rate(event).credits
        with console.status("waiting for the worker and ClickHouse to catch up..."):
            stored = _wait_for_rows(warehouse, org_id, len(sent.events), timeout=120)
            token = org_key(resolve_secret(settings), org_id)
            wait_until_serving(settings.worker_url, token, org_id)
            api = _api_balances(settings, token, org_id, expected, timeout=120)
        return _report(warehouse, org_id, sent, stored, api)
    finally:  # everything this demo started is stopped, whatever failed
        stop.set()
        if sink_thread is not None:
            sink_thread.join(timeout=30)
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        if started_broker:
            stack_down(settings)


def _report(warehouse: Warehouse, org_id: str, sent: Sent, stored: int, api: dict[str, dict]) -> int:
    total_sent = len(sent.events) + sent.resent
    counted = sum(b["events"] for b in api.values())
    console.print(f"\n[bold]meterline demo[/bold] org [cyan]{org_id}[/cyan]")
    console.print(f"events sent {total_sent:,} · distinct {len(sent.events):,} · "
                  f"counted {counted:,} · dropped as duplicates {total_sent - counted:,} · rows in ClickHouse {stored:,}")
    rows = warehouse.query(queries.credits_per_user(org_id))
    ch_credits = {user: credits for _org, user, credits, _events in rows}
    top = Table(title="top 10 users by credits (ClickHouse)")
    for column in ("user", "credits", "events", "balance API"):
        top.add_column(column, justify="right" if column != "user" else "left")
    for _org, user, credits, events in rows[:10]:
        top.add_row(user, f"{credits:,.3f}", str(events), f"{api[user]['credits_used']:,.3f}")
    console.print(top)
    p50, p90, p99 = warehouse.query(queries.credit_percentiles(org_id))[0][0]
    console.print(f"credits per user: p50 {p50:,.3f} · p90 {p90:,.3f} · p99 {p99:,.3f} "
                  f"(p99/p50 = {p99 / p50 if p50 else Decimal(0):,.1f}x)")
    mismatched = sorted(u for u in api if api[u]["credits_used"] != ch_credits.get(u))
    if mismatched or stored != len(sent.events) or counted != len(sent.events):
        console.print(f"[red]DISAGREE[/red]: {len(mismatched)} user(s) differ between the balance API and ClickHouse "
                      f"(e.g. {mismatched[:5]}); rows {stored} vs distinct {len(sent.events)}; counted {counted}")
        return 1
    console.print(f"[green]AGREE[/green]: the balance API and ClickHouse match for all {len(api)} users")
    return 0

"""`meterline worker --processes 2`: two workers, a killed one started again, one SIGTERM stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from meterline.auth import org_key
from meterline.client import get_balance, wait_until_serving
from meterline.processors.worker import child_environment, ensure_port_free, prepare_topics
from meterline.producers import Meter
from meterline.schemas import UsageEvent
from meterline.settings import Settings

from tests.integration.pipeline import expected_credits, make_events, wait_for


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def start_supervisor(settings: Settings, tmp_path: Path, *options: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`meterline worker --processes 2 [options]` on `settings`; the process, and the file its output goes to."""
    prepare_topics(settings)
    env = child_environment(settings)
    log = tmp_path / "supervisor.out"
    with open(log, "wb") as output:
        supervisor = subprocess.Popen([sys.executable, "-m", "meterline.cli", "worker", "--processes", "2", *options],
                                      env=env, stdout=output, stderr=subprocess.STDOUT)
    return supervisor, log


def test_processes_2_restarts_a_killed_worker_and_stops_on_sigterm(make_settings: Callable[..., Settings],
                                                                    tmp_path: Path) -> None:
    settings = make_settings(worker_log_level="warn")
    supervisor, log = start_supervisor(settings, tmp_path, "--loglevel", "info")
    urls = [f"http://{settings.worker_host}:{settings.worker_port + i}" for i in range(2)]
    token = org_key(settings.api_secret.get_secret_value(), "acme")  # type: ignore[union-attr]

    def credits_used(url: str, user: str) -> Decimal | None:
        """The user's credits through `url`; None for a 503, the answer while a worker restores its partitions."""
        try:
            return Decimal(get_balance(url, token, "acme", user)["credits_used"])
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            return None

    def balances_right(events: list[UsageEvent]) -> bool:  # either worker answers for any user, via the owner
        return all(credits_used(urls[i % 2], user) == credits
                   for i, (user, credits) in enumerate(sorted(expected_credits(events).items())))

    def emit(seed: int) -> list[UsageEvent]:
        with Meter(settings) as meter:
            events = make_events(meter, "acme", 300, users=20, seed=seed)
            for event in events:
                meter.send(event)
            meter.flush()
        return events

    try:
        for url in urls:
            wait_until_serving(url, token, "acme", timeout=120)
        first = children_of(supervisor.pid)
        assert len(first) == 2, log.read_text()
        events = emit(seed=5)
        assert wait_for(lambda: balances_right(events), timeout=60)

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(children_of(supervisor.pid) - {victim}) == 2, timeout=60), log.read_text()
        for url in urls:
            wait_until_serving(url, token, "acme", timeout=120)
        events += emit(seed=6)
        assert wait_for(lambda: balances_right(events), timeout=90)
        assert "exited with code -9" in log.read_text()
        for port in (settings.worker_port, settings.worker_port + 1):  # --loglevel reached every worker it started
            assert "[INFO]" in (settings.home / "logs" / f"worker-{port}.log").read_text()
    finally:
        workers = children_of(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=90)
    assert code == 0, log.read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # no orphan left behind


def _running(pid: int) -> bool:
    """Alive and not a zombie (an adopted child's exit may wait for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_workers_of_a_sigkilled_supervisor_stop_and_free_their_ports(make_settings: Callable[..., Settings],
                                                                        tmp_path: Path) -> None:
    """Left running, they would hold their ports: the next `meterline worker` would be refused."""
    settings = make_settings()
    supervisor, log = start_supervisor(settings, tmp_path)
    token = org_key(settings.api_secret.get_secret_value(), "acme")  # type: ignore[union-attr]
    try:
        for port in (settings.worker_port, settings.worker_port + 1):
            wait_until_serving(f"http://{settings.worker_host}:{port}", token, "acme", timeout=120)
        workers = children_of(supervisor.pid)
        assert len(workers) == 2, log.read_text()
        # The workers of a home share one Faust data folder: one a port left hundreds behind.
        assert sorted(path.name for path in settings.home.glob("faust*")) == ["faust"]
    finally:
        supervisor.kill()
        supervisor.wait(30)
    assert wait_for(lambda: not any(_running(pid) for pid in workers), timeout=45), log.read_text()
    for port in (settings.worker_port, settings.worker_port + 1):
        ensure_port_free(settings.model_copy(update={"worker_port": port}))  # raises while a worker holds it

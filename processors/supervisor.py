"""`meterline worker --processes N`: N worker processes on consecutive ports, each restarted when it exits.

A worker exits on purpose when it can no longer serve correctly (its agent crashed: code 70; its
recovery is stuck: code 75, see watchdog.py), relying on whoever started it to start it again. Under
a process manager (systemd, Kubernetes, Docker's restart policy) that is the manager; here it is this
loop. Several processes are how one machine uses more than one core: Python runs one at a time.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meterline.exceptions import MeterlineError
from meterline.processors.worker import spawn_worker
from meterline.settings import Settings, private_dir

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STEADY_SECONDS = 60.0  # a child that ran this long starts again without delay
STOP_SECONDS = 40.0  # a stop is bounded: past it the child is killed


@dataclass
class Child:
    settings: Settings
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF_SECONDS
    restart_at: float = 0.0


def child_settings(settings: Settings, processes: int) -> list[Settings]:
    """One worker per port, from `worker_port` on: each a static group member of its own."""
    return [settings.model_copy(update={"worker_port": settings.worker_port + i}) for i in range(processes)]


def supervise(settings: Settings, processes: int, stop: threading.Event, say: Callable[[str], None]) -> int:
    """Run `processes` workers until `stop` is set; restart any that exits. Returns 0 after a clean stop."""
    log_dir = settings.home / "logs"
    private_dir(log_dir)
    children = [Child(one) for one in child_settings(settings, processes)]
    try:
        while not stop.is_set():
            for child in children:
                _tend(child, log_dir, say)
            stop.wait(0.5)
    finally:
        _stop_all(children)
    return 0


def _tend(child: Child, log_dir: Path, say: Callable[[str], None]) -> None:
    port = child.settings.worker_port
    if child.process is not None:
        code = child.process.poll()
        if code is None:
            return
        ran = time.monotonic() - child.started_at
        child.process = None
        if ran >= STEADY_SECONDS:
            child.backoff = FIRST_BACKOFF_SECONDS
        say(f"worker on port {port} exited with code {code} after {ran:.0f} s; "
            f"starting it again in {_retry_later(child):.0f} s")
    if time.monotonic() < child.restart_at:
        return
    try:
        child.process = spawn_worker(child.settings, log_path=str(log_dir / f"worker-{port}.log"))
    except MeterlineError as error:  # it did not come up: try again later, never stop the others
        say(f"worker on port {port} did not start ({error}); trying again in {_retry_later(child):.0f} s")
        return
    child.started_at = time.monotonic()
    say(f"worker on port {port} serving (pid {child.process.pid}); log: {log_dir / f'worker-{port}.log'}")


def _retry_later(child: Child) -> float:
    """Start `child` again after its current backoff, doubled for the time after; returns the wait."""
    wait = child.backoff
    child.restart_at = time.monotonic() + wait
    child.backoff = min(wait * 2, MAX_BACKOFF_SECONDS)
    return wait


def _stop_all(children: list[Child]) -> None:
    running = [child.process for child in children if child.process is not None and child.process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop within %.0f s; killed", process.pid, STOP_SECONDS)
            process.kill()
            process.wait(10)

"""Start the Faust worker, in this process or as a child process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from meterline.exceptions import MeterlineError
from meterline.settings import Settings
from meterline.stack import ensure_topics


BALANCES_TABLE = "balances"
SEEN_REQUESTS_TABLE = "seen-requests"


def prepare_topics(settings: Settings) -> None:
    """Create every topic the worker uses before it starts, its tables' changelogs included.

    Left to Faust, a changelog created at start-up can show 0 partitions in the first metadata
    the worker reads; Faust then stops the agent (PartitionsMismatch) while the web server
    keeps answering stale balances.
    """
    ensure_topics(settings, compacted=tuple(f"{settings.app_id}-{table}-changelog" for table in (BALANCES_TABLE, SEEN_REQUESTS_TABLE)))


def run_worker(loglevel: str = "warn") -> None:
    """Run the worker in this process until SIGTERM/SIGINT (Faust handles both cleanly)."""
    from meterline.processors.app import app

    @app.task
    async def restore_log_level() -> None:  # runs once the worker has set up logging
        # Faust's start-up spinner sets the root logger to DEBUG and leaves it there, so aiokafka
        # and Faust build a debug record for every message sent (8 % of its CPU samples under load).
        logging.getLogger().setLevel(loglevel.upper())

    sys.argv = ["meterline-worker", "worker", "--loglevel", loglevel]
    app.main()


def spawn_worker(settings: Settings, env: dict[str, str] | None = None, log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start a worker as a child process with these settings; return once its web server answers."""
    prepare_topics(settings)
    child_env = {**os.environ, **(env or {}), **settings_env(settings)}
    command = [sys.executable, "-m", "meterline.processors"]
    if log_path:
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    else:
        process = subprocess.Popen(command, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        wait_until_healthy(settings, process)
    except MeterlineError:
        process.terminate()  # never leave a half-started worker behind
        process.wait(10)
        raise
    return process


def settings_env(settings: Settings) -> dict[str, str]:
    """The METERLINE_ variables that reproduce `settings` in a child process."""
    values = settings.model_dump(exclude_none=True)
    env = {}
    for name, value in values.items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"METERLINE_{name.upper()}"] = str(value)
    return env


def wait_until_healthy(settings: Settings, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MeterlineError(f"the worker exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{settings.worker_url}/healthz", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise MeterlineError(f"the worker did not answer on {settings.worker_url} within {timeout}s")

"""Start the Faust worker, in this process or as a child process."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

from meterline.exceptions import MeterlineError
from meterline.lifetime import stop_with_parent
from meterline.settings import Settings, load_settings, private_dir
from meterline.stack import ensure_topics
from meterline.stack.status import worker_health

# A child worker gets these settings and no other METERLINE_ variable: no warehouse URL, and
# the API secret only as a file (the environment of a process is readable in /proc/PID/environ).
WORKER_SETTINGS = (
    "home", "bootstrap", "kafka_host", "kafka_port", "usage_topic", "dead_letter_topic", "rated_topic",
    "partitions", "app_id", "worker_host", "worker_port", "dedupe_window_seconds",
    "dedupe_max_ids_per_partition", "worker_batch_size", "worker_batch_seconds", "worker_session_timeout_seconds",
    "worker_stuck_seconds", "worker_log_level", "prices", "plans", "api_secret_file", "subscriptions_topic",
    "key_revocations_topic", "default_plan", "alerts_topic", "price_books_topic", "pool_usage_topic",
    "decisions_topic", "reservation_ttl_seconds", "worker_parent_pid",
)


def prepare_topics(settings: Settings) -> None:
    """Create every topic the worker uses before it starts, its tables' changelogs included.

    Left to Faust, a changelog created at start-up can show 0 partitions in the first metadata
    the worker reads; Faust then stops the agent (PartitionsMismatch). A changelog must also have
    exactly the source's partition count: the worker writes a user's state to the partition of
    the user's events.
    """
    from meterline.processors.app import TABLES, changelog_topic

    ensure_topics(settings, compacted=(*(changelog_topic(settings, table) for table in TABLES),
                                       settings.subscriptions_topic, settings.key_revocations_topic,
                                       settings.price_books_topic))


def ensure_port_free(settings: Settings) -> None:
    """Refuse a second worker on a taken port, saying what holds it (Faust would end in a traceback)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            probe.bind((settings.worker_host, settings.worker_port))
            return
        except OSError:
            pass
    holder = "another program" if worker_health(settings) is None else "a meterline worker that is already running"
    raise MeterlineError(f"{settings.worker_url} is in use by {holder}; each worker needs its own port "
                         "(METERLINE_WORKER_PORT)")


def run_worker(settings: Settings | None = None) -> None:
    """Run the worker in this process until SIGTERM/SIGINT (Faust handles both cleanly)."""
    from meterline.processors.app import create_app, prepare_process

    settings = settings or load_settings()
    loglevel = settings.worker_log_level
    ensure_port_free(settings)
    if settings.worker_parent_pid is not None:
        stop_with_parent(settings.worker_parent_pid)
    argv = prepare_process("meterline-worker", loglevel)  # first: it picks the event loop
    app = create_app(settings)

    @app.task
    async def restore_log_level() -> None:  # runs once the worker has set up logging
        # Faust's start-up spinner sets the root logger to DEBUG and leaves it there, so aiokafka
        # and Faust build a debug record for every message sent (8 % of its CPU samples under load).
        logging.getLogger().setLevel(loglevel.upper())

    sys.argv = argv
    app.main()


def spawn_worker(settings: Settings, log_path: str | None = None,
                 module: str = "meterline.processors") -> subprocess.Popen[bytes]:
    """Start a worker (`python -m module`) as a child process; return once its web server answers.
    The worker stops once this process is gone, however it ended (`worker_parent_pid`)."""
    ensure_port_free(settings)  # else the health check below could be answered by the other one
    prepare_topics(settings)
    env = child_environment(settings.model_copy(update={"worker_parent_pid": os.getpid()}))
    command = [sys.executable, "-m", module]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
    try:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]
    try:
        wait_until_healthy(settings, process)
    except MeterlineError:
        process.terminate()  # never leave a half-started worker behind
        process.wait(10)
        raise
    return process


def worker_env(settings: Settings) -> dict[str, str]:
    """The METERLINE_ variables a child worker needs; the API secret goes into a 0600 file."""
    if settings.api_secret is not None:
        path = settings.home / "worker_api_secret"
        private_dir(path.parent)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(settings.api_secret.get_secret_value())
        settings = settings.model_copy(update={"api_secret_file": path})
    values = settings.model_dump(include=set(WORKER_SETTINGS), exclude_none=True)
    return {f"METERLINE_{name.upper()}": str(value) for name, value in values.items()}


def child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment for a child worker (or another meterline command): every
    METERLINE_ variable replaced by `worker_env(settings)`, so none of ours leaks in."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("METERLINE_")}
    return env | worker_env(settings)


def wait_until_healthy(settings: Settings, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MeterlineError(f"the worker exited with code {process.returncode} while starting")
        if worker_health(settings) is not None:
            return
        time.sleep(0.3)
    raise MeterlineError(f"the worker did not answer on {settings.worker_url} within {timeout}s")

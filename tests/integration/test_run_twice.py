"""A second worker, sink or demo says what holds its port or chDB, exits non-zero, leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meterline.processors.worker import child_environment, prepare_topics, spawn_worker
from meterline.settings import Settings

from tests.integration.pipeline import stop


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = child_environment(settings)
    env["METERLINE_CHDB_PATH"] = str(settings.chdb_dir)
    env["METERLINE_SINK_GROUP"] = settings.sink_group
    return subprocess.run([sys.executable, "-m", "meterline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def processes_with(variable: str) -> list[int]:
    """Live processes whose environment holds `variable` (NAME=value): how an orphan is found."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_second_worker_on_a_taken_port_says_so_and_the_first_serves_on(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    prepare_topics(settings)
    first = spawn_worker(settings)
    try:
        second = cli(settings, "worker")
        output = " ".join((second.stdout + second.stderr).split())  # rich wraps long lines
        assert second.returncode == 2, output
        assert "in use by a meterline worker" in output and "Traceback" not in output
        assert first.poll() is None
    finally:
        stop(first)


def test_a_second_sink_and_a_demo_name_the_process_that_owns_chdb_and_leave_no_process(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(chdb_path=tmp_path / "chdb")
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from meterline.settings import Settings\n"
        "from meterline.sinks import Warehouse\n"
        f"Warehouse(Settings(chdb_path={str(settings.chdb_dir)!r}, home={str(settings.home)!r}))\n"
        "print('owned', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "owned"
        for command in (["sink"], ["demo", "--events", "50"]):
            result = cli(settings, *command)
            output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
            assert result.returncode == 2, output
            assert f"in use by pid {owner.pid}" in output and "Traceback" not in output
        time.sleep(1)  # an orphan worker would have had time to start
        assert processes_with(f"METERLINE_WORKER_PORT={settings.worker_port}") == []
    finally:
        owner.kill()
        owner.wait()

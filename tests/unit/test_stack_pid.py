"""The local stack never signals a process it did not start, and keeps its data private."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from meterline.settings import Settings, private_dir
from meterline.stack import broker_status, stack_down


def test_a_stale_pid_file_naming_an_unrelated_process_is_removed_and_the_process_survives(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_port=1, kafka_controller_port=2)
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = settings.kafka_data_dir / "broker.pid"
        pid_file.parent.mkdir(parents=True)
        # What a crashed broker left behind, its pid since taken by another process.
        pid_file.write_text(f"{unrelated.pid} 1")
        status = broker_status(settings)
        assert not status.running and status.pid is None
        assert not pid_file.exists()  # the stale file is cleaned up
        pid_file.write_text(str(unrelated.pid))  # an old file without a start time proves nothing either
        assert stack_down(settings) is False
        assert unrelated.poll() is None  # never signalled
    finally:
        unrelated.kill()
        unrelated.wait()


def test_private_dir_creates_owner_only_directories_and_leaves_existing_ones(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    created = private_dir(shared / "home" / "kafka")
    for directory in (shared / "home", created):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # not ours to change

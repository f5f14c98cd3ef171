"""A child worker gets only the settings it needs, the API secret only as a file, and a GC set for a long life."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from meterline.processors.worker import worker_env
from meterline.settings import Settings


def test_the_secret_and_the_warehouse_url_never_reach_the_childs_environment(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, api_secret="s3cret-value",  # type: ignore[arg-type]
                        clickhouse_url="http://user:pw@warehouse:8123")  # type: ignore[arg-type]
    env = worker_env(settings)
    assert not any("s3cret-value" in value or "pw@" in value for value in env.values())
    assert "METERLINE_API_SECRET" not in env and "METERLINE_CLICKHOUSE_URL" not in env
    secret_file = Path(env["METERLINE_API_SECRET_FILE"])
    assert secret_file.read_text() == "s3cret-value"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert env["METERLINE_USAGE_TOPIC"] == settings.usage_topic
    # The child reads back the same secret through the file.
    from meterline.auth import resolve_secret

    assert resolve_secret(Settings(home=tmp_path / "child", api_secret_file=secret_file)) == "s3cret-value"


def test_a_worker_process_freezes_its_start_up_heap_and_keeps_full_collections_rare() -> None:
    # In a process of its own: freezing and the thresholds would otherwise change the test run's own GC.
    probe = ("import gc; from meterline.processors.app import GC_THRESHOLDS, prepare_process; "
             "before = gc.get_freeze_count(); prepare_process('worker', 'warn'); "
             "print(before, gc.get_freeze_count(), gc.get_threshold() == GC_THRESHOLDS)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    before, frozen, thresholds_set = out.split()
    assert int(before) == 0 and int(frozen) > 10_000 and thresholds_set == "True"

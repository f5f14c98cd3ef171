"""Reading py-spy's raw stacks: whose own code a worker's CPU samples were in, and which of meterline's functions they ran under."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.benchmarks.profile import summarize

PROJECT = Path(__file__).resolve().parents[2]
SITE = "/venv/lib/python3.11/site-packages"
LOOP = "run_forever (/usr/lib/python3.11/asyncio/base_events.py:604)"
ENTRY = f"<module> ({PROJECT}/processors/__main__.py:3);run_worker ({PROJECT}/processors/worker.py:66)"
FLUSH = f"flush ({PROJECT}/processors/app.py:300);apply ({PROJECT}/processors/app.py:340)"


def test_shares_of_own_code_and_of_meterline_functions(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text("\n".join([
        f"{ENTRY};{LOOP};{FLUSH};process ({PROJECT}/processors/batch.py:190) 6",  # meterline's own code
        f"{ENTRY};{LOOP};{FLUSH};dumps ({SITE}/orjson/__init__.py:1) 2",  # a library, called by meterline
        f"{ENTRY};{LOOP};_drain ({SITE}/faust/transport/consumer.py:1200) 10",  # the framework alone
        f"{ENTRY};{LOOP} 2",  # the event loop itself
        "not a stack line",
    ]))
    samples, own, within = summarize(raw)
    assert samples == 20
    assert dict(own) == pytest.approx({"faust": 0.5, "meterline.processors": 0.3, "orjson": 0.1, "asyncio": 0.1})
    # The start-up frames under every stack are left out: they say nothing of where the time goes.
    assert dict(within) == pytest.approx({"app.flush": 0.4, "app.apply": 0.4, "batch.process": 0.3})


def test_an_empty_profile_has_no_shares(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text("")
    assert summarize(raw) == (0, [], [])

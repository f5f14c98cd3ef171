"""`python -m meterline.benchmarks`: --help and a misspelt name run nothing."""

from __future__ import annotations

import importlib
import re

import pytest

from meterline.benchmarks.__main__ import benchmark_names, main


def test_help_lists_the_benchmarks_and_runs_none(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib, "import_module", lambda name: pytest.fail(f"{name} was run"))
    with pytest.raises(SystemExit) as exit:
        main(["pipeline", "--help"])
    assert exit.value.code == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in benchmark_names())
    assert {"pipeline", "sink", "reports"} <= set(benchmark_names())


def test_a_misspelt_name_is_an_error_naming_it(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib, "import_module", lambda name: pytest.fail(f"{name} was run"))
    with pytest.raises(SystemExit) as exit:
        main(["sink", "pipline"])
    assert exit.value.code == 2 and "'pipline'" in capsys.readouterr().err


def test_a_run_writes_its_figures_and_the_machine_to_latest_json_and_md(
        tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import types

    from meterline.benchmarks.results import Figure

    asked = []

    def fake_main(quick: bool = False) -> list[Figure]:
        asked.append(quick)
        return [Figure("sink", 105_000.0, "rows/s", "bare insert", 0.69, ">= 100,000 rows/s", True),
                Figure("not measured", float("nan"), "ms")]

    import meterline.benchmarks.__main__ as runner

    monkeypatch.setattr(importlib, "import_module", lambda name: types.SimpleNamespace(main=fake_main))
    monkeypatch.setattr(runner, "_in_fresh_process", runner.run_benchmark)  # the fake lives in this process only
    monkeypatch.chdir(tmp_path)
    assert main(["--quick", "sink", "reports"]) == 0
    assert asked == [True, True]
    record = json.loads((tmp_path / "bench/results/latest.json").read_text())
    assert record["quick"] is True and record["machine"]["cores"] >= 1 and record["machine"]["memory_gib"] > 0
    assert [(f["benchmark"], f["name"], f["value"], f["met"]) for f in record["figures"]] == [
        ("sink", "sink", 105_000.0, True), ("sink", "not measured", None, None),
        ("reports", "sink", 105_000.0, True), ("reports", "not measured", None, None)]
    table = (tmp_path / "bench/results/latest.md").read_text()
    assert "| sink | sink | 105,000 | rows/s | bare insert | 0.69x | >= 100,000 rows/s | yes |" in table
    assert "| sink | not measured | - | ms |" in table
    assert "benchmark 2/2: reports" in capsys.readouterr().out


def test_the_knee_is_the_first_step_whose_lag_grows_by_more_than_5_percent_of_its_load() -> None:
    from meterline.benchmarks.bench_load import Step, knee

    def step(offered: int, lag: int) -> Step:
        return Step(offered, offered, offered, offered, lag, 0, 0.1, 0.2, 10, {})

    # 10 s steps: 5 % of 1,000/s is 500 events, of 5,000/s 2,500.
    assert knee([step(1_000, 400), step(5_000, 2_800), step(10_000, 90_000)], 10) == step(10_000, 90_000)
    assert knee([step(1_000, 600), step(5_000, 700)], 10) == step(1_000, 600)
    assert knee([step(1_000, 0), step(5_000, 100)], 10) is None


def test_a_failing_benchmark_is_reported_and_the_others_still_run(tmp_path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import meterline.benchmarks.__main__ as runner
    from meterline.benchmarks.results import Figure

    def fake(name: str, quick: bool) -> list[Figure]:
        if name == "reports":
            raise RuntimeError("chDB refused")
        return [Figure("x", 1.0, "s")]

    monkeypatch.setattr(runner, "_in_fresh_process", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["reports", "sink"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"benchmark reports failed after \d+ s: RuntimeError: chDB refused", out) and "failed: reports" in out
    assert "| sink | x |" in (tmp_path / "bench/results/latest.md").read_text()


def test_a_missed_target_is_listed_with_how_far_off_it_is() -> None:
    from datetime import datetime, timezone

    from meterline.benchmarks.results import Figure, markdown

    figures = {"load": [Figure("sustained", 7_000.0, "events/s", target=">= 10,000 events/s", met=False),
                        Figure("knee", 10_000.0, "events/s")],
               "reserve": [Figure("p99", 30.0, "ms", target="<= 5 ms at 500/s", met=False),
                           Figure("read p99", 2.0, "ms", target="<= 5 ms", met=True)]}
    about = {"cores": 2, "memory_gib": 24, "cpu": "x", "python": "3.11"}
    text = markdown(datetime(2026, 12, 3, tzinfo=timezone.utc), False, figures, about)
    missed = text.split("## Targets missed", 1)[1]
    assert "load: sustained: 7,000 events/s against >= 10,000 events/s (0.70x the floor)" in missed
    assert "reserve: p99: 30.0 ms against <= 5 ms at 500/s (6.00x the limit)" in missed
    assert "read p99" not in missed and "knee" not in missed

"""`python -m meterline.benchmarks`: --help and a misspelt name run nothing."""

from __future__ import annotations

import importlib

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

"""The `pricing`, `plans` and `billing` commands, through `meterline.cli.main`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meterline.cli import main
from tests.unit.pricing.conftest import SMALL_PLANS, SMALL_PRICES
from tests.unit.pricing.test_litellm import SAMPLE


@pytest.fixture(autouse=True)
def _no_env_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERLINE_PRICES", raising=False)
    monkeypatch.delenv("METERLINE_PLANS", raising=False)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    assert main([*argv, "--format", "json"]) == code
    return json.loads(capsys.readouterr().out)


def test_quote_seed_seventy_percent(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "pricing", "quote", "--model", "claude-sonnet-4", "--input-tokens", "1000",
                   "--output-tokens", "0", "--credit-price", "0.01")
    assert (out["provider_cost_usd"], out["credits"], out["rule"]) == ("0.003", "1", "tokens")
    assert out["margin"]["gross_margin"] == "0.7" and out["margin"]["below_target"] is False


def test_quote_seed_thirty_percent(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "pricing", "quote", "--model", "gpt-4o", "--input-tokens", "10000", "--output-tokens", "1000",
                   "--action", "complex", "--credit-price", "0.01")
    assert (out["provider_cost_usd"], out["credits"], out["rule"]) == ("0.035", "5", "action:complex")
    assert out["margin"]["gross_margin"] == "0.3" and out["margin"]["below_target"] is True


def test_quote_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pricing", "quote", "--model", "gpt-4o", "--input-tokens", "1500", "--output-tokens", "500",
                 "--cached-tokens", "1000"]) == 0
    out = capsys.readouterr().out
    assert "$0.0075 " in out  # (500 x 0.0025 + 1000 x 0.00125 + 500 x 0.01) / 1000
    assert "(1500 + 500) tokens / 1000 x 1 credit per 1,000 tokens" in out


def test_quote_unknown_model_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pricing", "quote", "--model", "gpt-9", "--input-tokens", "1", "--output-tokens", "1"]) == 2
    assert "gpt-9" in capsys.readouterr().err


def test_preview_seed_hybrid(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "billing", "preview", "--plan", "pro", "--credits-used", "130")
    assert out["total"] == "29.00"
    overage = next(line for line in out["lines"] if line["kind"] == "overage")
    assert (overage["quantity"], overage["unit_price"], overage["amount"]) == ("30", "0.30", "9.00")


def test_preview_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["billing", "preview", "--plan", "pro", "--credits-used", "130"]) == 0
    assert "$29.00" in capsys.readouterr().out


def test_preview_with_carry_grant_and_proration(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "billing", "preview", "--plan", "pro", "--credits-used", "100", "--carried", "10",
                   "--grant", "5@2025-04-20T00:00:00Z", "--anchor", "2025-01-01", "--at", "2025-04-02",
                   "--from-plan", "free", "--changed-at", "2025-04-11T00:00:00Z")
    # April cycle, 20 of 30 days on Pro: fee 13.333..., included 83.33; burn 10 carried, 83.33 included,
    # 5 promo, 1.67 overage x 0.30 = 0.501 -> 13.8343... -> 13.83.
    assert out["cycle"]["start"] == "2025-04-01T00:00:00+00:00"
    assert out["total"] == "13.83"
    assert out["notes"] and "Free -> Pro" in out["notes"][0]


def test_cycles_jan_31(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "billing", "cycles", "--anchor", "2025-01-31T10:00:00Z", "--count", "3")
    assert [c["start"][:10] for c in out["cycles"]] == ["2025-01-31", "2025-02-28", "2025-03-31"]
    assert out["cycles"][2]["end"] == "2025-04-30T10:00:00+00:00"


def test_cycles_text_yearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["billing", "cycles", "--anchor", "2024-02-29", "--interval", "year", "--count", "2"]) == 0
    assert "2025-02-28T00:00:00+00:00" in capsys.readouterr().out


def test_bad_anchor_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["billing", "cycles", "--anchor", "soon"]) == 2


def test_plans_check(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "plans", "check")
    assert out["flagged"] == 0 and len(out["rows"]) == 36
    out = run_json(capsys, "plans", "check", "--credit-price", "0.01", code=1)
    assert out["flagged"] > 0
    assert main(["plans", "check"]) == 0
    assert "0 of 36" in capsys.readouterr().out


def test_render(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["pricing", "render", "--format", "html", "--output", str(tmp_path / "p.html")]) == 0
    assert "<h2>Enterprise</h2>" in (tmp_path / "p.html").read_text()
    assert main(["pricing", "render"]) == 0
    assert json.loads(capsys.readouterr().out)["plans"][1]["id"] == "pro"


def test_import_litellm(capsys: pytest.CaptureFixture[str], write: Callable[[str, str], Path], tmp_path: Path) -> None:
    source = write("litellm.json", SAMPLE)
    assert main(["pricing", "import-litellm", str(source)]) == 0
    captured = capsys.readouterr()
    assert "input_per_1k: '0.0025'" in captured.out and "4 models written, 3 entries skipped" in captured.err
    target = tmp_path / "prices.yaml"
    assert main(["pricing", "import-litellm", str(source), "--provider", "openai", "--output", str(target)]) == 0
    # The written price book works with every other command.
    prices = tmp_path / "only-gpt.yaml"
    prices.write_text(target.read_text())
    plans = write("plans.yaml", "plans:\n  p: {name: P, price: 1, included_credits: 1, overage: {mode: hard_cap},"
                                " limits: {concurrent_requests: 1, requests_per_minute: 1}}\n")
    out = run_json(capsys, "pricing", "quote", "--model", "gpt-4o", "--input-tokens", "1000", "--output-tokens", "0",
                   "--prices", str(prices), "--plans", str(plans))
    assert out["provider_cost_usd"] == "0.0025"


def test_files_from_settings_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         write: Callable[[str, str], Path]) -> None:
    monkeypatch.setenv("METERLINE_PRICES", str(write("p.yaml", SMALL_PRICES)))
    monkeypatch.setenv("METERLINE_PLANS", str(write("c.yaml", SMALL_PLANS)))
    out = run_json(capsys, "billing", "preview", "--plan", "basic", "--credits-used", "60")
    assert out["total"] == "12.50"  # $10 + 10 x $0.25
    out = run_json(capsys, "pricing", "quote", "--model", "dear", "--input-tokens", "1000", "--output-tokens", "0")
    assert out["provider_cost_usd"] == "0.01"


def test_bad_plans_file_names_the_key(capsys: pytest.CaptureFixture[str], write: Callable[[str, str], Path]) -> None:
    plans = write("c.yaml", SMALL_PLANS.replace("price_per_credit: 0.25", "price_per_credit: -0.25"))
    assert main(["plans", "check", "--prices", str(write("p.yaml", SMALL_PRICES)), "--plans", str(plans)]) == 2
    assert "plans.basic.overage.price_per_credit: must be >= 0" in capsys.readouterr().err


def test_unknown_plan_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["billing", "preview", "--plan", "gold", "--credits-used", "1"]) == 2
    assert "gold" in capsys.readouterr().err


def test_every_command_works_with_the_whole_real_litellm_map(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.unit.pricing.test_litellm import REAL_MAP

    prices = tmp_path / "prices.yaml"
    assert main(["pricing", "import-litellm", str(REAL_MAP), "--output", str(prices)]) == 0
    assert "base-name aliases" in capsys.readouterr().err
    out = run_json(capsys, "pricing", "quote", "--model", "claude-sonnet-4", "--input-tokens", "1000",
                   "--output-tokens", "0", "--prices", str(prices))
    assert (out["provider_cost_usd"], out["credits"]) == ("0.003", "1")
    # Every model of the book x tier is checked: some of LiteLLM's dearest models are below target (exit 1).
    assert main(["plans", "check", "--prices", str(prices), "--format", "json"]) in (0, 1)
    checked = {row["model"] for row in json.loads(capsys.readouterr().out)["rows"]}
    from meterline.pricing import load_price_book

    assert checked == set(load_price_book(prices).models)
    assert main(["pricing", "render", "--prices", str(prices)]) == 0
    assert json.loads(capsys.readouterr().out)["plans"][1]["id"] == "pro"
    out = run_json(capsys, "billing", "preview", "--plan", "pro", "--credits-used", "130", "--prices", str(prices))
    assert out["total"] == "29.00"

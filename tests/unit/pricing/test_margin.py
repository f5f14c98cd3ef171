"""Credit-to-cost check: the seed's examples, plan revenue per credit, flags."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterline.pricing.catalogue import Catalogue
from meterline.pricing.margin import call_margin, check_margins, credit_margin, plan_revenue_per_credit
from meterline.pricing.rating import default_rater

D = Decimal


def test_seed_example_one_seventy_percent() -> None:
    """$0.003 of inference behind a $0.01 credit: a 70 % gross margin, 3.33:1, above 3:1."""
    margin = credit_margin(D("0.01"), D("0.003"))
    assert margin.gross_margin == D("0.7")
    assert margin.ratio is not None and margin.ratio.quantize(D("0.01")) == D("3.33")
    assert not margin.below_target


def test_seed_example_two_thirty_percent() -> None:
    """A complex query billed 5 credits ($0.05) whose compute costs $0.035: $0.007 per credit, 30 %."""
    margin = call_margin(D("0.01"), D("0.035"), D(5))
    assert margin.cost_per_credit == D("0.007")
    assert margin.gross_margin == D("0.3")
    assert margin.below_target  # 1.43:1 < 3:1: the leak the check exists to show


def test_seed_examples_from_real_prices() -> None:
    """Both seed figures fall out of the shipped price book through the ordinary rating path."""
    rater = default_rater()
    simple = rater.rate_usage("claude-sonnet-4", 1000, 0)  # $0.003, 1 credit
    complex_ = rater.rate_usage("gpt-4o", 10_000, 1000, action="complex")  # $0.025 + $0.01, 5 credits
    assert call_margin(D("0.01"), simple.provider_cost_usd, simple.credits).gross_margin == D("0.7")
    assert call_margin(D("0.01"), complex_.provider_cost_usd, complex_.credits).gross_margin == D("0.3")


def test_literal_misreading_is_a_loss() -> None:
    """5 x $0.003 of compute billed as a single $0.01 credit would be -50 %, not 30 % (see README)."""
    assert call_margin(D("0.01"), D("0.015"), D(1)).gross_margin == D("-0.5")


@pytest.mark.parametrize(
    ("revenue", "cost", "ratio", "margin", "below"),
    [("0.03", "0.01", "3", "0.6666666666666666666666666667", False),  # exactly 3:1 is on target
     ("0.0299", "0.01", "2.99", "0.6655518394648829431438127090", True),
     ("0.01", "0", None, "1", False),
     ("0", "0.01", "0", None, True)],
)
def test_margin_table(revenue: str, cost: str, ratio: str | None, margin: str | None, below: bool) -> None:
    result = credit_margin(D(revenue), D(cost))
    assert result.ratio == (None if ratio is None else D(ratio))
    assert result.gross_margin == (None if margin is None else D(margin))
    assert result.below_target is below


@pytest.mark.parametrize(("plan_id", "expected"), [("free", None), ("pro", D("0.2")), ("enterprise", D("0.15")),
                                                    ("pro-annual", D(200) / D(1200))])
def test_plan_revenue_per_credit(catalogue: Catalogue, plan_id: str, expected: Decimal | None) -> None:
    assert plan_revenue_per_credit(catalogue.plan(plan_id)) == expected


def test_shipped_catalogue_passes_its_own_check(catalogue: Catalogue) -> None:
    report = check_margins(catalogue)
    assert report.revenue_from.startswith("plan enterprise")
    assert len(report.rows) == len(catalogue.prices.models) * 3  # tokens, simple, complex
    assert report.flagged == ()
    assert report.cheaper_fallback_problems == ()


def test_at_one_cent_per_credit_the_expensive_models_are_flagged(catalogue: Catalogue) -> None:
    report = check_margins(catalogue, credit_price=D("0.01"))
    flagged = {(row.model, row.tier) for row in report.flagged}
    assert ("claude-opus-4", "complex") in flagged  # $0.2325 over 5 credits = $0.0465 per credit
    assert ("gpt-4o", "complex") in flagged  # $0.035 over 5 credits: 1.43:1
    assert ("gpt-4o-mini", "tokens") not in flagged
    row = next(r for r in report.rows if (r.model, r.tier) == ("claude-sonnet-4", "tokens"))
    # 750 in x $0.003 + 250 out x $0.015 per 1,000 = $0.006 for 1 credit.
    assert (row.call_cost, row.credits, row.margin.cost_per_credit) == (D("0.006"), D(1), D("0.006"))


def test_free_plan_alone_earns_nothing(catalogue: Catalogue) -> None:
    report = check_margins(catalogue, plan_id="free")
    assert all(row.margin.below_target for row in report.rows)

"""Rating: credits from the declared rules, provider cost from the report or the price book."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.pricing.exceptions import InvalidUsageError, UnknownModelError
from meterline.pricing.rating import Rater, Rating, default_rater
from tests.unit.pricing.conftest import SMALL_PLANS, SMALL_PRICES, make_event

D = Decimal


@pytest.mark.parametrize(
    ("model", "input_tokens", "output_tokens", "cached", "action", "expected"),
    [
        # Token rule, 1 credit per 1,000 tokens, cached input counted as input.
        ("gpt-4o", 1000, 0, 0, None, Rating(D("0.0025"), D(1), "tokens", "gpt-4o")),
        ("gpt-4o", 1200, 300, 0, None, Rating(D("0.006"), D("1.5"), "tokens", "gpt-4o")),  # 0.003 + 0.003
        ("gpt-4o", 1000, 0, 1000, None, Rating(D("0.00125"), D(1), "tokens", "gpt-4o")),
        ("gpt-4o-mini", 2000, 1000, 0, None, Rating(D("0.0009"), D(3), "tokens", "gpt-4o-mini")),  # 0.0003 + 0.0006
        ("claude-sonnet-4", 1000, 0, 0, None, Rating(D("0.003"), D(1), "tokens", "claude-sonnet-4")),
        ("claude-sonnet-4-20250514", 1, 2, 0, None, Rating(D("0.000033"), D("0.003"), "tokens", "claude-sonnet-4")),
        # Per-model credits: claude-opus-4 is 5 credits per 1,000 tokens.
        ("claude-opus-4", 1000, 1000, 0, None, Rating(D("0.09"), D(10), "tokens", "claude-opus-4")),
        # Action tiers are flat, whatever the tokens or model.
        ("gpt-4o", 10000, 1000, 0, "complex", Rating(D("0.035"), D(5), "action:complex", "gpt-4o")),
        ("claude-opus-4", 50000, 0, 0, "simple", Rating(D("0.75"), D(1), "action:simple", "claude-opus-4")),
        # An action that is not a declared tier falls back to the token rule.
        ("gpt-4o", 500, 0, 0, "summarise", Rating(D("0.00125"), D("0.5"), "tokens", "gpt-4o")),
        ("gpt-4o", 0, 0, 0, None, Rating(D(0), D(0), "tokens", "gpt-4o")),
    ],
)
def test_rate_with_shipped_rules(model: str, input_tokens: int, output_tokens: int, cached: int,
                                 action: str | None, expected: Rating) -> None:
    assert default_rater().rate(make_event(model, input_tokens, output_tokens, cached=cached, action=action)) == expected


def test_reported_cost_wins_but_credits_still_follow_the_rules() -> None:
    rating = default_rater().rate(make_event("gpt-4o", 1000, 1000, cost_usd=D("0.5")))
    assert rating == Rating(D("0.5"), D(2), "tokens", "gpt-4o", "reported")


def test_unknown_model_is_an_error_even_with_an_action() -> None:
    with pytest.raises(UnknownModelError) as caught:
        default_rater().rate(make_event("mystery-model", 10, 10, action="simple"))
    assert caught.value.model == "mystery-model"


def test_cached_more_than_input_is_an_error_even_with_a_reported_cost() -> None:
    # The event schema refuses this too; figures given directly (quotes) are checked here.
    with pytest.raises(InvalidUsageError):
        default_rater().rate_usage("gpt-4o", 10, 10, cached_input_tokens=11, reported_cost_usd=D("0.1"))


def test_rater_from_files(write: Callable[[str, str], Path]) -> None:
    rater = Rater.from_files(write("p.yaml", SMALL_PRICES + "default_model: cheap\n"), write("c.yaml", SMALL_PLANS))
    assert rater.rate(make_event("dear", 1000, 1000)) == Rating(D("0.04"), D(2), "tokens", "dear")
    assert rater.rate(make_event("whatever", 1000, 0, action="simple")) == Rating(D("0.001"), D(1), "action:simple", "cheap")
    assert rater.rate(make_event("dear", 1000, 0, action="complex")).rule == "tokens"  # no complex tier in this file


def test_default_rater_is_built_once() -> None:
    assert default_rater() is default_rater()


@given(
    model=st.sampled_from(["gpt-4o-mini", "gpt-4o", "claude-sonnet-4"]),
    input_tokens=st.integers(0, 2_000_000),
    output_tokens=st.integers(0, 2_000_000),
    action=st.sampled_from([None, "simple", "complex", "other"]),
)
def test_shipped_rules_for_the_demo_models(model: str, input_tokens: int, output_tokens: int, action: str | None) -> None:
    """By hand: simple = 1, complex = 5, anything else (input + output) / 1000 credits."""
    event = make_event(model, input_tokens, output_tokens, action=action)
    tiers = {"simple": Decimal(1), "complex": Decimal(5)}
    expected = tiers[action] if action in tiers else Decimal(input_tokens + output_tokens) / 1000
    assert default_rater().rate(event).credits == expected


@pytest.mark.parametrize(("field", "value"), [
    ("input_per_1k", "10001"),  # past $10,000 per 1,000 tokens: a typo, and sums would grow past the bounds
    ("output_per_1k", "0.0000000000001"),  # 13 decimals: an event's cost would need more than the warehouse's 18
])
def test_a_price_past_the_bounds_is_a_config_error_naming_it(tmp_path, field: str, value: str) -> None:
    from meterline.pricing import ConfigError, load_price_book

    prices = {"input_per_1k": "0.001", "output_per_1k": "0.002", field: value}
    path = tmp_path / "prices.yaml"
    path.write_text("version: 1\nmodels:\n  m:\n" + "".join(f"    {k}: {v}\n" for k, v in prices.items()))
    with pytest.raises(ConfigError) as raised:
        load_price_book(path)
    assert f"models.m.{field}" in str(raised.value)


def test_rating_at_the_token_bound_is_exact() -> None:
    from meterline.schemas.usage import MAX_TOKENS

    from meterline.pricing.money import EXACT

    with localcontext(EXACT):  # as the worker rates: an amount that needed rounding would raise
        rating = default_rater().rate_usage("claude-opus-4", MAX_TOKENS, MAX_TOKENS,
                                            cached_input_tokens=MAX_TOKENS - 1)
    # 1 fresh + (10^9 - 1) cached input at $0.015 / $0.0015, 10^9 output at $0.075, per 1,000 tokens.
    assert rating.provider_cost_usd == (Decimal("0.015") + (MAX_TOKENS - 1) * Decimal("0.0015")
                                        + MAX_TOKENS * Decimal("0.075")) / 1000
    assert rating.credits == Decimal(2 * MAX_TOKENS) / 1000 * 5


prices_per_1k = st.decimals(min_value=0, max_value=10_000, places=12, allow_nan=False, allow_infinity=False)
tokens = st.integers(min_value=0, max_value=10**9)


@given(prices_per_1k, prices_per_1k | st.none(), prices_per_1k, tokens, tokens, st.integers(min_value=0, max_value=10**9))
def test_a_cost_priced_per_token_is_the_cost_per_1000_tokens_over_1000_written_the_same(
        input_per_1k: Decimal, cached_per_1k: Decimal | None, output_per_1k: Decimal, input_tokens: int,
        output_tokens: int, cached_share: int) -> None:
    from meterline.pricing.money import EXACT
    from meterline.pricing.price_book import ModelPrice, tidy

    cached = min(cached_share, input_tokens)
    price = ModelPrice(input_per_1k=input_per_1k, cached_input_per_1k=cached_per_1k, output_per_1k=output_per_1k)
    with localcontext(EXACT):
        cost = price.cost(input_tokens, output_tokens, cached)
        cached_rate = input_per_1k if cached_per_1k is None else cached_per_1k
        expected = tidy(((input_tokens - cached) * input_per_1k + cached * cached_rate + output_tokens * output_per_1k)
                        / Decimal(1000))
    assert cost == expected
    assert str(cost) == str(expected)

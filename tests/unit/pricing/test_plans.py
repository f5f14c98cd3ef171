"""Plans: the shipped catalogue follows the seeds; a wrong file names every bad key."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.pricing.catalogue import Catalogue, load_catalogue
from meterline.pricing.exceptions import ConfigError, UnknownPlanError
from tests.unit.pricing.conftest import SMALL_PLANS, SMALL_PRICES, edit

D = Decimal


def test_shipped_plans_follow_the_seeds(catalogue: Catalogue) -> None:
    free, pro, enterprise = catalogue.plan("free"), catalogue.plan("pro"), catalogue.plan("enterprise")
    assert free.hard_cap and free.price == 0 and free.limits.concurrent_requests == 2
    assert (pro.price, pro.interval, pro.included_credits) == (D(20), "month", D(100))
    assert (pro.overage.mode, pro.overage.price_per_credit, pro.limits.concurrent_requests) == ("charge", D("0.30"), 10)
    assert enterprise.limits.concurrent_requests == 50
    for plan in catalogue.plans.values():
        assert (plan.limits.burst.multiplier, plan.limits.burst.seconds) == (D(2), 60)
        assert plan.limits.burst_requests_per_minute == 2 * plan.limits.requests_per_minute


def test_shipped_credit_rules(catalogue: Catalogue) -> None:
    rules = catalogue.credits
    assert {name: tier.credits for name, tier in rules.actions.items()} == {"simple": D(1), "complex": D(5)}
    assert rules.per_1k_tokens == D(1) and rules.target_ratio == D(3)


def test_degradation_chain(catalogue: Catalogue) -> None:
    pro = catalogue.plan("pro")
    assert pro.fallback("gpt-4o") == "gpt-4o-mini"
    assert pro.fallback("gpt-4o-mini") is None
    assert pro.chain("claude-opus-4") == ["claude-opus-4", "claude-sonnet-4", "claude-3-5-haiku"]


def test_unknown_plan(catalogue: Catalogue) -> None:
    with pytest.raises(UnknownPlanError) as caught:
        catalogue.plan("platinum")
    assert caught.value.plan == "platinum"


def _load(write: Callable[[str, str], Path], plans_text: str) -> Catalogue:
    return load_catalogue(write("prices.yaml", SMALL_PRICES), write("plans.yaml", plans_text))


def test_small_catalogue_loads(write: Callable[[str, str], Path]) -> None:
    plan = _load(write, SMALL_PLANS).plan("basic")
    assert plan.rollover.mode == "expire" and plan.interval == "month"
    assert plan.limits.burst.multiplier == 2  # the default burst: 2x for 60 s


def _basic(**changes: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        for dotted, value in changes.items():
            node = data["plans"]["basic"]
            *parents, leaf = dotted.split("__")
            for key in parents:
                node = node.setdefault(key, {})
            if value is None:
                node.pop(leaf)
            else:
                node[leaf] = value
    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_basic(overage__price_per_credit="-0.3"), "plans.basic.overage.price_per_credit: must be >= 0"),
        (_basic(price="-1"), "plans.basic.price: must be >= 0"),
        (_basic(overage__mode="sometimes"), "plans.basic.overage.mode: "),
        (_basic(overage__price_per_credit=None), "plans.basic.overage.price_per_credit: is required when mode is charge"),
        (_basic(overage={"mode": "hard_cap", "price_per_credit": "1"}), "plans.basic.overage.price_per_credit: set, but mode is hard_cap"),
        (_basic(rollover={"mode": "expire", "max_credits": 10}), "plans.basic.rollover.max_credits: set, but mode is expire"),
        (_basic(rollover={"mode": "rollover", "max_credits": 10}), "plans.basic.rollover.max_cycles: is required when mode is rollover"),
        (_basic(rollover={"mode": "rollover", "max_credits": 10, "max_cycles": 0}), "plans.basic.rollover.max_cycles: must be >= 1"),
        (_basic(limits__concurrent_requests=0), "plans.basic.limits.concurrent_requests: must be >= 1"),
        (_basic(limits__burst={"multiplier": "0.5"}), "plans.basic.limits.burst.multiplier: must be >= 1"),
        (_basic(included_credits=None), "plans.basic.included_credits: is required"),
        (_basic(colour="red"), "plans.basic.colour: unknown key"),
        (_basic(interval="week"), "plans.basic.interval: "),
        (_basic(degradation={"dear": "gpt-9"}), "plans.basic.degradation.dear: 'gpt-9' is not in the price book"),
        (_basic(degradation={"gpt-9": "cheap"}), "plans.basic.degradation.gpt-9: 'gpt-9' is not in the price book"),
        (_basic(degradation={"dear": "cheap", "cheap": "dear"}), "plans.basic.degradation.dear: cycle: dear -> cheap -> dear"),
        (_basic(degradation={"dear": "dear"}), "plans.basic.degradation.dear: cycle: dear -> dear"),
        (_basic(degradation={"dear-2025": "cheap", "cheap": "dear"}), "plans.basic.degradation.dear-2025: cycle: dear -> cheap -> dear"),
        (lambda d: d["credits"].update(models={"gpt-9": 2}), "credits.models.gpt-9: is not in the price book"),
        (lambda d: d["credits"]["actions"]["simple"].update(credits=0), "credits.actions.simple.credits: must be > 0"),
        (lambda d: d.update(plans={}), "plans: "),
    ],
)
def test_bad_plans_file_names_the_key(write: Callable[[str, str], Path], change: Callable[[dict], None], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(write, edit(SMALL_PLANS, change))
    assert any(str(problem).startswith(expected) for problem in caught.value.problems), caught.value.problems
    assert str(caught.value).startswith(str(caught.value.source))


def test_all_plan_problems_at_once(write: Callable[[str, str], Path]) -> None:
    text = edit(SMALL_PLANS, _basic(price="-1", overage__price_per_credit="-2", limits__concurrent_requests=0))
    with pytest.raises(ConfigError) as caught:
        _load(write, text)
    assert {p.path for p in caught.value.problems} == {
        "plans.basic.price", "plans.basic.overage.price_per_credit", "plans.basic.limits.concurrent_requests"}


def test_a_cycle_is_reported_once(write: Callable[[str, str], Path]) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(write, edit(SMALL_PLANS, _basic(degradation={"dear": "cheap", "cheap": "dear"})))
    assert len(caught.value.problems) == 1

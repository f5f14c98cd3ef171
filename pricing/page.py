"""The public pricing page, rendered from the plan catalogue that rating and invoices read.

JSON for a marketing site to consume; HTML as a self-contained page. Money and credits are
written as decimal strings ("0.30"), so no consumer re-introduces float rounding.
"""

from __future__ import annotations

import json
from decimal import Decimal
from html import escape
from typing import Any

from meterline.pricing.plans import Plan, PlanFile


def _num(value: Decimal) -> str:
    return format(value, "f")  # as written in the catalogue: "0.30" stays "0.30", never 3E-1


def _money(value: Decimal) -> str:
    return f"${value:,.2f}" if value != value.to_integral_value() else f"${value:,.0f}"


def plan_summary(plan_id: str, plan: Plan) -> dict[str, Any]:
    """One plan as JSON-able data."""
    return {
        "id": plan_id,
        "name": plan.name,
        "description": plan.description,
        "price": _num(plan.price),
        "interval": plan.interval,
        "included_credits": _num(plan.included_credits),
        "overage": {"mode": plan.overage.mode,
                    "price_per_credit": None if plan.overage.price_per_credit is None else _num(plan.overage.price_per_credit)},
        "rollover": {"mode": plan.rollover.mode,
                     "max_credits": None if plan.rollover.max_credits is None else _num(plan.rollover.max_credits),
                     "max_cycles": plan.rollover.max_cycles},
        "limits": {"concurrent_requests": plan.limits.concurrent_requests,
                   "requests_per_minute": plan.limits.requests_per_minute,
                   "burst_multiplier": _num(plan.limits.burst.multiplier),
                   "burst_seconds": plan.limits.burst.seconds},
        "degradation": dict(plan.degradation),
        "features": list(plan.features),
    }


def page_data(plan_file: PlanFile) -> dict[str, Any]:
    """The whole pricing page as data: plans in catalogue order, plus how credits are counted."""
    rules = plan_file.credits
    return {
        "currency": "USD",
        "credits": {"per_1k_tokens": _num(rules.per_1k_tokens),
                    "models": {model: _num(value) for model, value in rules.models.items()},
                    "actions": {name: _num(tier.credits) for name, tier in rules.actions.items()}},
        "plans": [plan_summary(plan_id, plan) for plan_id, plan in plan_file.plans.items()],
    }


def render_json(plan_file: PlanFile) -> str:
    """The pricing page as indented JSON."""
    return json.dumps(page_data(plan_file), indent=2) + "\n"


def _plan_card(plan: Plan) -> str:
    if plan.overage.mode == "charge":
        overage = f"then {_money(plan.overage.price_per_credit or Decimal(0))} per credit"
    else:
        overage = "hard cap: stops at the allowance, never bills more"
    rollover = ("unused credits expire at the end of each cycle" if plan.rollover.mode == "expire" else
                f"unused credits roll over (up to {_num(plan.rollover.max_credits or Decimal(0))}, "
                f"for {plan.rollover.max_cycles} cycle{'s' if (plan.rollover.max_cycles or 0) > 1 else ''})")
    items = [f"{_num(plan.included_credits)} credits included", overage, rollover,
             f"{plan.limits.concurrent_requests} requests at a time, {plan.limits.requests_per_minute} a minute "
             f"(bursts to {_num(plan.limits.burst_requests_per_minute)} for {plan.limits.burst.seconds} s)", *plan.features]
    listed = "".join(f"<li>{escape(item)}</li>" for item in items)
    return (f'<section class="plan"><h2>{escape(plan.name)}</h2><p class="price">{escape(_money(plan.price))}'
            f"<span>/{escape(plan.interval)}</span></p><p>{escape(plan.description)}</p><ul>{listed}</ul></section>")


def render_html(plan_file: PlanFile) -> str:
    """The pricing page as one self-contained HTML document."""
    rules = plan_file.credits
    tiers = ", ".join(f"{escape(name)} = {_num(tier.credits)}" for name, tier in rules.actions.items())
    cards = "\n".join(_plan_card(plan) for plan in plan_file.plans.values())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pricing</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}.plans{{display:flex;gap:1rem;flex-wrap:wrap}}
.plan{{border:1px solid #ccc;border-radius:8px;padding:1rem;min-width:14rem}}.price{{font-size:2rem;margin:0}}
.price span{{font-size:1rem;color:#666}}</style></head>
<body><h1>Pricing</h1>
<p>Each call costs {_num(rules.per_1k_tokens)} credit per 1,000 tokens, or a flat amount for actions ({tiers}).</p>
<div class="plans">
{cards}
</div></body></html>
"""

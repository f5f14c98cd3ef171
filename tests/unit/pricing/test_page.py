"""The pricing page is rendered from the plan catalogue, so it shows the plans rating and invoices use."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from meterline.pricing.catalogue import Catalogue, load_catalogue
from meterline.pricing.page import render_html, render_json
from tests.unit.pricing.conftest import SMALL_PLANS, SMALL_PRICES


def test_json_page(catalogue: Catalogue) -> None:
    page = json.loads(render_json(catalogue.plan_file))
    assert [plan["id"] for plan in page["plans"]] == ["free", "pro", "pro-annual", "enterprise"]
    pro = page["plans"][1]
    assert (pro["price"], pro["included_credits"], pro["overage"]) == ("20", "100", {"mode": "charge", "price_per_credit": "0.30"})
    assert pro["limits"] == {"concurrent_requests": 10, "requests_per_minute": 60, "burst_multiplier": "2", "burst_seconds": 60}
    assert page["plans"][0]["overage"]["mode"] == "hard_cap"
    assert page["credits"]["actions"] == {"simple": "1", "complex": "5"}


def test_html_page(catalogue: Catalogue) -> None:
    html = render_html(catalogue.plan_file)
    assert html.startswith("<!doctype html>")
    assert "<h2>Pro</h2>" in html and "$20<span>/month</span>" in html and "then $0.30 per credit" in html
    assert "hard cap" in html and "50 requests at a time" in html


def test_page_follows_the_file_and_escapes_it(write: Callable[[str, str], Path]) -> None:
    text = SMALL_PLANS.replace("name: Basic", "name: \"Basic <b>&</b>\"").replace("price: 10", "price: 12.50")
    plan_file = load_catalogue(write("p.yaml", SMALL_PRICES), write("c.yaml", text)).plan_file
    html = render_html(plan_file)
    assert "Basic &lt;b&gt;&amp;&lt;/b&gt;" in html and "<b>" not in html
    assert "$12.50" in html
    assert json.loads(render_json(plan_file))["plans"][0]["price"] == "12.50"

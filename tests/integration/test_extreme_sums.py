"""The largest events a real call can report: the balance API and the warehouse agree, exactly.

Ground truth comes from the plan file itself, read here with yaml and summed with a local context
of ample precision, not from the worker's rater.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal, localcontext

import yaml

from meterline.pricing.config import default_path
from meterline.producers import Meter, build_event
from meterline.schemas import parse_event
from meterline.processors.accounts import Placement
from meterline.schemas.rated import rated_record, rated_row
from meterline.schemas.usage import MAX_REPORTED_COST_USD, MAX_TOKENS
from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks.queries import RATED_EVENTS

from tests.integration.pipeline import balance_differences, balances_match, running_pipeline, wait_for

MODEL = "claude-opus-4"
PLACEMENT = Placement("free", datetime(2026, 1, 1, tzinfo=timezone.utc), late=False)
EVENTS = 2000
USERS = 4


def test_2000_calls_at_the_token_bound_sum_exactly_in_the_api_and_the_warehouse(
        make_settings: Callable[..., Settings]) -> None:
    org = f"big-{uuid.uuid4().hex[:8]}"
    per_1k = Decimal(str(yaml.safe_load(default_path("plans.yaml").read_text())["credits"]["models"][MODEL]))
    with localcontext() as context:
        context.prec = 200
        per_event = Decimal(2 * MAX_TOKENS) / 1000 * per_1k
        expected = {f"u{i}": per_event * len(range(i, EVENTS, USERS)) for i in range(USERS)}
    with running_pipeline(make_settings()) as pipeline, Meter(pipeline.settings) as meter:
        for n in range(EVENTS):
            meter.emit(org, f"u{n % USERS}", MODEL, MAX_TOKENS, MAX_TOKENS, cost_usd=MAX_REPORTED_COST_USD)
        meter.flush()
        assert wait_for(balances_match(pipeline, org, expected), timeout=120), \
            balance_differences(pipeline, org, expected)
        sums = ("SELECT user_id, sum(credits), sum(provider_cost_usd), count() FROM rated_events FINAL "
                "WHERE org_id = {org:String} GROUP BY user_id ORDER BY user_id", {"org": org})
        assert wait_for(lambda: sum(row[3] for row in pipeline.warehouse.query(sums)) == EVENTS, timeout=120)
        rows = pipeline.warehouse.query(sums)
    assert {user: credits for user, credits, _cost, _n in rows} == expected
    assert {user: cost for user, _credits, cost, _n in rows} == \
        {user: Decimal(MAX_REPORTED_COST_USD) * len(range(i, EVENTS, USERS)) for i, user in enumerate(sorted(expected))}


def test_warehouse_sums_past_every_per_event_maximum_do_not_wrap_around(make_settings: Callable[..., Settings]) -> None:
    # Rows at the largest whole value a Decimal(38, 18) row could hold: their sum is 3 x 10^20, which
    # such a sum silently wrapped to a negative number.
    org = f"wrap-{uuid.uuid4().hex[:8]}"
    warehouse = Warehouse(make_settings())
    big = Decimal(10**20 - 1)
    rows = []
    for n in range(30):
        event = parse_event(build_event(org, "u1", MODEL, 1, 1, request_id=f"r{n}").to_json())
        rows.append(rated_row(rated_record(event, provider_cost_usd=big, credits=big, credit_rule="tokens",
                                           price_version="test", status="applied", partition=0, offset=n,
                                           processed_at=0.0, placement=PLACEMENT)))
    warehouse.insert_rated(RATED_EVENTS, rows, dedupe_token=org)
    ((credits, cost),) = warehouse.query((
        "SELECT sum(credits), sum(provider_cost_usd) FROM rated_events FINAL WHERE org_id = {org:String}",
        {"org": org}))
    assert credits == cost == big * 30

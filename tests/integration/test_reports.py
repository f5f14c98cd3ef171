"""Operator reports on real chDB, over a generated power-law population whose figures the test
computes itself: the cost distribution per user, and the users above k x the median."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterline.schemas.rated import RATED_FIELDS
from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks.queries import RATED_EVENTS
from meterline.sinks.reports import LEVELS, cost_distribution, heavy_users

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _row(org: str, user: str, request_id: str, cost: Decimal, when: datetime, model: str = "gpt-4o") -> list[object]:
    values = {name: 0 for name in RATED_FIELDS} | {
        "org_id": org, "user_id": user, "request_id": request_id, "event_time": when, "model": model, "action": "",
        "reported_cost_usd": None, "provider_cost_usd": cost, "credits": cost * 100, "credit_rule": "tokens",
        "price_version": "v", "source": "test", "metadata": {}, "status": "applied", "processed_at": when}
    return [values[name] for name in RATED_FIELDS]


@pytest.fixture(scope="module")
def report_settings(broker_settings: Settings) -> Settings:
    return broker_settings.model_copy(update={"clickhouse_database": f"reports_{uuid.uuid4().hex[:8]}"})


@pytest.fixture(scope="module")
def population(report_settings: Settings) -> tuple[Warehouse, dict[str, Decimal]]:
    """1,000 users of org `pl` with Pareto-distributed costs, 1-5 events each, every 7th event written twice
    (a replay: the same row again), plus events outside the period and another org's, which must not count."""
    warehouse = Warehouse(report_settings)
    rng = random.Random(7)
    cost_of: dict[str, Decimal] = {}
    rows: list[list[object]] = []
    for n in range(1000):
        user = f"u{n}"
        for event in range(rng.randint(1, 5)):
            cost = Decimal(str(round(rng.paretovariate(1.2) * 0.001, 6)))
            when = START + timedelta(seconds=rng.randrange(int((END - START).total_seconds())))
            row = _row("pl", user, f"r{n}-{event}", cost, when, model=rng.choice(["gpt-4o", "claude-opus-4"]))
            rows.append(row)
            if len(rows) % 7 == 0:
                rows.append(list(row))  # replayed: one row per request id after FINAL
            cost_of[user] = cost_of.get(user, Decimal(0)) + cost
        rows.append(_row("pl", user, f"late-{n}", Decimal(5), END))  # the period is half-open: END is outside
    rows.append(_row("other", "u0", "x", Decimal(10**6), START))
    for first in range(0, len(rows), 700):  # several parts, so FINAL has something to do
        warehouse.insert_rated(RATED_EVENTS, rows[first:first + 700], dedupe_token=uuid.uuid4().hex)
    return warehouse, cost_of


def _quantile(ordered: list[Decimal], level: float) -> Decimal:
    return ordered[min(len(ordered) - 1, math.floor(level * len(ordered)))]


def test_the_cost_distribution_matches_a_recomputation(population: tuple[Warehouse, dict[str, Decimal]]) -> None:
    warehouse, cost_of = population
    ordered = sorted(cost_of.values())
    report = cost_distribution(warehouse, START, END, org_id="pl")
    assert report.users == 1000 and report.total_cost == sum(ordered)
    assert report.quantiles == {level: _quantile(ordered, level) for level in LEVELS}
    top = sum(sorted(ordered, reverse=True)[:10])  # the top 1 % of 1,000 users
    assert report.top_1pct_cost == top and report.top_1pct_share == top / sum(ordered)
    assert report.p99_over_median == _quantile(ordered, 0.99) / _quantile(ordered, 0.5)
    assert report.p99_over_median > 10  # a power law: the point of the report


def test_heavy_users_are_those_above_k_times_the_median(population: tuple[Warehouse, dict[str, Decimal]]) -> None:
    warehouse, cost_of = population
    median = _quantile(sorted(cost_of.values()), 0.5)
    expected = sorted(((cost, user) for user, cost in cost_of.items() if cost > median * 20), reverse=True)
    found = heavy_users(warehouse, START, END, org_id="pl", times_median=Decimal(20), limit=1000)
    assert [(u.cost, u.user_id) for u in found] == expected
    assert all(u.times_median == u.cost / median for u in found)
    assert len(heavy_users(warehouse, START, END, org_id="pl", times_median=Decimal(20), limit=3)) == 3


def test_an_empty_period_is_an_empty_report(population: tuple[Warehouse, dict[str, Decimal]]) -> None:
    warehouse, cost_of = population
    # Past what DateTime64 holds (it failed with BAD_QUERY_PARAMETER): clamped, every event inside.
    whole = cost_distribution(warehouse, datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 1, 1, tzinfo=timezone.utc), "pl")
    assert whole.users == 1000 and whole.total_cost == sum(cost_of.values()) + 1000 * 5  # the late-{n} events too
    report = cost_distribution(warehouse, START - timedelta(days=60), START - timedelta(days=30))
    assert report.users == 0 and report.top_1pct_share is None and report.p99_over_median is None
    assert heavy_users(warehouse, START - timedelta(days=60), START - timedelta(days=30)) == []


def test_the_report_command_prints_the_same_figures_as_json_and_csv(
        population: tuple[Warehouse, dict[str, Decimal]], report_settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from meterline.cli import main

    _warehouse, cost_of = population
    for name in ("home", "chdb_path", "clickhouse_database"):
        monkeypatch.setenv(f"METERLINE_{name.upper()}", str(getattr(report_settings, name)))
    period = ["--org", "pl", "--from", START.isoformat(), "--to", END.isoformat()]
    assert main(["report", "distribution", *period, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    ordered = sorted(cost_of.values())
    assert row["users"] == 1000 and Decimal(row["total_cost_usd"]) == sum(ordered)
    assert Decimal(row["p99.9_usd"]) == _quantile(ordered, 0.999)
    assert main(["report", "heavy-users", *period, "--times-median", "20", "--format", "csv", "--limit", "5"]) == 0
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    top = max(cost_of, key=lambda user: cost_of[user])
    assert len(lines) == 5 and lines[0]["user_id"] == top and Decimal(lines[0]["cost_usd"]) == cost_of[top]
    assert main(["report", "distribution", "--from", END.isoformat(), "--to", START.isoformat()]) == 2
    assert "must be before --to" in capsys.readouterr().err


def test_cycle_usage_worked_out_by_hand(report_settings: Settings) -> None:
    """The seeds' Pro plan pooled by an org at 130 credits; a user on their own plan and anchor; a default
    (free) user past the cap; a mid-cycle upgrade at exactly half the cycle."""
    from meterline.pricing.catalogue import default_catalogue
    from meterline.schemas.subscription import Subscription
    from meterline.sinks.reports import cycle_usage

    warehouse = Warehouse(report_settings)

    def event(org: str, user: str, credits: int, when: datetime, cost: str = "0.01") -> list[object]:
        row = _row(org, user, uuid.uuid4().hex, Decimal(cost), when)
        row[RATED_FIELDS.index("credits")] = Decimal(credits)
        row[RATED_FIELDS.index("input_tokens")] = credits * 1000
        return row

    nov = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = [event("cyc", "u1", 80, nov + timedelta(days=2)), event("cyc", "u2", 30, nov + timedelta(days=3)),
            event("cyc", "u2", 20, nov + timedelta(days=29, hours=23)),
            event("cyc", "u2", 999, nov + timedelta(days=30)),  # Dec 1 00:00: the next cycle
            event("cyc", "vip", 40, nov + timedelta(days=9)),  # Nov 10: vip's previous cycle (Oct 15 - Nov 15)
            event("cyc", "vip", 100, nov + timedelta(days=15), cost="2.5"),
            event("solo", "a", 60, nov + timedelta(days=5)),
            event("chg", "b", 10, nov + timedelta(days=20))]
    warehouse.insert_rated(RATED_EVENTS, rows, dedupe_token=uuid.uuid4().hex)
    warehouse.insert_rated(RATED_EVENTS, rows[:2], dedupe_token=uuid.uuid4().hex)  # a replay: counted once
    subscriptions = {
        "cyc": Subscription(org_id="cyc", plan="pro", since=nov),
        "cyc/vip": Subscription(org_id="cyc", user_id="vip", plan="enterprise", since=datetime(2026, 10, 15, tzinfo=timezone.utc)),
        "chg": Subscription(org_id="chg", plan="pro", since=nov, changes=[{"plan": "enterprise", "at": nov + timedelta(days=15)}]),
    }
    at = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
    catalogue = default_catalogue()

    pool, vip = cycle_usage(warehouse, "cyc", subscriptions, catalogue, "free", at)
    assert (pool.entity, pool.plan, pool.users, pool.events, pool.credits) == ("cyc", "pro", 2, 3, Decimal(130))
    assert (pool.cycle_start, pool.cycle_end) == (nov, datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert pool.included_credits == 100 and pool.overage_credits == 30
    assert pool.revenue == Decimal("29.00")  # $20 + 30 x $0.30
    assert pool.provider_cost == Decimal("0.03") and pool.margin == 1 - Decimal("0.03") / Decimal("29.00")
    assert (vip.entity, vip.plan, vip.credits, vip.events) == ("cyc/vip", "enterprise", Decimal(100), 1)
    assert vip.cycle_start == datetime(2026, 11, 15, tzinfo=timezone.utc) and vip.revenue == Decimal("750.00")
    assert vip.overage_credits == 0 and vip.margin == 1 - Decimal("2.5") / 750

    (solo,) = cycle_usage(warehouse, "solo", subscriptions, catalogue, "free", at)
    assert (solo.entity, solo.plan, solo.credits, solo.included_credits) == ("solo/a", "free", Decimal(60), Decimal(50))
    assert solo.overage_credits == 10 and solo.revenue == 0 and solo.margin is None  # a hard cap bills nothing

    (upgraded,) = cycle_usage(warehouse, "chg", subscriptions, catalogue, "free", at)
    assert upgraded.plan == "enterprise"
    assert upgraded.included_credits == Decimal("2550.00")  # 100 x 1/2 + 5,000 x 1/2
    assert upgraded.revenue == Decimal("385.00") and "Pro -> Enterprise" in upgraded.note  # $20 x 1/2 + $750 x 1/2


def test_cycle_usage_of_many_users_on_the_default_plan(report_settings: Settings) -> None:
    """Users inserted in random order come back one entity each, in user order, then the user with a
    plan of their own; each one's charge is what a full invoice of the same credits says."""
    from meterline.pricing.catalogue import default_catalogue
    from meterline.pricing.invoice import compute_invoice
    from meterline.schemas.subscription import Subscription
    from meterline.sinks.reports import cycle_usage

    warehouse = Warehouse(report_settings)
    rng = random.Random(11)
    nov = datetime(2026, 11, 1, tzinfo=timezone.utc)
    credits_of = {f"u{n:03d}": Decimal(rng.randint(0, 9000)) / 100 for n in range(300)}  # around the free 50
    rows = []
    for user, credits in rng.sample(sorted(credits_of.items()), len(credits_of)):
        row = _row("many", user, f"r-{user}", Decimal("0.001"), nov + timedelta(days=rng.randint(0, 29)))
        row[RATED_FIELDS.index("credits")] = credits
        rows.append(row)
    warehouse.insert_rated(RATED_EVENTS, rows, dedupe_token=uuid.uuid4().hex)
    warehouse.insert_rated(RATED_EVENTS, rows[:50], dedupe_token=uuid.uuid4().hex)  # a replay: counted once
    subscriptions = {"many/u007": Subscription(org_id="many", user_id="u007", plan="pro", since=nov)}
    catalogue = default_catalogue()

    found = cycle_usage(warehouse, "many", subscriptions, catalogue, "free", datetime(2026, 11, 20, tzinfo=timezone.utc))
    on_default = sorted(user for user in credits_of if user != "u007")
    assert [usage.entity for usage in found] == [f"many/{user}" for user in on_default] + ["many/u007"]
    for usage in found:
        user = usage.entity.partition("/")[2]
        invoice = compute_invoice(usage.plan, catalogue.plan(usage.plan), credits_of[user])
        assert (usage.events, usage.credits) == (1, credits_of[user])
        assert (usage.overage_credits, usage.revenue) == (invoice.beyond_allowance, invoice.total), user
    assert {usage.plan for usage in found} == {"free", "pro"}


def test_the_cycle_report_reads_subscriptions_from_kafka(report_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from meterline.cli import main
    from meterline.schemas.subscription import Subscription
    from meterline.subscriptions import publish

    settings = report_settings.model_copy(update={"subscriptions_topic": f"subs-{uuid.uuid4().hex[:8]}"})
    nov = datetime(2026, 11, 1, tzinfo=timezone.utc)
    org = f"o{uuid.uuid4().hex[:6]}"
    publish(settings, [Subscription(org_id=org, plan="pro", since=nov)])
    row = _row(org, "u1", "only", Decimal("0.5"), nov + timedelta(days=1))
    row[RATED_FIELDS.index("credits")] = Decimal(130)
    Warehouse(settings).insert_rated(RATED_EVENTS, [row], dedupe_token=uuid.uuid4().hex)
    for name in ("home", "chdb_path", "clickhouse_database", "subscriptions_topic"):
        monkeypatch.setenv(f"METERLINE_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("METERLINE_BOOTSTRAP", settings.kafka_bootstrap)
    assert main(["report", "cycle", org, "--at", "2026-11-20T00:00:00Z", "--format", "json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert (found["entity"], found["plan"]) == (org, "pro")
    assert Decimal(found["revenue_usd"]) == Decimal("29.00") and Decimal(found["overage_credits"]) == 30
    assert main(["report", "cycle", "a/b"]) == 2

"""Top users with their model mix, the model mix, and spikes against each user's own week, on real
chDB; every figure is recomputed here from the generated rows, replays and other orgs included."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks.queries import RATED_EVENTS
from meterline.sinks.reports import BASELINE_DAYS, RATE_LIMIT, model_mix, spikes, top_users
from tests.integration.test_reports import _row

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)  # the day looked at; the week before is the baseline
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-opus-4"]


@pytest.fixture(scope="module")
def usage(broker_settings: Settings) -> tuple[Warehouse, list[tuple[str, str, str, Decimal, datetime]]]:
    """200 users of org `ol` over the 7 days before DAY and DAY itself (a few of them jump on DAY), every
    5th row written twice, another org's rows and rows outside the window; returns the distinct rows."""
    warehouse = Warehouse(broker_settings.model_copy(update={"clickhouse_database": f"outliers_{uuid.uuid4().hex[:8]}"}))
    rng = random.Random(11)
    distinct, rows = [], []
    for n in range(200):
        user, daily = f"u{n}", Decimal(str(round(rng.paretovariate(1.3) * 0.01, 6)))
        jump = 30 if n % 40 == 0 else 1  # u0, u40, ...: 30 times their usual cost per event on DAY
        for offset in range(-BASELINE_DAYS, 1):
            if n % 25 == 1 and offset < 0:
                continue  # u1, u26, ...: new on DAY, no baseline
            for event in range(rng.randint(1, 3)):
                cost = daily * (jump if offset == 0 else 1) * Decimal(rng.randint(50, 150)) / 100
                when = DAY + timedelta(days=offset, seconds=rng.randrange(86_400))
                distinct.append(("ol", user, rng.choice(MODELS), cost, when))
                rows.append(_row("ol", user, f"r{n}/{offset}/{event}", cost, when, model=distinct[-1][2]))
                if len(rows) % 5 == 0:
                    rows.append(list(rows[-1]))  # replayed
        rows.append(_row("ol", user, f"early-{n}", Decimal(100), DAY - timedelta(days=BASELINE_DAYS + 1)))
    rows.append(_row("other", "u0", "x", Decimal(10**6), DAY))
    for first in range(0, len(rows), 300):
        warehouse.insert_rated(RATED_EVENTS, rows[first:first + 300], dedupe_token=uuid.uuid4().hex)
    return warehouse, distinct


def test_spikes_are_the_users_above_k_times_their_own_mean_day_of_the_week_before(usage) -> None:  # type: ignore[no-untyped-def]
    warehouse, distinct = usage
    today, before = defaultdict(Decimal), defaultdict(Decimal)
    for _org, user, _model, cost, when in distinct:
        (today if when >= DAY else before)[user] += cost
    expected = sorted((today[u] / (before[u] / BASELINE_DAYS), u) for u in today
                      if before[u] > 0 and today[u] > 3 * before[u] / BASELINE_DAYS)
    found = spikes(warehouse, DAY, org_id="ol", times_baseline=Decimal(3), limit=1000)
    assert [(s.times_baseline, s.user_id) for s in found] == sorted(expected, reverse=True)
    assert {s.user_id for s in found} >= {f"u{n}" for n in range(0, 200, 40)}  # the jumps are found
    assert not {s.user_id for s in found} & {f"u{n}" for n in range(1, 200, 25)}  # no baseline: not a spike
    assert all(s.as_row()["suggestion"] == RATE_LIMIT for s in found)
    assert all(s.day_cost == today[s.user_id] and s.baseline == before[s.user_id] / BASELINE_DAYS for s in found)


def test_top_users_carry_their_model_mix(usage) -> None:  # type: ignore[no-untyped-def]
    warehouse, distinct = usage
    start, end = DAY - timedelta(days=BASELINE_DAYS), DAY + timedelta(days=1)
    per_model: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for _org, user, model, cost, _when in distinct:
        per_model[user][model] += cost
    totals = {user: sum(models.values()) for user, models in per_model.items()}
    expected = sorted(totals, key=lambda user: (-totals[user], user))[:10]
    found = top_users(warehouse, start, end, org_id="ol", limit=10)
    assert [(u.user_id, u.cost) for u in found] == [(user, totals[user]) for user in expected]
    for top in found:
        assert {m.model: m.cost for m in top.models} == per_model[top.user_id]
        assert [m.cost for m in top.models] == sorted((m.cost for m in top.models), reverse=True)
        assert sum(m.share for m in top.models) == pytest.approx(1)  # type: ignore[misc]


def test_the_model_mix_sums_to_the_period(usage) -> None:  # type: ignore[no-untyped-def]
    warehouse, distinct = usage
    start, end = DAY - timedelta(days=BASELINE_DAYS), DAY + timedelta(days=1)
    cost, events = defaultdict(Decimal), defaultdict(int)
    for _org, _user, model, amount, _when in distinct:
        cost[model] += amount
        events[model] += 1
    found = model_mix(warehouse, start, end, org_id="ol")
    assert {m.model: (m.cost, m.events) for m in found} == {model: (cost[model], events[model]) for model in cost}
    assert [m.cost for m in found] == sorted(cost.values(), reverse=True)
    assert sum(m.share for m in found) == pytest.approx(1)  # type: ignore[misc]


def test_the_commands_print_them_and_odd_days_are_no_traceback(usage, broker_settings: Settings,  # type: ignore[no-untyped-def]
                                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from meterline.cli import main

    warehouse, _distinct = usage
    for name, value in (("home", broker_settings.home), ("chdb_path", broker_settings.chdb_path),
                        ("clickhouse_database", warehouse.database)):
        monkeypatch.setenv(f"METERLINE_{name.upper()}", str(value))
    assert main(["report", "spikes", "--org", "ol", "--day", "2026-11-20T13:00:00Z", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["user_id"] for row in rows] == [s.user_id for s in spikes(warehouse, DAY, "ol", Decimal(3))]
    period = ["--org", "ol", "--from", (DAY - timedelta(days=7)).isoformat(), "--to", (DAY + timedelta(days=1)).isoformat()]
    assert main(["report", "top", *period, "--limit", "3", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # a header and three users
    assert main(["report", "models", *period, "--format", "csv"]) == 0
    assert {line.split(",")[0] for line in capsys.readouterr().out.splitlines()[1:]} == set(MODELS)
    for day in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):  # past what the warehouse holds: clamped
        assert main(["report", "spikes", "--day", day, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_losses_are_the_entities_that_cost_more_than_they_pay_with_the_plan_that_would_cover_them(
        broker_settings: Settings) -> None:
    """Worked out by hand on the shipped plans (free $0 capped at 50 credits, pro $20 + $0.30 a credit
    past 100, enterprise $750 with 5,000 included)."""
    from meterline.pricing.catalogue import default_catalogue
    from meterline.schemas.rated import RATED_FIELDS
    from meterline.schemas.subscription import Subscription
    from meterline.sinks.reports import MOVE_UP, cycle_usage, negative_margins

    warehouse = Warehouse(broker_settings.model_copy(update={"clickhouse_database": f"losses_{uuid.uuid4().hex[:8]}"}))
    nov = datetime(2026, 11, 1, tzinfo=timezone.utc)

    def event(org: str, user: str, credits: int, cost: str) -> list[object]:
        row = _row(org, user, uuid.uuid4().hex, Decimal(cost), nov + timedelta(days=3))
        row[RATED_FIELDS.index("credits")] = Decimal(credits)
        return row

    rows = [event("free-org", "cheap", 10, "0.05"), event("free-org", "heavy", 60, "0.50"),
            event("pooled", "a", 80, "30"), event("pooled", "b", 50, "10"),  # 130 credits: $29 of revenue, $40 of cost
            event("big", "whale", 100, "10000")]  # on enterprise: no plan's invoice covers $10,000
    warehouse.insert_rated(RATED_EVENTS, rows, dedupe_token=uuid.uuid4().hex)
    warehouse.insert_rated(RATED_EVENTS, rows, dedupe_token=uuid.uuid4().hex)  # replayed: counted once
    subscriptions = {"pooled": Subscription(org_id="pooled", plan="pro", since=nov),
                     "big": Subscription(org_id="big", plan="enterprise", since=nov)}
    catalogue, at = default_catalogue(), nov + timedelta(days=10)

    def losses(org: str) -> list[tuple[str, Decimal, str]]:
        found = negative_margins(cycle_usage(warehouse, org, subscriptions, catalogue, "free", at), catalogue)
        return [(loss.usage.entity, loss.as_row()["loss_usd"], loss.suggestion) for loss in found]

    # Free users cost money and pay nothing; pro's $20 fee covers either.
    assert losses("free-org") == [("free-org/heavy", Decimal("0.50"), f"{MOVE_UP}: pro ($20.00 this cycle)"),
                                  ("free-org/cheap", Decimal("0.05"), f"{MOVE_UP}: pro ($20.00 this cycle)")]
    # $29.00 against $40: enterprise bills $750 for 130 credits, the lowest that covers it.
    assert losses("pooled") == [("pooled", Decimal("11.00"), f"{MOVE_UP}: enterprise ($750.00 this cycle)")]
    assert losses("big") == [("big", Decimal(10000 - 750), "rate-limit")]
    # With a limit, the largest losses only.
    (largest,) = negative_margins(cycle_usage(warehouse, "free-org", subscriptions, catalogue, "free", at), catalogue, 1)
    assert largest.usage.entity == "free-org/heavy"

"""reserve / commit / release against real workers on a real broker (processors/holds.py has the rules).

Expected figures are computed here: a gpt-4o-mini or claude-sonnet-4 call costs (input + output)
/ 1000 credits, a claude-opus-4 call five times that (pricing/defaults/plans.yaml).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from meterline.auth import org_key
from meterline.pricing.config import default_path
from meterline.producers import AsyncMeter, Meter
from meterline.producers.reservations import ReservationUnusable
from meterline.schemas.subscription import Subscription
from meterline.settings import Settings
from meterline.subscriptions import publish
from tests.integration.pipeline import another_worker, read_topic, running_pipeline, stop, wait_for

MINI = "gpt-4o-mini"


def plans_with(tmp_path: Path, **limits: dict) -> Path:
    """The default plans with some plans' limits replaced (e.g. free={"concurrent_requests": 1000})."""
    catalogue = yaml.safe_load(default_path("plans.yaml").read_text())
    for plan, changes in limits.items():
        catalogue["plans"][plan]["limits"].update(changes)
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    return path


def meter_for(settings: Settings, org_id: str, **overrides: object) -> Meter:
    key = org_key(settings.api_secret.get_secret_value(), org_id)  # type: ignore[union-attr]
    return Meter(settings, enforcement_url=settings.worker_url, api_key=key, **overrides)


def reservations(settings: Settings, org_id: str, user_id: str, url: str | None = None) -> dict:
    key = org_key(settings.api_secret.get_secret_value(), org_id)  # type: ignore[union-attr]
    request = urllib.request.Request(f"{url or settings.worker_url}/v1/orgs/{org_id}/users/{user_id}/reservations",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def spend(meter: Meter, pipeline, org_id: str, user_id: str, credits: int) -> None:
    """Use `credits` of the user's allowance with one gpt-4o-mini event, and wait until it is counted."""
    meter.emit(org_id, user_id, MINI, credits * 1000, 0)
    meter.flush()
    assert wait_for(lambda: Decimal(pipeline.balance(org_id, user_id)["used"]) == credits, timeout=60)


def test_a_free_hard_cap_holds_exactly_under_200_concurrent_reserves_threads_and_asyncio(
        make_settings: Callable[..., Settings], tmp_path: Path):
    settings = make_settings(plans=plans_with(tmp_path, free={"concurrent_requests": 1000, "requests_per_minute": 10**6}))
    org = "org-cap"
    with running_pipeline(settings, with_sink=False) as pipeline, meter_for(settings, org) as meter:
        for user in ("threads", "tasks"):
            spend(meter, pipeline, org, user, 40)  # Free includes 50: 10 left
            assert Decimal(pipeline.balance(org, user)["remaining"]) == 10

        with ThreadPoolExecutor(max_workers=200) as pool:
            decisions = list(pool.map(lambda _i: meter.reserve(org, "threads", MINI, estimate=1), range(200)))

        async def reserve_concurrently() -> list:
            async with AsyncMeter(settings, enforcement_url=settings.worker_url, api_key=meter.settings.api_key) as async_meter:
                found = list(await asyncio.gather(*(async_meter.reserve(org, "tasks", MINI, estimate=1) for _ in range(200))))
                held = Decimal(pipeline.balance(org, "tasks")["reserved"])
                for reservation in found:
                    if reservation.allowed:
                        await reservation.commit(1000, 0)  # exactly the credit it held
                return found, held

        async_decisions, async_held = asyncio.run(reserve_concurrently())
        threads_held = Decimal(pipeline.balance(org, "threads")["reserved"])
        for found, held in ((decisions, threads_held), (async_decisions, async_held)):
            assert sum(r.allowed for r in found) == 10, [r.reason for r in found if not r.allowed][:5]
            assert {r.reason for r in found if not r.allowed} == {"balance"}
            assert held == 10
        for reservation in decisions:
            if reservation.allowed:
                reservation.commit(1000, 0)
        meter.flush()
        for user in ("threads", "tasks"):
            assert wait_for(lambda: Decimal(pipeline.balance(org, user)["used"]) == 50, timeout=60)
            balance = pipeline.balance(org, user)
            assert (Decimal(balance["remaining"]), Decimal(balance["reserved"])) == (0, 0)
            assert reservations(settings, org, user)["open"] == 0
            refused = meter.reserve(org, user, MINI, estimate=Decimal("0.001"))
            assert not refused.allowed and refused.reason == "balance"

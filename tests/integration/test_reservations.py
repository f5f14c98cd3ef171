"""reserve / commit / release against real workers on a real broker (processors/holds.py has the rules).

Expected figures are computed here: a gpt-4o-mini or claude-sonnet-4 call costs (input + output)
/ 1000 credits, a claude-opus-4 call five times that (pricing/defaults/plans.yaml).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
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


def subscribe(settings: Settings, org_id: str, user_id: str, plan: str) -> None:
    publish(settings, [Subscription(org_id=org_id, user_id=user_id, plan=plan, since="2026-01-01T00:00:00Z")])


def test_fifty_long_reservations_of_a_pro_user_never_have_more_than_ten_open(
        make_settings: Callable[..., Settings], tmp_path: Path):
    settings = make_settings(plans=plans_with(tmp_path, pro={"requests_per_minute": 10**6}))
    org, user = "org-slots", "busy"
    subscribe(settings, org, user, "pro")
    lock, open_now, most_open, outside = threading.Lock(), [0], [0], []
    done = threading.Event()

    def long_call(meter: Meter) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with meter.reserve(org, user, MINI, estimate=Decimal("0.01")) as reservation:
                if not reservation.allowed:
                    assert reservation.reason == "concurrency"
                    time.sleep(min(reservation.retry_after or 0.05, 0.05))
                    continue
                with lock:
                    open_now[0] += 1
                    most_open[0] = max(most_open[0], open_now[0])
                time.sleep(0.3)  # the model call
                with lock:
                    open_now[0] -= 1
                reservation.release()
                return reservation.reservation_id
        raise AssertionError("no slot within 60 s")

    def watch() -> None:  # the worker's own count of open holds, from the outside
        while not done.is_set():
            outside.append(reservations(settings, org, user)["open"])
            time.sleep(0.05)

    with running_pipeline(settings, with_sink=False), meter_for(settings, org) as meter:
        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(max_workers=50) as pool:
            served = list(pool.map(lambda _i: long_call(meter), range(50)))
        done.set()
        watcher.join()
    assert len(set(served)) == 50  # every call got its slot in the end
    assert most_open[0] == 10  # the limit was reached, never passed
    assert max(outside) <= 10 and max(outside) >= 5


def test_over_the_rate_a_pro_request_for_opus_is_allowed_on_sonnet_and_rated_as_sonnet(
        make_settings: Callable[..., Settings], tmp_path: Path):
    # One request a minute and no burst: the second, a moment later, is over the rate.
    settings = make_settings(plans=plans_with(tmp_path, pro={"requests_per_minute": 1, "burst": {"multiplier": 1, "seconds": 0}}),
                             rated_topic=f"rated-{uuid.uuid4().hex[:10]}")  # its own: read from the start below
    org, user = "org-degrade", "fast"
    subscribe(settings, org, user, "pro")
    with running_pipeline(settings) as pipeline, meter_for(settings, org) as meter:
        decisions = []
        for _ in range(2):
            with meter.reserve(org, user, "claude-opus-4", input_tokens=1000, output_tokens=0) as reservation:
                decisions.append(reservation)
                reservation.commit(1000, 0)
        meter.flush()
        assert [(r.allowed, r.model, r.reason) for r in decisions] == [
            (True, "claude-opus-4", None), (True, "claude-sonnet-4", "rate")]
        assert decisions[0].held == 5 and decisions[1].held == 1  # opus 5 credits per 1,000 tokens, sonnet 1
        assert wait_for(lambda: pipeline.balance(org, user)["events"] == 2, timeout=60)
        assert Decimal(pipeline.balance(org, user)["used"]) == 5 + 1  # the cheaper call costs the cheaper price
        rated = [json.loads(m.value()) for m in read_topic(settings, settings.rated_topic, 2)]
        models = {r["request_id"]: r["model"] for r in rated}
        assert models[decisions[1].reservation_id] == "claude-sonnet-4"
        recorded = [json.loads(m.value()) for m in read_topic(settings, settings.decisions_topic, 1)]
        assert [(d["outcome"], d["reason"], d["requested_model"], d["model"]) for d in recorded] == [
            ("degraded", "rate", "claude-opus-4", "claude-sonnet-4")]
        assert pipeline.stats()["decisions_degraded_rate"] == 1

        def stored() -> list:  # operators see who hits limits
            return pipeline.warehouse.query((
                "SELECT reservation_id, outcome, reason, model, held, plan FROM usage_decisions FINAL "
                "WHERE org_id = {org:String}", {"org": org}))

        assert wait_for(lambda: len(stored()) == 1, timeout=60)
        assert stored() == [(decisions[1].reservation_id, "degraded", "rate", "claude-sonnet-4", Decimal(1), "pro")]


def test_reserve_twice_is_one_decision_release_twice_is_harmless_and_a_late_commit_still_charges(
        make_settings: Callable[..., Settings], tmp_path: Path):
    settings = make_settings(plans=plans_with(tmp_path, free={"requests_per_minute": 10**6}))
    org, user = "org-retries", "u"
    with running_pipeline(settings, with_sink=False) as pipeline, meter_for(settings, org) as meter:
        first = meter.reserve(org, user, MINI, estimate=2, reservation_id="call-1")
        again = meter.reserve(org, user, MINI, estimate=2, reservation_id="call-1")
        assert first.allowed and again.allowed and again.held == first.held == 2
        assert reservations(settings, org, user)["open"] == 1 and Decimal(pipeline.balance(org, user)["reserved"]) == 2
        first.release()
        first.release()
        assert reservations(settings, org, user)["open"] == 0

        short = meter.reserve(org, user, MINI, estimate=1, ttl_seconds=1)
        assert short.allowed
        assert wait_for(lambda: reservations(settings, org, user)["open"] == 0, timeout=10, interval=0.2)  # expired
        short.commit(3000, 0)  # after its TTL: still charged in full, and flagged
        meter.flush()
        assert wait_for(lambda: Decimal(pipeline.balance(org, user)["used"]) == 3, timeout=60)
        assert wait_for(lambda: pipeline.stats().get("commits_after_expiry") == 1, timeout=30)
        flagged = [json.loads(m.value()) for m in read_topic(settings, settings.decisions_topic, 1)]
        assert [(d["reservation_id"], d["outcome"], d["charged"]) for d in flagged] == [(short.reservation_id, "committed_after_expiry", "3")]


def test_a_bad_reservation_is_refused_naming_the_field_and_a_bad_key_gets_nothing(make_settings: Callable[..., Settings]):
    settings = make_settings()
    org = "org-bad"
    with running_pipeline(settings, with_sink=False), meter_for(settings, org) as meter:
        with pytest.raises(ReservationUnusable) as unknown:
            meter.reserve(org, "u", "no-such-model", estimate=1)
        assert unknown.value.fields == ["model"]
        with pytest.raises(ReservationUnusable) as negative:
            meter.reserve(org, "u", MINI, estimate=-1)
        assert negative.value.fields == ["estimate"]
        with pytest.raises(ReservationUnusable) as odd_id:
            meter.reserve(org, "u", MINI, estimate=1, reservation_id="with space")
        assert odd_id.value.fields == ["reservation_id"]
        with pytest.raises(ReservationUnusable) as long_id:
            meter.reserve(org, "u", MINI, estimate=1, reservation_id="x" * 129)  # longer than a request id
        assert long_id.value.fields == ["reservation_id"]
        with pytest.raises(ReservationUnusable) as odd_user:
            meter.reserve(org, "a user", MINI, estimate=1)  # no event of theirs could commit it
        assert odd_user.value.fields == ["user_id"]
        key = org_key(settings.api_secret.get_secret_value(), org)  # type: ignore[union-attr]
        for path in ("users/a%20user/balance", "users/a%20user/reservations", "users/%01/reservations/r1"):
            request = urllib.request.Request(f"{settings.worker_url}/v1/orgs/{org}/{path}", headers={"Authorization": f"Bearer {key}"},
                                             method="DELETE" if path.endswith("r1") else "GET")
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(request, timeout=10)
            assert error.value.code == 400 and json.loads(error.value.read())["problems"][0]["field"] == "user_id", path
        with meter_for(settings, "another-org") as stranger:
            with pytest.raises(ReservationUnusable) as refused:
                stranger.reserve(org, "u", MINI, estimate=1)  # another org's key
        assert "401" in str(refused.value)
        for body in (b"\xff\xfe not json", b"[]", b'{"reservation_id": "x", "model": "gpt-4o-mini", "estimate": "NaN"}'):
            key = org_key(settings.api_secret.get_secret_value(), org)  # type: ignore[union-attr]
            request = urllib.request.Request(f"{settings.worker_url}/v1/orgs/{org}/users/u/reservations", data=body,
                                             headers={"Authorization": f"Bearer {key}"}, method="POST")
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(request, timeout=10)
            assert error.value.code == 400 and "invalid reservation" in json.loads(error.value.read())["error"]


def test_holds_survive_a_sigkill_expire_on_time_and_move_with_their_users_in_a_rebalance(
        make_settings: Callable[..., Settings], tmp_path: Path):
    settings = make_settings(plans=plans_with(tmp_path, free={"requests_per_minute": 10**6}))
    org = "org-kill"
    users = [f"u{i}" for i in range(8)]
    with running_pipeline(settings, with_sink=False) as pipeline, meter_for(settings, org) as meter:
        held_at = time.time()
        for user in users:  # Free: 2 at a time; both slots taken, for 25 s
            for _ in range(2):
                assert meter.reserve(org, user, MINI, estimate=1, ttl_seconds=25).allowed
        pipeline.kill_worker()
        pipeline.start_worker()
        for user in users:
            assert reservations(settings, org, user)["open"] == 2
            refused = meter.reserve(org, user, MINI, estimate=1)
            assert not refused.allowed and refused.reason == "concurrency"

        other, second = another_worker(settings)
        try:
            def both_serve() -> bool:  # each user answered by its owner, whichever worker is asked
                try:
                    return all(reservations(settings, org, user, url)["open"] == 2
                               for user in users for url in (settings.worker_url, other.worker_url))
                except OSError:
                    return False

            assert wait_for(both_serve, timeout=120)
            key = org_key(settings.api_secret.get_secret_value(), org)  # type: ignore[union-attr]
            owners = set()
            for user in users:
                request = urllib.request.Request(f"{settings.worker_url}/v1/orgs/{org}/users/{user}/reservations",
                                                 headers={"Authorization": f"Bearer {key}"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    owners.add(response.headers.get("Meterline-Owner") or settings.worker_url)
            assert owners == {settings.worker_url, other.worker_url}  # some users moved, with their holds
            for user in users:
                assert not meter.reserve(org, user, MINI, estimate=1).allowed
            assert wait_for(lambda: all(reservations(settings, org, u)["open"] == 0 for u in users), timeout=40, interval=0.5)
            assert time.time() - held_at >= 25  # not before their TTL
            assert all(meter.reserve(org, user, MINI, estimate=1).allowed for user in users)
        finally:
            stop(second)


def test_an_org_pool_on_a_hard_cap_is_held_for_all_its_users_together(make_settings: Callable[..., Settings], tmp_path: Path):
    settings = make_settings(plans=plans_with(tmp_path, free={"concurrent_requests": 1000, "requests_per_minute": 10**6}))
    org = "org-pool-cap"
    users = [f"member{i}" for i in range(5)]
    publish(settings, [Subscription(org_id=org, plan="free", since="2026-01-01T00:00:00Z")])  # one pool of 50 for the org
    with running_pipeline(settings, with_sink=False) as pipeline, meter_for(settings, org) as meter:
        for user in users:
            meter.emit(org, user, MINI, 9000, 0)  # 45 of the pool's 50 credits, spread over the users' partitions
        meter.flush()
        assert wait_for(lambda: Decimal((pipeline.org_balance(org)["pool"] or {}).get("used", -1)) == 45, timeout=90)

        with ThreadPoolExecutor(max_workers=100) as pool:
            decisions = list(pool.map(lambda i: (users[i % 5], meter.reserve(org, users[i % 5], MINI, estimate=1)), range(100)))
        allowed = [(user, r) for user, r in decisions if r.allowed]
        assert len(allowed) == 5 and {r.reason for _user, r in decisions if not r.allowed} == {"balance"}
        assert sum(reservations(settings, org, user)["open"] for user in users) == 5  # each listed under its own user
        for user, reservation in allowed:
            reservation.commit(1000, 0)
        meter.flush()
        assert wait_for(lambda: Decimal(pipeline.org_balance(org)["pool"]["used"]) == 50, timeout=90)
        assert wait_for(lambda: sum(reservations(settings, org, user)["open"] for user in users) == 0, timeout=30)
        assert not meter.reserve(org, users[0], MINI, estimate=Decimal("0.001")).allowed


def test_in_real_time_a_burst_runs_at_twice_the_steady_rate_then_at_the_steady_rate(
        make_settings: Callable[..., Settings], tmp_path: Path):
    # 10 a second steady, 2x for 4 s (the defaults' shape, shortened): offered 40 a second for 10 s.
    settings = make_settings(plans=plans_with(tmp_path, free={"concurrent_requests": 1000, "requests_per_minute": 600,
                                                              "burst": {"multiplier": 2, "seconds": 4}}))
    org, user = "org-burst", "steady"
    with running_pipeline(settings, with_sink=False), meter_for(settings, org) as meter:
        allowed_at, started = [], time.monotonic()
        for n in range(400):
            pause = started + n / 40 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with meter.reserve(org, user, MINI, estimate=Decimal("0.001")) as reservation:
                if reservation.allowed:
                    allowed_at.append(time.monotonic() - started)
                else:
                    assert reservation.reason == "rate"
                reservation.release()
    burst = sum(1 for t in allowed_at if t < 4)
    steady = sum(1 for t in allowed_at if 6 <= t < 10) / 4
    # Computed here: 2 x 10/s for 4 s is 80, then 10 a second; 20 % for a shared machine's timing.
    assert 64 <= burst <= 96, allowed_at
    assert 8 <= steady <= 12, allowed_at

"""Subscriptions published to Kafka decide each live balance's plan and cycle (real broker, worker process, chDB).

Expected figures are computed here: a gpt-4o-mini event without an action costs
(input + output) / 1000 credits; Pro includes 100 credits a cycle from its anchor, Enterprise
5,000, and a user without a subscription is on Free (50) in calendar months.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterline.auth import org_key, user_token
from meterline.cli import main
from meterline.processors.views import openapi_document
from meterline.producers import Meter, build_event
from meterline.schemas.subscription import Subscription
from meterline.settings import Settings
from meterline.subscriptions import publish
from tests.integration.pipeline import another_worker, counted, read_topic, running_pipeline, stop, wait_for, worker_logs

MODEL = "gpt-4o-mini"


def credits(input_tokens: int, output_tokens: int) -> Decimal:
    return (Decimal(input_tokens) + Decimal(output_tokens)) / 1000


def test_balances_follow_the_subscriptions_published_before_and_during_the_run(make_settings: Callable[..., Settings]):
    settings = make_settings()
    org = "org-accounts"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    alice_since = now - timedelta(days=10)
    publish(settings, [Subscription(org_id=org, user_id="alice", plan="pro", since=alice_since)])
    at = now - timedelta(hours=1)
    with running_pipeline(settings) as pipeline, Meter(settings) as meter:
        for user, request_id, tokens in (("alice", "a1", (1200, 300)), ("alice", "a2", (500, 0)), ("bob", "b1", (40, 2))):
            meter.send(build_event(org, user, MODEL, *tokens, request_id=request_id, timestamp=at))
        meter.flush()
        assert wait_for(lambda: counted(pipeline, org, {"alice", "bob"}) == 3)
        alice, bob = pipeline.balance(org, "alice"), pipeline.balance(org, "bob")
        schemas = openapi_document()["components"]["schemas"]
        assert set(alice) == set(bob) == set(schemas["Balance"]["properties"])  # the document says what is served
        with urllib.request.urlopen(f"{settings.worker_url}/openapi.json", timeout=5) as response:
            assert json.loads(response.read()) == openapi_document()

        used = credits(1200, 300) + credits(500, 0)
        assert (alice["plan"], alice["subscriber"], alice["cycle_start"]) == ("pro", f"{org}/alice", alice_since.isoformat())
        assert (Decimal(alice["included"]), Decimal(alice["used"]), Decimal(alice["remaining"])) == (100, used, 100 - used)
        assert alice["as_of"] == at.isoformat() and alice["lag_ms"] >= 0

        month_start = at.replace(day=1, hour=0, minute=0, second=0)
        assert (bob["plan"], bob["subscriber"], bob["cycle_start"]) == ("free", None, month_start.isoformat())
        assert Decimal(bob["remaining"]) == 50 - credits(40, 2)

        # Published while the worker runs: the next event of carol is counted on it.
        carol_since = now - timedelta(days=1)
        publish(settings, [Subscription(org_id=org, user_id="carol", plan="enterprise", since=carol_since)])
        assert wait_for(lambda: pipeline.stats()["subscriptions"] >= 2, timeout=30)
        meter.send(build_event(org, "carol", MODEL, 1000, 0, request_id="c1", timestamp=at))
        meter.flush()
        assert wait_for(lambda: counted(pipeline, org, {"carol"}) == 1)
        carol = pipeline.balance(org, "carol")
        assert (carol["plan"], carol["cycle_start"], Decimal(carol["remaining"])) == ("enterprise", carol_since.isoformat(), 4999)

        # The warehouse holds where each event was counted.
        def rows() -> list:
            return pipeline.warehouse.query((
                "SELECT user_id, plan, cycle_start, late FROM rated_events FINAL WHERE org_id = {org:String} ORDER BY request_id",
                {"org": org}))

        assert wait_for(lambda: len(rows()) == 4, timeout=60)
        assert [(user, plan, start.replace(tzinfo=timezone.utc) if start.tzinfo is None else start, late)
                for user, plan, start, late in rows()] == [
            ("alice", "pro", alice_since, False), ("alice", "pro", alice_since, False),
            ("bob", "free", month_start, False), ("carol", "enterprise", carol_since, False)]



def test_a_grant_from_the_command_line_is_applied_once(make_settings: Callable[..., Settings],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    for name, value in {"BOOTSTRAP": settings.kafka_bootstrap, "HOME": str(settings.home),
                        "USAGE_TOPIC": settings.usage_topic}.items():
        monkeypatch.setenv(f"METERLINE_{name}", value)
    org = "org-grants"
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        meter.send(build_event(org, "dana", MODEL, 30_000, 0, request_id="d1"))  # 30 of Free's 50
        meter.flush()
        assert wait_for(lambda: counted(pipeline, org, {"dana"}) == 1), pipeline.stats()
        grant = ["grants", "add", org, "--user", "dana", "--credits", "12.5", "--reason", "ticket 7", "--id", "g-7"]
        assert main(grant) == 0
        assert main(grant) == 0  # a retry with the same id
        assert wait_for(lambda: pipeline.stats()["grants"] == 1 and pipeline.stats()["duplicate_grants"] == 1), pipeline.stats()
        dana = pipeline.balance(org, "dana")
        assert (Decimal(dana["grants"]), Decimal(dana["remaining"])) == (Decimal("12.5"), 50 + Decimal("12.5") - 30)
        assert main(["grants", "add", org, "--user", "dana", "--credits", "-1", "--reason", "x"]) == 2  # refused here
        # 30 of 50 crossed 50 %; with the grant, 30 of 62.5 is 48 %: cleared. Once each, keyed by the user.
        alerts = read_topic(settings, settings.alerts_topic, expected=2, drain=True)
        assert [(m.key(), json.loads(m.value())["condition"], json.loads(m.value())["state"]) for m in alerts] == [
            (b"org-grants/dana", "usage_50", "crossed"), (b"org-grants/dana", "usage_50", "resolved")]


def test_the_org_balance_sums_every_workers_users_and_shows_the_pool(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    org, secret = "org-pool", settings.api_secret.get_secret_value()  # type: ignore[union-attr]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    pool_since = now - timedelta(days=3)
    publish(settings, [Subscription(org_id=org, plan="pro", since=pool_since),
                       Subscription(org_id=org, user_id="solo", plan="enterprise", since=pool_since)])
    tokens = {f"p{n}": 1000 * (n + 1) for n in range(10)} | {"solo": 7000}
    with running_pipeline(settings, with_sink=False), Meter(settings) as meter:
        other, process = another_worker(settings)
        try:
            for user, count in tokens.items():
                meter.send(build_event(org, user, MODEL, count, 0, request_id=f"r-{user}", timestamp=now - timedelta(hours=1)))
            meter.flush()
            pooled = sum(Decimal(count) / 1000 for user, count in tokens.items() if user != "solo")  # 55

            def org_balance(url: str = settings.worker_url, token: str = org_key(secret, org)) -> dict:
                request = urllib.request.Request(f"{url}/v1/orgs/{org}/balance", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.loads(response.read())

            last: list[object] = []

            def complete() -> bool:
                try:
                    answers = [org_balance(), org_balance(other.worker_url)]
                except urllib.error.HTTPError as error:
                    last[:] = [error.code, error.read()[:300]]
                    return False
                except OSError as error:
                    last[:] = [error]
                    return False
                last[:] = answers
                # The pool's own account follows its users' by the hop through the pool usage topic.
                return all(answer["events"] == len(tokens) and (answer["pool"] or {}).get("events_in_cycle") == 10
                           for answer in answers)

            assert wait_for(complete, timeout=120), last
            for url in (settings.worker_url, other.worker_url):  # either worker answers for all
                body = org_balance(url)
                schemas = openapi_document()["components"]["schemas"]
                assert set(body) == set(schemas["OrgBalance"]["properties"])
                assert set(body["pool"]) == set(schemas["OrgBalance"]["properties"]["pool"]["anyOf"][0]["properties"])
                assert (body["users"], Decimal(body["credits_used"])) == (11, pooled + 7)
                pool = body["pool"]
                assert (pool["plan"], pool["cycle_start"], Decimal(pool["used"])) == ("pro", pool_since.isoformat(), pooled)
                assert Decimal(pool["remaining"]) == 100 - pooled and pool["events_in_cycle"] == 10
            for token in (org_key(secret, "another-org"), user_token(secret, org, "p1", int(now.timestamp()) + 600)):
                with pytest.raises(urllib.error.HTTPError) as refused:
                    org_balance(token=token)
                assert refused.value.code == 401
        finally:
            stop(process)


def test_an_org_pool_carries_over_into_its_next_cycle_and_alerts_once_per_level(make_settings: Callable[..., Settings]) -> None:
    """Pro, pooled: 100 credits a cycle, the unused part carried into the next (at most 100, one cycle).

    Cycle 1 (from 40 days ago): 60 credits used by six users spread over both workers' partitions.
    Cycle 2 (from about 9 days ago): 100 included + 40 carried; 20 used, then 60 more: 50 % crossed.
    The partitions reach the pool in no particular order, cycle 1's last events maybe after cycle 2's first.
    """
    settings = make_settings()
    org = "org-rollover"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    anchor = now - timedelta(days=40)
    anchor = anchor.replace(day=min(anchor.day, 28))  # a day every month has: the next cycle starts a month later
    publish(settings, [Subscription(org_id=org, plan="pro", since=anchor)])
    second_cycle = anchor.replace(month=anchor.month + 1) if anchor.month < 12 else anchor.replace(year=anchor.year + 1, month=1)
    with running_pipeline(settings, with_sink=False), Meter(settings) as meter:
        other, process = another_worker(settings)
        try:
            for n in range(6):
                meter.send(build_event(org, f"q{n}", MODEL, 10_000, 0, request_id=f"a{n}", timestamp=now - timedelta(days=20)))
            meter.flush()
            for n in range(4):
                meter.send(build_event(org, f"q{n}", MODEL, 5_000, 0, request_id=f"b{n}", timestamp=now - timedelta(hours=1)))
            meter.flush()
            secret = settings.api_secret.get_secret_value()  # type: ignore[union-attr]
            request = urllib.request.Request(f"{settings.worker_url}/v1/orgs/{org}/balance",
                                             headers={"Authorization": f"Bearer {org_key(secret, org)}"})

            def pool() -> dict:
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        return json.loads(response.read())["pool"] or {}
                except OSError:
                    return {}

            def diagnosis() -> str:  # seen failing once in CI, not since in 20 runs: say all that is known
                return f"pool {json.dumps(pool())}; second worker's exit code {process.poll()}\n{worker_logs(settings)}"

            assert wait_for(lambda: pool().get("events_in_cycle") == 4, timeout=120), diagnosis()
            shown = pool()
            assert (shown["cycle_start"], Decimal(shown["included"]), Decimal(shown["carried"]), Decimal(shown["used"])) == (
                second_cycle.isoformat(), 100, 40, 20)
            assert Decimal(shown["remaining"]) == 120
            # Then 60 more in the live cycle: 80 of 140 crosses 50 %, once, whichever worker applies it.
            for n in range(6):
                meter.send(build_event(org, f"q{n}", MODEL, 10_000, 0, request_id=f"c{n}", timestamp=now - timedelta(minutes=5)))
            meter.flush()
            assert wait_for(lambda: pool().get("events_in_cycle") == 10, timeout=120), diagnosis()
            assert Decimal(pool()["used"]) == 80
            alerts = [json.loads(m.value()) for m in read_topic(settings, settings.alerts_topic, expected=1, drain=True)]
            live = [(a["condition"], a["state"]) for a in alerts
                    if a["org_id"] == org and a["user_id"] is None and a["cycle_start"] == second_cycle.isoformat()]
            assert live == [("usage_50", "crossed")], alerts
        finally:
            stop(process)

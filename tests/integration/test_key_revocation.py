"""`meterline keys ORG --revoke`: every key and token the org had stops working, on every worker (real broker, worker processes)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from meterline.auth import REVOKED, org_key, user_token
from meterline.cli import main
from meterline.producers import Meter, build_event
from meterline.revocations import REVOCATION_TYPE
from meterline.settings import Settings
from tests.integration.pipeline import another_worker, counted, running_pipeline, stop, wait_for

ORG, OTHER_ORG = "org-revoked", "org-untouched"


def status_of(url: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_revoked_keys_and_tokens_are_refused_and_the_new_key_and_other_orgs_work(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings()
    secret = settings.api_secret.get_secret_value()  # type: ignore[union-attr]
    for name, value in {"BOOTSTRAP": settings.kafka_bootstrap, "HOME": str(settings.home), "API_SECRET": secret,
                        "KEY_REVOCATIONS_TOPIC": settings.key_revocations_topic}.items():
        monkeypatch.setenv(f"METERLINE_{name}", value)
    later = int(time.time()) + 3600
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        for org in (ORG, OTHER_ORG):
            meter.send(build_event(org, "u1", "gpt-4o-mini", 1000, 0))
        meter.flush()
        assert wait_for(lambda: counted(pipeline, ORG, {"u1"}) == 1 and counted(pipeline, OTHER_ORG, {"u1"}) == 1)
        user_url = f"{settings.worker_url}/v1/orgs/{ORG}/users/u1/balance"
        org_url = f"{settings.worker_url}/v1/orgs/{ORG}/balance"
        old_key, old_token = org_key(secret, ORG), user_token(secret, ORG, "u1", later)
        other_key = org_key(secret, OTHER_ORG)
        assert status_of(user_url, old_key)[0] == status_of(user_url, old_token)[0] == status_of(org_url, old_key)[0] == 200

        assert main(["keys", ORG, "--revoke"]) == 2  # a revocation needs its reason
        capsys.readouterr()
        assert main(["keys", ORG, "--revoke", "--reason", "leaked in a support ticket"]) == 0
        new_key = capsys.readouterr().out.strip()
        assert wait_for(lambda: status_of(user_url, old_key)[0] == 401, timeout=15)
        for url, token in ((user_url, old_key), (user_url, old_token), (org_url, old_key)):
            assert status_of(url, token) == (401, {"error": REVOKED})
        assert status_of(user_url, new_key)[0] == status_of(org_url, new_key)[0] == 200
        assert status_of(user_url, user_token(secret, ORG, "u1", later))[0] == 200  # issued after the revocation
        assert status_of(f"{settings.worker_url}/v1/orgs/{OTHER_ORG}/users/u1/balance", other_key)[0] == 200
        assert status_of(f"{settings.worker_url}/v1/orgs/{OTHER_ORG}/balance", other_key)[0] == 200

        # A record that is not a revocation, or names another org than its key, revokes nothing.
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        producer.produce(settings.key_revocations_topic, b"\xff not json", OTHER_ORG.encode())
        producer.produce(settings.key_revocations_topic, json.dumps(
            {"type": REVOCATION_TYPE, "org_id": ORG, "revoked_before_ms": 10**13}).encode(), OTHER_ORG.encode())
        producer.flush(10)
        assert wait_for(lambda: pipeline.stats()["key_revocations_unreadable"] == 2, timeout=15), pipeline.stats()
        assert status_of(f"{settings.worker_url}/v1/orgs/{OTHER_ORG}/balance", other_key)[0] == 200

        # A worker started after the revocation reads it before it answers anything.
        other, process = another_worker(settings)
        try:
            def answered() -> int:
                try:
                    return status_of(f"{other.worker_url}/v1/orgs/{ORG}/balance", old_key)[0]
                except OSError:
                    return 0  # not listening yet

            assert wait_for(lambda: answered() not in (0, 503), timeout=90)
            assert answered() == 401
        finally:
            stop(process)

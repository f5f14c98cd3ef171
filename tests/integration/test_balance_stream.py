"""GET .../balance/stream: server-sent events from the owner of the user's partition (real broker, worker processes)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from meterline.auth import org_key
from meterline.producers import Meter, build_event
from meterline.settings import Settings
from tests.integration.pipeline import another_worker, running_pipeline, stop, wait_for

MODEL = "gpt-4o-mini"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # let the test see the 307 itself


def open_stream(base_url: str, token: str, org: str, user: str) -> Any:
    request = urllib.request.Request(f"{base_url}/v1/orgs/{org}/users/{user}/balance/stream",
                                     headers={"Authorization": f"Bearer {token}"})
    return urllib.request.build_opener(NoRedirect).open(request, timeout=30)


def events(stream: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; comment lines (keep-alives) are skipped."""
    name = ""
    for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


def test_the_stream_sends_the_balance_then_each_change(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    org, secret = "org-stream", settings.api_secret.get_secret_value()  # type: ignore[union-attr]
    with running_pipeline(settings, with_sink=False), Meter(settings) as meter:
        with open_stream(settings.worker_url, org_key(secret, org), org, "erin") as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            received = events(stream)
            name, first = next(received)
            assert (name, first["events"], first["used"]) == ("balance", 0, "0")
            expected = Decimal(0)
            for n, tokens in enumerate((1000, 250, 5)):
                meter.send(build_event(org, "erin", MODEL, tokens, 0, request_id=f"e{n}"))
                meter.flush()
                expected += Decimal(tokens) / 1000
                while True:  # changes may coalesce: read until this one shows
                    name, update = next(received)
                    assert name == "balance"
                    if Decimal(update["used"]) == expected:
                        break
            assert update["events"] == 3


def test_a_stream_asked_of_another_worker_is_redirected_to_the_owner(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    org, secret = "org-stream", settings.api_secret.get_secret_value()  # type: ignore[union-attr]
    with running_pipeline(settings, with_sink=False):
        other, process = another_worker(settings)
        try:
            token = org_key(secret, org)

            def answers() -> dict[str, tuple[int, str]]:
                found = {}
                for user in (f"u{n}" for n in range(12)):
                    try:
                        with open_stream(settings.worker_url, token, org, user) as stream:
                            found[user] = (200, next(events(stream))[1]["user_id"])
                    except urllib.error.HTTPError as error:
                        found[user] = (error.code, error.headers.get("Location", ""))
                return found

            # Once the second worker has its share, some of the 12 users live on each worker.
            assert wait_for(lambda: {code for code, _ in answers().values()} == {200, 307}, timeout=90), answers()
            found = answers()
            redirected = [location for code, location in found.values() if code == 307]
            assert all(location.startswith(other.worker_url) and "/balance/stream" in location for location in redirected)
            assert all(user == shown for user, (code, shown) in found.items() if code == 200)
        finally:
            stop(process)


def test_a_stream_needs_the_users_credentials(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    secret = settings.api_secret.get_secret_value()  # type: ignore[union-attr]
    with running_pipeline(settings, with_sink=False):
        with pytest.raises(urllib.error.HTTPError) as refused:
            open_stream(settings.worker_url, org_key(secret, "another-org"), "org-stream", "erin")
        assert refused.value.code == 401

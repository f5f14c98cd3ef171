"""The SDK's side of reserve(): retries within the deadline, the unreachable policy, the block's exits.

A real HTTP server on 127.0.0.1 plays the worker (our own seam: the decisions come from
processors/holds.py in the integration tests); "unreachable" is a port nothing listens on.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from meterline.producers import Meter
from meterline.producers.reservations import FAIL_OPEN_METADATA, ReservationWarning
from meterline.schemas import InvalidEventError
from meterline.stack import free_port


class FakeWorker(BaseHTTPRequestHandler):
    """Answers 503 `busy` times, then allows; records every request."""

    busy = 0
    seen: list[tuple[str, str, dict[str, Any] | None]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(("POST", self.path, body))
        if type(self).busy > 0:
            type(self).busy -= 1
            return self._answer(503, {"error": "rebalancing, retry shortly"})
        self._answer(200, {"reservation_id": body["reservation_id"], "allowed": True, "model": body["model"],
                           "requested_model": body["model"], "degraded": False, "reason": None, "retry_after": None,
                           "held": body.get("estimate", "0"), "expires_at": time.time() + 600, "plan": "pro",
                           "state": "open", "hard_cap": False})

    def do_DELETE(self) -> None:  # noqa: N802
        type(self).seen.append(("DELETE", self.path, None))
        self._answer(200, {"released": True})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def worker_url():
    FakeWorker.busy, FakeWorker.seen = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def meter(url: str, tmp_path, **overrides: Any) -> Meter:
    return Meter(bootstrap="127.0.0.1:1", spool_dir=tmp_path, enforcement_url=url, api_key="mlk_test", **overrides)


def test_a_busy_owner_is_retried_with_the_same_reservation_id(worker_url, tmp_path):
    FakeWorker.busy = 2
    with meter(worker_url, tmp_path) as m:
        reservation = m.reserve("acme", "u1", "gpt-4o", estimate=1)
        assert reservation.allowed and not reservation.fail_open
    ids = [body["reservation_id"] for method, _path, body in FakeWorker.seen if method == "POST"]
    assert len(ids) == 3 and len(set(ids)) == 1


@pytest.mark.parametrize("policy, allowed", [("closed", False), ("open", True), ("plan", False)])
def test_no_owner_within_the_deadline_applies_the_policy(tmp_path, policy, allowed):
    nowhere = f"http://127.0.0.1:{free_port()}"
    with meter(nowhere, tmp_path, reserve_deadline_seconds=0.3, reserve_when_unreachable=policy) as m:
        started = time.monotonic()
        reservation = m.reserve("acme", "never-seen", "gpt-4o", estimate=1)
        assert time.monotonic() - started < 1.5
    assert (reservation.allowed, reservation.reason, reservation.fail_open) == (allowed, "owner_unreachable", allowed)


def test_plan_policy_allows_a_user_last_seen_on_an_overage_plan(worker_url, tmp_path):
    with meter(worker_url, tmp_path, reserve_deadline_seconds=0.3) as m:
        assert m.reserve("acme", "pro-user", "gpt-4o", estimate=1).allowed  # the worker says: no hard cap
        m._endpoint.base_url = f"http://127.0.0.1:{free_port()}"  # then the worker goes away
        assert m.reserve("acme", "pro-user", "gpt-4o", estimate=1).fail_open
        assert not m.reserve("acme", "stranger", "gpt-4o", estimate=1).allowed


def test_a_fail_open_commit_marks_the_event(tmp_path):
    sent: list[dict[str, Any]] = []
    with meter(f"http://127.0.0.1:{free_port()}", tmp_path, reserve_deadline_seconds=0.2,
               reserve_when_unreachable="open") as m:
        m.emit = lambda *args, **fields: sent.append(fields) or fields["request_id"]  # type: ignore[method-assign]
        with m.reserve("acme", "u", "gpt-4o", estimate=1) as reservation:
            request_id = reservation.commit(10, 5)
    assert request_id == reservation.reservation_id and sent[0]["metadata"] == {FAIL_OPEN_METADATA: "true"}


def test_leaving_the_block_releases_on_an_exception_and_warns_without_commit(worker_url, tmp_path):
    with meter(worker_url, tmp_path) as m:
        with pytest.raises(RuntimeError), m.reserve("acme", "u", "gpt-4o", estimate=1):
            raise RuntimeError("the provider timed out")
        with pytest.warns(ReservationWarning):
            with m.reserve("acme", "u", "gpt-4o", estimate=1):
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with m.reserve("acme", "u", "gpt-4o", estimate=1) as reservation:
                reservation.release()
    assert [method for method, _path, _body in FakeWorker.seen] == ["POST", "DELETE", "POST", "DELETE", "POST", "DELETE"]


def test_a_reserve_without_an_estimate_is_refused_before_any_request(worker_url, tmp_path):
    with meter(worker_url, tmp_path) as m, pytest.raises(InvalidEventError) as error:
        m.reserve("acme", "u", "gpt-4o")
    assert error.value.fields == ["estimate"] and FakeWorker.seen == []

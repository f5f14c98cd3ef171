"""Alert webhooks on a real broker and a real HTTP receiver on 127.0.0.1: signed, retried, once each, in order."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from meterline.processors.accounts import Alert, alert_record
from meterline.settings import Settings
from meterline.stack import ensure_topics, free_port, produce_and_wait
from meterline.webhooks import ALERT_ID_HEADER, SIGNATURE_HEADER, DeliveryCounts, deliver_alerts, verify_signature
from tests.integration.pipeline import wait_for

SECRET = "mlw_test-webhook-secret"
CYCLE = datetime(2026, 12, 1, tzinfo=timezone.utc)


class Receiver:
    """Answers `script(alert_id, attempt)`'s status and records every request."""

    def __init__(self, script: Callable[[str, int], int]):
        self.script = script
        self.requests: list[tuple[str, int, bytes, str]] = []  # (alert id, status answered, body, signature)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                alert_id = urllib.parse.unquote(self.headers[ALERT_ID_HEADER])
                attempt = sum(1 for request in receiver.requests if request[0] == alert_id)
                status = receiver.script(alert_id, attempt)
                receiver.requests.append((alert_id, status, body, self.headers[SIGNATURE_HEADER]))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/meterline"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[str]:
        return [alert_id for alert_id, status, _body, _signature in self.requests if 200 <= status < 300]


@contextmanager
def delivering(settings: Settings, url: str) -> Iterator[tuple[threading.Event, DeliveryCounts, threading.Thread]]:
    stop, counts = threading.Event(), DeliveryCounts()
    thread = threading.Thread(target=deliver_alerts, args=(settings, url, SECRET, stop, counts), daemon=True)
    thread.start()
    try:
        yield stop, counts, thread
    finally:
        stop.set()
        thread.join(30)


def publish_alerts(settings: Settings, users: list[str], level: int = 50) -> list[str]:
    records = []
    for user in users:
        alert = Alert(level, f"usage_{level}", "crossed", "free", CYCLE, Decimal(30), Decimal(50))
        records.append((f"acme/{user}".encode(), alert_record("acme", user, alert, time.time())))
    produce_and_wait(settings, settings.alerts_topic, records)
    return [json.loads(value)["id"] for _key, value in records]


def test_alerts_are_delivered_signed_once_each_through_failures_and_restarts(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(alert_webhook_group=f"hooks-{free_port()}")
    ensure_topics(settings)
    # Each alert fails twice (500, then 429) before it is taken; one is refused for good (400).
    receiver = Receiver(lambda alert_id, attempt: 400 if "/refused/" in alert_id else (500, 429, 204)[min(attempt, 2)])
    # A user id no HTTP header could carry as is (found trying it: urllib refused the header, and
    # the alert was retried forever).
    sent = publish_alerts(settings, [f"u{n}" for n in range(5)] + ["ユーザー\u2028é", "refused"])
    with delivering(settings, receiver.url) as (stop, counts, thread):
        assert wait_for(lambda: counts.delivered + counts.skipped == 7, timeout=60), receiver.requests
        stopped_at = time.monotonic()
    assert not thread.is_alive() and time.monotonic() - stopped_at < 5
    expected = [alert_id for alert_id in sent if "/refused/" not in alert_id]
    assert sorted(receiver.delivered()) == sorted(expected)  # each exactly once
    assert (counts.skipped, counts.statuses, counts.retries) == (1, [400], 12)
    for alert_id, _status, body, signature in receiver.requests:
        assert json.loads(body)["id"] == alert_id
        assert verify_signature(SECRET, signature, body, time.time())
        at, digest = (part.split("=", 1)[1] for part in signature.split(","))
        assert digest == hmac.new(SECRET.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    # A restart delivers what is new, after what came before, and nothing again (offsets were committed).
    later = publish_alerts(settings, ["u0"], level=80)
    with delivering(settings, receiver.url) as (_stop, counts, _thread):
        assert wait_for(lambda: counts.delivered == 1, timeout=60)
        time.sleep(1)  # time for a wrong redelivery of anything committed before
    assert receiver.delivered() == [*receiver.delivered()[:-1], *later] and len(receiver.delivered()) == len(expected) + 1


def test_a_stop_while_the_receiver_is_down_is_prompt_and_loses_no_alert(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(alert_webhook_group=f"hooks-{free_port()}")
    ensure_topics(settings)
    down = f"http://127.0.0.1:{free_port()}/nothing-listens-here"
    sent = publish_alerts(settings, ["u1"])
    with delivering(settings, down) as (stop, counts, thread):
        assert wait_for(lambda: counts.retries >= 3, timeout=30)
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
    receiver = Receiver(lambda _alert_id, _attempt: 200)
    with delivering(settings, receiver.url) as (_stop, counts, _thread):
        assert wait_for(lambda: counts.delivered == 1, timeout=60)
    assert receiver.delivered() == sent

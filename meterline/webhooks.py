"""Alert webhooks: every record of the alerts topic POSTed to one URL, signed, retried until it is taken.

`meterline alerts deliver --url URL` runs `deliver_alerts` until SIGTERM. Rules:

- The body is the alert record exactly as the worker published it (JSON); `Meterline-Alert-Id`
  repeats its `id`, percent-encoded (user ids may hold any Unicode, headers may not), the same
  for the same crossing, so a receiver drops a repeat by it.
- `Meterline-Signature: t=<unix seconds>,v1=<hex>`: HMAC-SHA256 of `"<t>.<body>"` with the webhook
  secret (`webhook_secret`, derived from the API secret: `meterline keys --webhook`). A receiver
  checks it with `verify_signature`, which also refuses a stale `t` (a replayed request).
- A 2xx answer delivers the alert. A network error, a timeout, 408, 429 or 5xx is retried with
  exponential backoff (0.5 s doubling to 60 s), the same alert again, for as long as it takes:
  alerts stay in order per user. Any other answer (a 4xx: the receiver refuses it for good) is
  logged with its status and skipped, never retried forever.
- The partition's offset is committed only after its alert was delivered or skipped, so a
  crash or a restart repeats at most the alerts in flight (at least once; hence the id).
- A stop (SIGTERM) interrupts a backoff at once; the alert being retried is delivered by the
  next run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from meterline.exceptions import ConfigurationError
from meterline.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Meterline-Signature"
ALERT_ID_HEADER = "Meterline-Alert-Id"
SIGNATURE_TOLERANCE_SECONDS = 300
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 10.0
RETRIED_STATUSES = frozenset({408, 429})


def webhook_secret(api_secret: str) -> str:
    """The webhook signing secret: derived, so a receiver never holds the key that signs API keys."""
    return "mlw_" + hmac.new(api_secret.encode(), b"alert-webhooks", hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, now: float,
                     tolerance: float = SIGNATURE_TOLERANCE_SECONDS) -> bool:
    """What a receiver runs: True if `header` signs `body` with `secret` and was made within `tolerance` of `now`."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    at, digest = parts.get("t", ""), parts.get("v1", "")
    if not (at.isascii() and at.isdigit() and len(at) <= 12) or abs(now - int(at)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, int(at)).encode(), f"t={at},v1={digest}".encode())


def shown_url(url: str) -> str:
    """The URL without credentials, path or query: what a log line may show."""
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.scheme}://{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")


def check_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigurationError(f"the webhook URL must be http:// or https:// with a host, got {shown_url(url)!r}")
    return url


@dataclass
class DeliveryCounts:
    delivered: int = 0
    skipped: int = 0  # refused for good by the receiver (a 4xx other than 408 / 429)
    retries: int = 0
    statuses: list[int] = field(default_factory=list)  # of the skipped ones


def _post(url: str, secret: str, body: bytes, alert_id: str) -> int:
    """The receiver's HTTP status; 0 for a network error or a timeout."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", ALERT_ID_HEADER: urllib.parse.quote(alert_id, safe="/:+@"),
        SIGNATURE_HEADER: sign(secret, body, int(time.time())), "User-Agent": "meterline-alerts/1"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return 0


def _deliver_one(url: str, secret: str, body: bytes, stop: threading.Event, counts: DeliveryCounts,
                 wait: Callable[[float], None]) -> bool:
    """Deliver (or skip) one alert; False if `stop` came first. `wait(seconds)` sleeps between tries."""
    try:
        alert_id = str(orjson.loads(body).get("id", ""))
    except (orjson.JSONDecodeError, AttributeError):
        alert_id = ""
    backoff = FIRST_BACKOFF_SECONDS
    while not stop.is_set():
        status = _post(url, secret, body, alert_id)
        if 200 <= status < 300:
            counts.delivered += 1
            return True
        if 400 <= status < 500 and status not in RETRIED_STATUSES:
            log.warning("%s refused alert %r with HTTP %d: skipped", shown_url(url), alert_id, status)
            counts.skipped += 1
            counts.statuses.append(status)
            return True
        counts.retries += 1
        log.info("%s answered %s for alert %r: retrying in %.1fs", shown_url(url), status or "nothing", alert_id, backoff)
        wait(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
    return False


def deliver_alerts(settings: Settings, url: str, secret: str, stop: threading.Event,
                   counts: DeliveryCounts | None = None) -> DeliveryCounts:
    """POST every alert of `settings.alerts_topic` to `url` until `stop` (rules in the module's docstring)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    check_url(url)
    counts = counts if counts is not None else DeliveryCounts()
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.alert_webhook_group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.alerts_topic])

    def wait(seconds: float) -> None:
        # Polled while paused: the consumer stays in its group through a long outage of the
        # receiver (a consumer that stops polling is dropped after max.poll.interval.ms).
        paused = consumer.assignment()
        consumer.pause(paused)
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            consumer.poll(min(0.2, max(deadline - time.monotonic(), 0)))
        consumer.resume(paused)

    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if not _deliver_one(url, secret, message.value() or b"", stop, counts, wait):
                break  # stopped: not committed, so the next run delivers it
            try:
                consumer.commit(offsets=[TopicPartition(message.topic(), message.partition(), message.offset() + 1)],
                                asynchronous=False)
            except KafkaException as error:  # e.g. the partition moved to another deliverer meanwhile
                log.warning("could not commit alert delivery on %s[%d]: %s (it may be delivered again)",
                            message.topic(), message.partition(), error)
    finally:
        consumer.close()
    return counts

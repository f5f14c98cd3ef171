"""Alert webhooks are signed so that a receiver can tell them from forgeries and replays."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from meterline.exceptions import ConfigurationError
from meterline.webhooks import check_url, shown_url, sign, verify_signature, webhook_secret

SECRET = webhook_secret("api-secret")
BODY = b'{"id":"acme/u1/2026-12-01T00:00:00+00:00/50/crossed"}'
NOW = 1_800_000_000


def test_the_signature_is_an_hmac_of_the_instant_and_the_body_that_the_receiver_checks() -> None:
    header = sign(SECRET, BODY, NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify_signature(SECRET, header, BODY, NOW + 10)


@pytest.mark.parametrize("tampered", [
    lambda h: h, lambda h: h.replace(f"t={NOW}", f"t={NOW + 1}"), lambda h: h[:-1] + ("0" if h[-1] != "0" else "1"),
    lambda h: "", lambda h: "t=,v1=", lambda h: f"t={'9' * 40},v1=ab", lambda h: "garbage", lambda h: h.replace("v1=", "v2="),
])
def test_a_changed_body_instant_or_signature_or_a_stale_request_is_refused(tampered) -> None:  # type: ignore[no-untyped-def]
    header = tampered(sign(SECRET, BODY, NOW))
    assert not verify_signature(SECRET, header, BODY + b" ", NOW)  # another body: never
    if header != sign(SECRET, BODY, NOW):
        assert not verify_signature(SECRET, header, BODY, NOW)
    assert not verify_signature(SECRET, sign(SECRET, BODY, NOW), BODY, NOW + 301)  # replayed later
    assert not verify_signature(webhook_secret("another"), sign(SECRET, BODY, NOW), BODY, NOW)


def test_the_webhook_secret_is_not_the_api_secret_and_urls_are_shown_without_credentials() -> None:
    assert "api-secret" not in SECRET and SECRET != webhook_secret("api-secret2")
    assert shown_url("https://user:hunter2@hooks.example.com:8443/path?token=abc") == "https://hooks.example.com:8443"
    for bad in ("ftp://x", "hooks.example.com", "http://", "file:///etc/passwd"):
        with pytest.raises(ConfigurationError):
            check_url(bad)

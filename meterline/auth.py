"""Org API keys and end-user tokens, signed with one server secret (HMAC-SHA256).

An org key opens every balance of that org; a user token (for a customer portal) opens one
user's own balance until it expires: its expiry is part of what is signed, so it cannot be
extended. Neither opens another org. The operator key opens only the worker's own counters.
Comparisons are constant-time.

Revocation: every key and token carries the instant it was issued (milliseconds, signed). An
org's revocation (meterline/revocations.py) says "issued before T": every key and token of the
org issued earlier is refused from then on, and keys issued later work. Issuing stays offline
(no list of keys to keep), and a leaked key dies with one record. Keys made before keys carried
their issue instant (`mlk_<hex>`, `mlu_<expiry>.<hex>`) count as issued at 0: valid until the
org's first revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from meterline.exceptions import ConfigurationError
from meterline.settings import Settings, private_dir

ORG_PREFIX = "mlk_"
USER_PREFIX = "mlu_"


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


def org_key(secret: str, org_id: str, issued_at_ms: int | None = None) -> str:
    issued = _now_ms() if issued_at_ms is None else issued_at_ms
    # "/" cannot be part of an org id, so no org's message is another org's at another instant.
    return f"{ORG_PREFIX}{issued}.{_sign(secret, f'org:{org_id}/{issued}')}"


DEFAULT_TOKEN_TTL_SECONDS = 24 * 3600
MAX_TOKEN_TTL_SECONDS = 366 * 24 * 3600
REFUSED = "an org API key or this user's unexpired token is required"
ORG_KEY_REQUIRED = "the org's API key is required"
REVOKED = "this key was revoked: ask for a new one"
MAX_DIGITS = 15  # of an expiry (seconds) or an issue instant (ms): far past year 9999, and no huge int to parse


def user_token(secret: str, org_id: str, user_id: str, expires_at: int, issued_at_ms: int | None = None) -> str:
    """A token for one user's balance, valid until `expires_at` (epoch seconds)."""
    issued = _now_ms() if issued_at_ms is None else issued_at_ms
    return f"{USER_PREFIX}{issued}.{expires_at}.{_sign(secret, f'user:{org_id}/{user_id}:{expires_at}/{issued}')}"


def operator_key(secret: str) -> str:
    """Opens the worker's own counters (no org's data)."""
    return "mlo_" + _sign(secret, "operator")


def same_key(presented: str, expected: str) -> bool:
    """Constant-time comparison; bytes, so a non-ASCII header is a mismatch, not an error."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def _numbers(text: str, count: int) -> list[int] | None:
    """`count` dot-separated decimal numbers at the start of `text` (before its signature), or None."""
    parts = text.split(".")
    if len(parts) != count + 1 or not all(part.isascii() and part.isdigit() and len(part) <= MAX_DIGITS
                                          for part in parts[:count]):
        return None
    return [int(part) for part in parts[:count]]


def _org_key_issued(secret: str, presented: str, org_id: str) -> int | None:
    """When `presented` was issued, if it is an org key of `org_id` (0: made before keys said so)."""
    if not presented.startswith(ORG_PREFIX):
        return None
    if same_key(presented, ORG_PREFIX + _sign(secret, f"org:{org_id}")):
        return 0
    numbers = _numbers(presented.removeprefix(ORG_PREFIX), 1)
    if numbers is not None and same_key(presented, org_key(secret, org_id, numbers[0])):
        return numbers[0]
    return None


def org_key_refusal(secret: str, presented: str, org_id: str, revoked_before_ms: int = 0) -> str | None:
    """None if `presented` is a live org key of `org_id`; else why not, safe to show the caller."""
    issued = _org_key_issued(secret, presented, org_id)
    if issued is None:
        return ORG_KEY_REQUIRED
    return REVOKED if issued < revoked_before_ms else None


def balance_refusal(secret: str, presented: str, org_id: str, user_id: str, now: float,
                    revoked_before_ms: int = 0) -> str | None:
    """None if `presented` may read this user's balance at `now`; else why not, safe to show the caller.

    `revoked_before_ms`: the org's keys and tokens issued before this instant are refused.
    """
    issued = _org_key_issued(secret, presented, org_id)
    if issued is None and presented.startswith(USER_PREFIX):
        body = presented.removeprefix(USER_PREFIX)
        current, old = _numbers(body, 2), _numbers(body, 1)
        if current is not None and same_key(presented, user_token(secret, org_id, user_id, current[1], current[0])):
            issued, expiry = current
        elif old is not None and same_key(presented, f"{USER_PREFIX}{old[0]}." +
                                          _sign(secret, f"user:{org_id}/{user_id}:{old[0]}")):
            issued, expiry = 0, old[0]
        else:
            return REFUSED
        if expiry <= now:
            return "this user token has expired: ask for a new one"
    if issued is None:
        return REFUSED
    return REVOKED if issued < revoked_before_ms else None


def resolve_secret(settings: Settings) -> str:
    """METERLINE_API_SECRET, or a random secret kept (mode 0600) in the data directory."""
    if settings.api_secret is not None:
        return settings.api_secret.get_secret_value()
    if settings.api_secret_file is not None:
        try:
            secret = settings.api_secret_file.read_text().strip()
        except OSError as error:
            raise ConfigurationError(f"{settings.api_secret_file} (METERLINE_API_SECRET_FILE) cannot be read: "
                                     f"{error.strerror or error}") from None
        if not secret:
            raise ConfigurationError(f"{settings.api_secret_file} (METERLINE_API_SECRET_FILE) is empty")
        return secret
    path: Path = settings.home / "api_secret"
    private_dir(path.parent)
    try:
        # O_EXCL: when two processes start at once, exactly one writes the secret.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    for _ in range(50):  # the writer may not have finished its one write yet
        secret = path.read_text().strip()
        if secret:
            return secret
        time.sleep(0.01)
    raise ConfigurationError(f"{path} is empty: delete it to make a new API secret")

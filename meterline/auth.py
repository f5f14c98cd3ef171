"""Org API keys and end-user tokens, signed with one server secret (HMAC-SHA256).

An org key opens every balance of that org; a user token (for a customer portal) opens one
user's own balance until it expires: its expiry is part of what is signed, so it cannot be
extended. Neither opens another org. The operator key opens only the worker's own counters.
Comparisons are constant-time.
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


def org_key(secret: str, org_id: str) -> str:
    return ORG_PREFIX + _sign(secret, f"org:{org_id}")


DEFAULT_TOKEN_TTL_SECONDS = 24 * 3600
MAX_TOKEN_TTL_SECONDS = 366 * 24 * 3600
REFUSED = "an org API key or this user's unexpired token is required"


def user_token(secret: str, org_id: str, user_id: str, expires_at: int) -> str:
    """A token for one user's balance, valid until `expires_at` (epoch seconds)."""
    return f"{USER_PREFIX}{expires_at}.{_sign(secret, f'user:{org_id}/{user_id}:{expires_at}')}"


def operator_key(secret: str) -> str:
    """Opens the worker's own counters (no org's data)."""
    return "mlo_" + _sign(secret, "operator")


def same_key(presented: str, expected: str) -> bool:
    """Constant-time comparison; bytes, so a non-ASCII header is a mismatch, not an error."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def balance_refusal(secret: str, presented: str, org_id: str, user_id: str, now: float) -> str | None:
    """None if `presented` may read this user's balance at `now`; else why not, safe to show the caller."""
    if same_key(presented, org_key(secret, org_id)):
        return None
    expiry, dot, _signature = presented.removeprefix(USER_PREFIX).partition(".")
    if presented.startswith(USER_PREFIX) and dot and expiry.isascii() and expiry.isdigit() and len(expiry) <= 12 \
            and same_key(presented, user_token(secret, org_id, user_id, int(expiry))):
        return None if int(expiry) > now else "this user token has expired: ask for a new one"
    return REFUSED


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

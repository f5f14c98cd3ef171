"""A small client for the worker's balance API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any


def get_balance(base_url: str, token: str, org_id: str, user_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET the user's balance; `credits_used` comes back as a Decimal."""
    path = f"/v1/orgs/{urllib.parse.quote(org_id, safe='')}/users/{urllib.parse.quote(user_id, safe='')}/balance"
    request = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.loads(response.read())
    body["credits_used"] = Decimal(body["credits_used"])
    return body


def wait_until_serving(base_url: str, token: str, org_id: str, timeout: float = 90.0) -> None:
    """Wait until the worker owns its partitions and answers balance requests.

    It answers 503 while it joins its group or rebalances; that is a moment, not an error.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_balance(base_url, token, org_id, "probe-user")
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

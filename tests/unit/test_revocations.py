"""The revocations feed reads only revocations, and a later record never revives a revoked key."""

from __future__ import annotations

import orjson
import pytest

from meterline.feeds import UnusableRecord
from meterline.revocations import REVOCATION_TYPE, RevocationFeed, revocation_record
from meterline.settings import Settings


def feed() -> RevocationFeed:
    return RevocationFeed(Settings(bootstrap="127.0.0.1:1"))


def test_the_latest_instant_wins_and_a_clock_that_stepped_back_revives_nothing() -> None:
    revocations = feed()
    revocations.latest["acme"] = revocations.parse("acme", revocation_record("acme", 2_000, "leak"))
    assert revocations.revoked_before_ms("acme") == 2_000
    revocations.latest["acme"] = revocations.parse("acme", revocation_record("acme", 1_000, "clock stepped back"))
    assert revocations.revoked_before_ms("acme") == 2_000
    assert revocations.revoked_before_ms("globex") == 0


@pytest.mark.parametrize("value", [
    b"", b"\xff", b"[]", b"{}", b'"acme"',
    orjson.dumps({"type": "dev.meterline.grant.v1", "org_id": "acme", "revoked_before_ms": 5}),
    orjson.dumps({"type": REVOCATION_TYPE, "org_id": "acme", "revoked_before_ms": True}),
    orjson.dumps({"type": REVOCATION_TYPE, "org_id": "acme", "revoked_before_ms": -1}),
    orjson.dumps({"type": REVOCATION_TYPE, "org_id": "acme", "revoked_before_ms": "5"}),
    orjson.dumps({"type": REVOCATION_TYPE, "org_id": "globex", "revoked_before_ms": 5}),  # another org than its key
])
def test_a_record_that_is_not_this_orgs_revocation_is_unusable(value: bytes) -> None:
    with pytest.raises(UnusableRecord):
        feed().parse("acme", value)

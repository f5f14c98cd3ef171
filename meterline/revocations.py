"""Revoking an org's keys and tokens: one record per org on a compacted topic, read by every worker.

A record says "the org's keys and tokens issued before this instant are refused" (meterline/auth.py
says why an issue instant is enough). A later revocation replaces an earlier one; the feed keeps
the latest instant it has seen for the org, so a clock that stepped back cannot revive a key.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import orjson

from meterline.feeds import CompactedFeed, UnusableRecord
from meterline.settings import Settings

REVOCATION_TYPE = "dev.meterline.key_revocation.v1"
MAX_REASON_CHARS = 500


def revocation_record(org_id: str, revoked_before_ms: int, reason: str) -> bytes:
    return orjson.dumps({"type": REVOCATION_TYPE, "org_id": org_id, "revoked_before_ms": revoked_before_ms,
                         "revoked_before": datetime.fromtimestamp(revoked_before_ms / 1000, timezone.utc).isoformat(),
                         "reason": reason[:MAX_REASON_CHARS]})


def revoke(settings: Settings, org_id: str, reason: str) -> int:
    """Revoke every key and token of `org_id` issued until now; return the instant (ms) from which keys are valid.

    Returns once Kafka has the record; the workers apply it as they read it (within about a second).
    """
    from meterline.stack import ensure_topics, produce_and_wait

    # One millisecond ahead: a key issued in this very millisecond, before the revocation, is refused too.
    revoked_before_ms = int(time.time() * 1000) + 1
    ensure_topics(settings, compacted=(settings.key_revocations_topic,))
    produce_and_wait(settings, settings.key_revocations_topic,
                     [(org_id.encode(), revocation_record(org_id, revoked_before_ms, reason))])
    return revoked_before_ms


class RevocationFeed(CompactedFeed[int]):
    """Each org's latest revocation instant (ms); an org without one has every key it was given."""

    def __init__(self, settings: Settings):
        super().__init__(settings.kafka_bootstrap, settings.key_revocations_topic)

    def parse(self, key: str, value: bytes) -> int:
        try:
            record = orjson.loads(value)
            org_id, instant = record["org_id"], record["revoked_before_ms"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UnusableRecord("not a key revocation") from None
        if record.get("type") != REVOCATION_TYPE or not isinstance(instant, int) or isinstance(instant, bool) \
                or instant < 0:
            raise UnusableRecord("not a key revocation")
        if org_id != key:
            raise UnusableRecord(f"its key {key!r} is not its org {org_id!r}")
        return max(instant, self.latest.get(key, 0))

    def revoked_before_ms(self, org_id: str) -> int:
        return self.latest.get(org_id, 0)

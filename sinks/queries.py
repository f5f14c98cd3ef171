"""Warehouse SQL as data: pure functions returning (sql, parameters).

Every read uses FINAL so rows that ReplacingMergeTree has not merged yet
(a duplicate request id) are still counted once.
"""

from __future__ import annotations

from typing import Any

Query = tuple[str, dict[str, Any]]

USAGE_EVENTS = "usage_events"


def create_database(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS `{database}`"


def create_usage_events(database: str) -> str:
    # ORDER BY (org_id, request_id) is the dedupe identity, the same as the processor's.
    # The version column keeps the *first* copy of a request id (lowest offset), which is
    # the copy the processor counted, so the balance and the warehouse agree even if a
    # buggy re-send changed the payload. non_replicated_deduplication_window lets a
    # retried batch with the same insert_deduplication_token be dropped at insert time.
    return f"""
CREATE TABLE IF NOT EXISTS `{database}`.{USAGE_EVENTS} (
    org_id String,
    user_id String,
    request_id String,
    event_time DateTime64(3, 'UTC'),
    model LowCardinality(String),
    action LowCardinality(String),
    input_tokens UInt64,
    output_tokens UInt64,
    cached_input_tokens UInt64,
    latency_ms UInt32,
    cost_usd Nullable(Decimal(38, 18)),
    credits Decimal(38, 18),
    source String,
    metadata Map(String, String),
    kafka_partition UInt32,
    kafka_offset UInt64,
    version UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(version)
ORDER BY (org_id, request_id)
SETTINGS non_replicated_deduplication_window = 10000
"""


def count_distinct_events(org_id: str | None = None) -> Query:
    where = "WHERE org_id = {org:String}" if org_id else ""
    return f"SELECT count() FROM {USAGE_EVENTS} FINAL {where}", ({"org": org_id} if org_id else {})


def credits_per_user(org_id: str | None = None) -> Query:
    where = "WHERE org_id = {org:String}" if org_id else ""
    sql = (
        f"SELECT org_id, user_id, sum(credits) AS credits, count() AS events "
        f"FROM {USAGE_EVENTS} FINAL {where} GROUP BY org_id, user_id ORDER BY credits DESC, org_id, user_id"
    )
    return sql, ({"org": org_id} if org_id else {})


def credit_percentiles(org_id: str, levels: tuple[float, ...] = (0.5, 0.9, 0.99)) -> Query:
    """Credits per user at each level, over one org's users."""
    # Exact quantiles: operators compare these against invoices, an estimate is not enough.
    quantiles = ", ".join(str(level) for level in levels)
    sql = (
        f"SELECT quantilesExact({quantiles})(credits) FROM "
        f"(SELECT user_id, sum(credits) AS credits FROM {USAGE_EVENTS} FINAL "
        "WHERE org_id = {org:String} GROUP BY user_id)"
    )
    return sql, {"org": org_id}

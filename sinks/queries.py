"""Warehouse SQL as data: pure functions returning (sql, parameters).

The tables' columns come from `meterline.schemas.rated.RATED_COLUMNS`, the rated record the
worker publishes, so the DDL, the column list and the row order are one declaration.
Every read uses FINAL so rows that ReplacingMergeTree has not merged yet are counted once.
"""

from __future__ import annotations

from typing import Any

from meterline.schemas.decision import DECISION_COLUMNS
from meterline.schemas.rated import RATED_COLUMNS

Query = tuple[str, dict[str, Any]]

RATED_EVENTS = "rated_events"  # what the balances counted: one row per (org, user, request id)
DUPLICATES = "usage_duplicates"  # re-sent ids, marked duplicate or conflict, not counted: for audit
CORRECTIONS = "usage_corrections"  # every version a correction replaced or made, with its reason: for audit
DECISIONS = "usage_decisions"  # refused and degraded reservations, commits past their TTL or estimate (decisions topic)
# Rollups per user, by the start of each event's hour or day: table -> ClickHouse bucket function.
ROLLUPS = {"usage_hourly": "toStartOfHour", "usage_daily": "toStartOfDay"}
ROLLUP_SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "credits", "provider_cost_usd")
ROLLUP_REFRESH_SECONDS = 30
# A row ingested up to this long before the newest one a refresh saw is looked at again by the next
# refresh: an insert's rows carry the time it began, and become visible only once it commits.
ROLLUP_MARGIN_SECONDS = 300
TABLES_FOR_STATUS: dict[str, tuple[str, ...]] = {
    "applied": (RATED_EVENTS,), "duplicate": (DUPLICATES,), "conflict": (DUPLICATES,),
    "amended": (RATED_EVENTS, CORRECTIONS), "voided": (RATED_EVENTS, CORRECTIONS), "superseded": (CORRECTIONS,),
}


def create_database(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS `{database}`"


# rated_events keeps, of each request id, the row with the highest revision, and none if that one
# is deleted (a void): the corrected version, however the replays and merges fall.
RATED_EVENTS_ENGINE = "ReplacingMergeTree(revision, deleted)"
# One partition a month of event time: a billing period's queries read only its months, and a
# month is dropped or moved whole. A request id's versions share its event time, so they never
# straddle two partitions (ReplacingMergeTree replaces within a partition only).
RATED_EVENTS_PARTITION = "toYYYYMM(event_time)"


def create_table(database: str, table: str, order_by: str, engine: str = "ReplacingMergeTree",
                 partition_by: str | None = None) -> str:
    columns = ",\n    ".join(f"{name} {kind}" for name, kind in RATED_COLUMNS)
    partition = f"PARTITION BY {partition_by}\n" if partition_by else ""
    # A replayed record (after a worker crash) is the same row again: ReplacingMergeTree keeps one.
    # non_replicated_deduplication_window lets a retried batch with the same
    # insert_deduplication_token be dropped at insert time.
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.{table} (\n    {columns},\n"
            f"    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)\n) ENGINE = {engine}\n{partition}"
            f"ORDER BY ({order_by})\nSETTINGS non_replicated_deduplication_window = 10000")


# The worker's dedupe identity is a request id within one user's events; its day sits before the user
# because a request id's versions share its event time (so the identity is the same) and a live
# sink's inserts then overlap only the newest days' rows: FINAL merges those and reads the rest of
# the month as it lies. With the user first, every small insert overlapped the whole month, and one
# fresh 10k-row part cost a FINAL pass over 10 M rows 0.5 s instead of 0.05 s.
RATED_EVENTS_ORDER = "org_id, toDate(event_time), user_id, request_id"


def create_rated_events(database: str, table: str = RATED_EVENTS) -> str:
    return create_table(database, table, RATED_EVENTS_ORDER, RATED_EVENTS_ENGINE, RATED_EVENTS_PARTITION)


def create_decisions(database: str) -> str:
    # A record the worker wrote twice (a replayed commit) is one row: one per reservation and outcome.
    columns = ",\n    ".join(f"{name} {kind}" for name, kind in DECISION_COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.{DECISIONS} (\n    {columns},\n"
            f"    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)\n) ENGINE = ReplacingMergeTree\n"
            f"PARTITION BY toYYYYMM(decided_at)\nORDER BY (org_id, user_id, reservation_id, outcome)\n"
            f"SETTINGS non_replicated_deduplication_window = 10000")


def create_rollup(database: str, table: str) -> list[str]:
    """A rollup table, and the materialized view that keeps it: dedupe-correct under any replay.

    A summing view fed by each insert would count a replayed row twice (ReplacingMergeTree drops it
    only at a merge, and a retried batch is dropped at insert only if its boundaries did not move).
    So the view recomputes instead: every ROLLUP_REFRESH_SECONDS, each (org, user, bucket) that got
    a row since the last refresh is summed again from rated_events, one row per request id (its
    latest revision; a voided one counts nothing), and appended with the refresh time; the table
    keeps the latest per bucket. Late events and corrections land in their own bucket, wherever it is.
    Read it with FINAL.
    """
    bucket = ROLLUPS[table]
    sums = ",\n    ".join(f"{name} {kind}" for name, kind in RATED_COLUMNS if name in ROLLUP_SUMS)
    latest = ", ".join(f"argMax({name}, revision) AS {name}" for name in ROLLUP_SUMS)
    totals = ", ".join(f"sumIf({name}, deleted = 0) AS {name}" for name in ROLLUP_SUMS)
    source, target = f"`{database}`.{RATED_EVENTS}", f"`{database}`.{table}"
    return [
        f"CREATE TABLE IF NOT EXISTS {target} (\n    org_id String,\n    user_id String,\n"
        f"    bucket DateTime('UTC'),\n    events UInt64,\n    {sums},\n"
        f"    through DateTime64(3, 'UTC'),  -- the newest ingested_at summed\n"
        f"    refreshed_at DateTime64(6, 'UTC')\n) ENGINE = ReplacingMergeTree(refreshed_at)\n"
        f"PARTITION BY toYYYYMM(bucket)\nORDER BY (org_id, user_id, bucket)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.{table}_refresh\n"
        f"REFRESH EVERY {ROLLUP_REFRESH_SECONDS} SECOND APPEND TO {target} AS\n"
        f"SELECT org_id, user_id, bucket, countIf(deleted = 0) AS events, {totals}, max(ingested) AS through,"
        f" now64(6) AS refreshed_at\n"
        f"FROM (SELECT org_id, user_id, request_id, {bucket}(any(event_time)) AS bucket, argMax(deleted, revision) AS deleted,"
        f" {latest}, max(ingested_at) AS ingested\n"
        f"      FROM {source}\n"
        f"      WHERE (org_id, user_id, {bucket}(event_time)) IN (\n"
        f"          SELECT DISTINCT org_id, user_id, {bucket}(event_time) FROM {source}\n"
        f"          WHERE ingested_at >= (SELECT max(through) FROM {target}) - INTERVAL {ROLLUP_MARGIN_SECONDS} SECOND)\n"
        f"      GROUP BY org_id, user_id, request_id)\n"
        f"GROUP BY org_id, user_id, bucket",
    ]


def create_tables(database: str) -> dict[str, str]:
    """Each table's DDL, by name."""
    return {
        DECISIONS: create_decisions(database),
        RATED_EVENTS: create_rated_events(database),
        DUPLICATES: create_table(database, DUPLICATES, "org_id, user_id, request_id, kafka_partition, kafka_offset"),
        CORRECTIONS: create_table(database, CORRECTIONS, "org_id, user_id, request_id, revision, status"),
    }


def _org_filter(org_id: str | None) -> tuple[str, dict[str, Any]]:
    return ("WHERE org_id = {org:String}", {"org": org_id}) if org_id else ("", {})


def count_distinct_events(org_id: str | None = None) -> Query:
    where, parameters = _org_filter(org_id)
    return f"SELECT count() FROM {RATED_EVENTS} FINAL {where}", parameters


def count_duplicates(org_id: str | None = None) -> Query:
    """Re-sent copies recorded for audit, by status (duplicate or conflict)."""
    where, parameters = _org_filter(org_id)
    return f"SELECT status, count() FROM {DUPLICATES} FINAL {where} GROUP BY status ORDER BY status", parameters


def credits_per_user(org_id: str | None = None) -> Query:
    where, parameters = _org_filter(org_id)
    sql = (
        f"SELECT org_id, user_id, sum(credits) AS credits, count() AS events "
        f"FROM {RATED_EVENTS} FINAL {where} GROUP BY org_id, user_id ORDER BY credits DESC, org_id, user_id"
    )
    return sql, parameters


def credit_percentiles(org_id: str, levels: tuple[float, ...] = (0.5, 0.9, 0.99)) -> Query:
    """Credits per user at each level, over one org's users."""
    # Exact quantiles: operators compare these against invoices, an estimate is not enough.
    quantiles = ", ".join(str(level) for level in levels)
    sql = (
        f"SELECT quantilesExact({quantiles})(credits) FROM "
        f"(SELECT user_id, sum(credits) AS credits FROM {RATED_EVENTS} FINAL "
        "WHERE org_id = {org:String} GROUP BY user_id)"
    )
    return sql, {"org": org_id}

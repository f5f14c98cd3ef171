from meterline.sinks import queries

# Written out by hand: a column renamed, retyped, dropped or reordered in RATED_COLUMNS must show here.
EXPECTED_RATED_EVENTS_DDL = """\
CREATE TABLE IF NOT EXISTS `db`.rated_events (
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
    reported_cost_usd Nullable(Decimal(76, 18)),
    provider_cost_usd Decimal(76, 18),
    credits Decimal(76, 18),
    credit_rule LowCardinality(String),
    price_version LowCardinality(String),
    source String,
    metadata Map(String, String),
    status LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset UInt64,
    processed_at DateTime64(3, 'UTC'),
    plan LowCardinality(String),
    cycle_start DateTime64(3, 'UTC'),
    late Bool,
    revision UInt32,
    deleted UInt8,
    correction_id String,
    correction_reason String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(revision, deleted)
PARTITION BY toYYYYMM(event_time)
ORDER BY (org_id, toDate(event_time), user_id, request_id)
SETTINGS non_replicated_deduplication_window = 10000"""


def test_reads_use_final_and_server_side_parameters():
    for sql, parameters in (
        queries.count_distinct_events("acme"),
        queries.count_duplicates("acme"),
        queries.credits_per_user("acme"),
        queries.credit_percentiles("acme"),
    ):
        assert " FINAL " in sql
        assert "{org:String}" in sql and parameters == {"org": "acme"}
        assert "acme" not in sql  # values travel as parameters, never spliced into SQL


def test_reads_without_an_org_filter_take_no_parameters():
    for sql, parameters in (queries.count_distinct_events(), queries.count_duplicates(), queries.credits_per_user()):
        assert " FINAL " in sql
        assert "{org:String}" not in sql and "WHERE" not in sql
        assert parameters == {}


def test_tables_dedupe_counted_events_on_org_user_and_request_id():
    tables = queries.create_tables("db")
    rated, duplicates, corrections = tables["rated_events"], tables["usage_duplicates"], tables["usage_corrections"]
    assert "`db`.rated_events (" in rated
    # The latest revision of a request id is kept, and dropped when it is a void.
    assert "ENGINE = ReplacingMergeTree(revision, deleted)\nPARTITION BY toYYYYMM(event_time)\n" in rated
    # The identity is (org, user, request id); the event's day, the same for every version of a
    # request id, sits before the user so recent inserts overlap only recent days.
    assert "ORDER BY (org_id, toDate(event_time), user_id, request_id)\n" in rated
    assert "non_replicated_deduplication_window" in rated
    # Re-sent copies are kept one row per (id, where it was received): every copy stays auditable.
    assert "`db`.usage_duplicates (" in duplicates
    assert "ENGINE = ReplacingMergeTree\n" in duplicates
    assert "ORDER BY (org_id, user_id, request_id, kafka_partition, kafka_offset)\n" in duplicates
    assert "non_replicated_deduplication_window" in duplicates
    # Every version a correction replaced or made stays: the audit trail of a request id.
    assert "`db`.usage_corrections (" in corrections
    assert "ENGINE = ReplacingMergeTree\n" in corrections
    assert "ORDER BY (org_id, user_id, request_id, revision, status)\n" in corrections


def test_rated_events_ddl_is_exactly_the_expected_text():
    assert queries.create_tables("db")["rated_events"] == EXPECTED_RATED_EVENTS_DDL


def test_every_rated_table_has_the_same_columns():
    columns = EXPECTED_RATED_EVENTS_DDL.split("(\n", 1)[1].split("\n) ENGINE", 1)[0]
    rated = {name: ddl for name, ddl in queries.create_tables("db").items() if name != queries.DECISIONS}
    assert len(rated) == 3 and all(columns in ddl for ddl in rated.values())


def test_the_decisions_table_is_made_from_the_decision_columns():
    assert queries.create_decisions("db") == (
        "CREATE TABLE IF NOT EXISTS `db`.usage_decisions (\n"
        "    org_id String,\n    user_id String,\n    reservation_id String,\n    outcome LowCardinality(String),\n"
        "    reason LowCardinality(String),\n    requested_model LowCardinality(String),\n    model LowCardinality(String),\n"
        "    plan LowCardinality(String),\n    held Decimal(76, 18),\n    charged Nullable(Decimal(76, 18)),\n"
        "    decided_at DateTime64(3, 'UTC'),\n    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)\n"
        ") ENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMM(decided_at)\nORDER BY (org_id, user_id, reservation_id, outcome)\n"
        "SETTINGS non_replicated_deduplication_window = 10000")


def test_status_routes_each_rated_record_to_its_tables():
    assert queries.TABLES_FOR_STATUS == {
        "applied": ("rated_events",), "duplicate": ("usage_duplicates",), "conflict": ("usage_duplicates",),
        # A correction's new version replaces the row counted and joins the audit trail; the one it replaced is audit only.
        "amended": ("rated_events", "usage_corrections"), "voided": ("rated_events", "usage_corrections"),
        "superseded": ("usage_corrections",)}


def test_the_spike_query_compares_without_dividing_and_takes_every_value_as_a_parameter():
    from datetime import datetime, timezone
    from decimal import Decimal

    from meterline.sinks.reports import spikes_query

    day = datetime(2026, 11, 20, tzinfo=timezone.utc)
    sql, parameters = spikes_query(day, "acme", Decimal("2.5"), limit=7)
    assert sql == (
        "SELECT org_id, user_id, sumIf(provider_cost_usd, event_time >= {day:DateTime64(3, 'UTC')}) AS today, "
        "sumIf(provider_cost_usd, event_time < {day:DateTime64(3, 'UTC')}) AS before, "
        "countIf(event_time >= {day:DateTime64(3, 'UTC')}) AS events "
        "FROM rated_events FINAL WHERE event_time >= {start:DateTime64(3, 'UTC')} AND event_time < {end:DateTime64(3, 'UTC')} "
        "AND org_id = {org:String} GROUP BY org_id, user_id "
        "HAVING before > 0 AND today * {days:UInt32} > before * {times:Decimal(38, 6)} "
        "ORDER BY today / before DESC, org_id, user_id LIMIT {limit:UInt32}")
    assert parameters == {"start": datetime(2026, 11, 13, tzinfo=timezone.utc), "end": datetime(2026, 11, 21, tzinfo=timezone.utc),
                          "org": "acme", "day": day, "days": 7, "times": Decimal("2.5"), "limit": 7}

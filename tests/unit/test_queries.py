from meterline.sinks import queries


def test_reads_use_final_and_server_side_parameters():
    for sql, parameters in (
        queries.count_distinct_events("acme"),
        queries.credits_per_user("acme"),
        queries.credit_percentiles("acme"),
    ):
        assert " FINAL " in sql
        assert "{org:String}" in sql and parameters == {"org": "acme"}
        assert "acme" not in sql  # values travel as parameters, never spliced into SQL


def test_table_dedupes_on_org_and_request_id():
    ddl = queries.create_usage_events("db")
    assert "ReplacingMergeTree(version)" in ddl
    assert "ORDER BY (org_id, request_id)" in ddl
    assert "non_replicated_deduplication_window" in ddl

"""Warehouse migrations on real chDB: a warehouse made before a change is brought to today's
shape, its rows kept; applying twice changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from meterline.schemas.rated import RATED_COLUMNS, RATED_FIELDS
from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks import queries
from meterline.sinks.migrations import MIGRATIONS, MIGRATIONS_TABLE
from meterline.sinks.warehouse import _connect

MONEY = [name for name, kind in RATED_COLUMNS if "Decimal" in kind]


def _column_types(settings: Settings, table: str) -> dict[str, str]:
    rows = _connect(settings).query("SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                                    parameters={"db": settings.clickhouse_database, "t": table}).result_rows
    return dict(rows)


def _versions(settings: Settings) -> list[int]:
    return [row[0] for row in _connect(settings).query(
        f"SELECT version FROM `{settings.clickhouse_database}`.{MIGRATIONS_TABLE} ORDER BY version").result_rows]


def test_a_warehouse_from_before_migrations_is_widened_and_keeps_its_rows(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(clickhouse_database=f"old_{uuid.uuid4().hex[:8]}")
    database, client = settings.clickhouse_database, _connect(settings)
    # The tables as they were made before money columns were Decimal(76, 18), with no migrations table.
    client.command(queries.create_database(database))
    for ddl in queries.create_tables(database).values():
        client.command(ddl.replace("Decimal(76, 18)", "Decimal(38, 18)"))
    assert _column_types(settings, queries.RATED_EVENTS)["credits"] == "Decimal(38, 18)"
    big = Decimal(10**20 - 1)  # the largest whole value a Decimal(38, 18) holds
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = {name: 0 for name in RATED_FIELDS} | {
        "org_id": "acme", "user_id": "u", "event_time": when, "model": "m", "action": "", "reported_cost_usd": None,
        "provider_cost_usd": Decimal(0), "credits": big, "credit_rule": "tokens", "price_version": "v", "source": "s",
        "metadata": {}, "status": "applied", "processed_at": when}
    rows = [[{**row, "request_id": f"r{n}"}[name] for name in RATED_FIELDS] for n in range(3)]
    client.insert(queries.RATED_EVENTS, rows, column_names=list(RATED_FIELDS), database=database)
    warehouse = Warehouse(settings)
    assert [migration.version for migration in warehouse.migrated] == [m.version for m in MIGRATIONS]
    for table in (queries.RATED_EVENTS, queries.DUPLICATES):
        types = _column_types(settings, table)
        assert {name: types[name] for name in MONEY} == {name: kind for name, kind in RATED_COLUMNS if name in MONEY}
    (total,) = warehouse.query((f"SELECT sum(credits) FROM {queries.RATED_EVENTS} FINAL", {}))[0]
    assert total == 3 * big  # kept, and summed without wrapping around (it was negative at 38 digits)
    assert Warehouse(settings).migrated == []  # up to date: nothing applied twice
    assert _versions(settings) == [m.version for m in MIGRATIONS]


def test_a_new_warehouse_is_made_at_the_latest_version(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(clickhouse_database=f"new_{uuid.uuid4().hex[:8]}")
    warehouse = Warehouse(settings)
    assert [migration.version for migration in warehouse.migrated] == [m.version for m in MIGRATIONS]
    assert _column_types(settings, queries.RATED_EVENTS)["credits"] == "Decimal(76, 18)"
    assert Warehouse(settings).migrated == [] and _versions(settings) == [m.version for m in MIGRATIONS]


def test_meterline_warehouse_migrate_says_what_it_applied(make_settings: Callable[..., Settings], monkeypatch,
                                                         capsys) -> None:
    from meterline.cli import main

    settings = make_settings(clickhouse_database=f"cli_{uuid.uuid4().hex[:8]}")
    for name in ("home", "chdb_path", "clickhouse_database"):
        monkeypatch.setenv(f"METERLINE_{name.upper()}", str(getattr(settings, name)))
    assert main(["warehouse", "migrate"]) == 0
    out = capsys.readouterr().out
    assert all(f"applied {m.version}: {m.description}" in out for m in MIGRATIONS)
    assert main(["warehouse", "migrate"]) == 0
    assert f"is at version {MIGRATIONS[-1].version}, nothing to apply" in capsys.readouterr().out


def test_a_warehouse_at_version_3_gets_the_corrections_engine_and_keeps_its_rows(
        make_settings: Callable[..., Settings]) -> None:
    from meterline.sinks.migrations import CORRECTION_COLUMNS

    settings = make_settings(clickhouse_database=f"v3_{uuid.uuid4().hex[:8]}")
    database, client = settings.clickhouse_database, _connect(settings)
    client.command(queries.create_database(database))
    old_columns = [(name, kind) for name, kind in RATED_COLUMNS if name not in CORRECTION_COLUMNS]
    columns = ", ".join(f"{name} {kind}" for name, kind in old_columns)
    for table, order in ((queries.RATED_EVENTS, "org_id, user_id, request_id"),
                         (queries.DUPLICATES, "org_id, user_id, request_id, kafka_partition, kafka_offset")):
        client.command(f"CREATE TABLE `{database}`.{table} ({columns}, ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                       f"ENGINE = ReplacingMergeTree ORDER BY ({order})")
    client.command(f"CREATE TABLE `{database}`.{MIGRATIONS_TABLE} (version UInt32, description String, "
                   "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version")
    client.command(f"INSERT INTO `{database}`.{MIGRATIONS_TABLE} (version, description) VALUES (1, ''), (2, ''), (3, '')")
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = {"org_id": "acme", "user_id": "u", "event_time": when, "model": "m", "action": "", "input_tokens": 0,
           "output_tokens": 0, "cached_input_tokens": 0, "latency_ms": 0, "reported_cost_usd": None,
           "provider_cost_usd": Decimal(0), "credit_rule": "tokens", "price_version": "v", "source": "s", "metadata": {},
           "status": "applied", "kafka_partition": 0, "kafka_offset": 0, "processed_at": when, "plan": "free",
           "cycle_start": when, "late": False}
    names = [name for name, _kind in old_columns]
    next_month = datetime(2026, 2, 15, tzinfo=timezone.utc)
    rows = [[{**row, "request_id": f"r{n}", "credits": Decimal(n), "event_time": next_month if n == 3 else when}[name]
             for name in names] for n in (1, 2, 3)]
    client.insert(queries.RATED_EVENTS, rows, column_names=names, database=database)

    warehouse = Warehouse(settings)
    assert [migration.version for migration in warehouse.migrated] == [m.version for m in MIGRATIONS if m.version >= 4]
    engine, partition = warehouse.query((
        "SELECT engine_full, partition_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": queries.RATED_EVENTS}))[0]
    assert engine.startswith("ReplacingMergeTree(revision, deleted)") and partition == "toYYYYMM(event_time)"
    tables = {name for (name,) in warehouse.query(("SELECT name FROM system.tables WHERE database = {db:String}", {"db": database}))}
    rollups = {name for table in queries.ROLLUPS for name in (table, f"{table}_refresh")}
    assert tables == {queries.RATED_EVENTS, queries.DUPLICATES, queries.CORRECTIONS, queries.DECISIONS, MIGRATIONS_TABLE} | rollups  # nothing left over
    assert warehouse.query((f"SELECT DISTINCT _partition_id FROM {queries.RATED_EVENTS} ORDER BY 1", {})) == [("202601",), ("202602",)]
    for table in (queries.RATED_EVENTS, queries.DUPLICATES, queries.CORRECTIONS):
        assert set(CORRECTION_COLUMNS) <= set(_column_types(settings, table))
    assert warehouse.query((f"SELECT request_id, credits, revision FROM {queries.RATED_EVENTS} FINAL ORDER BY request_id", {})) \
        == [("r1", Decimal(1), 0), ("r2", Decimal(2), 0), ("r3", Decimal(3), 0)]
    # The new engine at work: a void (revision 1, deleted) hides r2; its revision 0 sent again does not bring it back.
    voided = {**row, "request_id": "r2", "credits": Decimal(2), "revision": 1, "deleted": 1, "status": "voided"}
    again = {**row, "request_id": "r2", "credits": Decimal(2), "revision": 0, "deleted": 0}
    for item in (voided, again):
        warehouse.insert_rated(queries.RATED_EVENTS, [[{**dict.fromkeys(RATED_FIELDS, ""), **item}[name] for name in RATED_FIELDS]],
                               dedupe_token=item["status"] + str(item["revision"]))
    assert [r for (r,) in warehouse.query((f"SELECT request_id FROM {queries.RATED_EVENTS} FINAL ORDER BY request_id", {}))] \
        == ["r1", "r3"]
    assert Warehouse(settings).migrated == []


def _old_sorting_key_warehouse(settings: Settings, stopped: str) -> None:
    """A warehouse at version 6 (rated_events sorted by user first), holding request ids r0..r4 with
    r1 sent twice in two inserts; `stopped` says where an earlier run of migration 7 was cut off."""
    database, client = settings.clickhouse_database, _connect(settings)
    client.command(queries.create_database(database))
    old_ddl = queries.create_table(database, queries.RATED_EVENTS, "org_id, user_id, request_id",
                                   queries.RATED_EVENTS_ENGINE, queries.RATED_EVENTS_PARTITION)
    for name, ddl in queries.create_tables(database).items():
        client.command(old_ddl if name == queries.RATED_EVENTS else ddl)
    for table in queries.ROLLUPS:
        for statement in queries.create_rollup(database, table):
            client.command(statement)
    client.command(f"CREATE TABLE `{database}`.{MIGRATIONS_TABLE} (version UInt32, description String, "
                   "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version")
    client.command(f"INSERT INTO `{database}`.{MIGRATIONS_TABLE} (version, description) VALUES "
                   + ", ".join(f"({version}, '')" for version in range(1, 7)))
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = dict.fromkeys(RATED_FIELDS, 0) | {
        "org_id": "acme", "user_id": "u", "model": "m", "action": "", "reported_cost_usd": None,
        "provider_cost_usd": Decimal(0), "credit_rule": "tokens", "price_version": "v", "source": "s",
        "metadata": {}, "status": "applied", "processed_at": when, "plan": "free", "cycle_start": when, "late": False}
    def rows(numbers: range) -> list[list[object]]:
        return [[{**row, "request_id": f"r{n}", "credits": Decimal(n), "event_time": when.replace(day=1 + n)}[name]
                 for name in RATED_FIELDS] for n in numbers]
    client.insert(queries.RATED_EVENTS, rows(range(0, 3)), column_names=list(RATED_FIELDS), database=database)
    client.insert(queries.RATED_EVENTS, rows(range(1, 5)), column_names=list(RATED_FIELDS), database=database)
    if stopped == "while copying":  # a new table with part of the rows
        client.command(queries.create_rated_events(database, f"{queries.RATED_EVENTS}_next"))
        client.insert(f"{queries.RATED_EVENTS}_next", rows(range(0, 1)), column_names=list(RATED_FIELDS), database=database)
    elif stopped == "between the renames":  # the copy done, the old table renamed away, the new one not yet renamed
        client.command(queries.create_rated_events(database, f"{queries.RATED_EVENTS}_next"))
        client.command(f"INSERT INTO `{database}`.{queries.RATED_EVENTS}_next SELECT * FROM `{database}`.{queries.RATED_EVENTS}")
        client.command(f"RENAME TABLE `{database}`.{queries.RATED_EVENTS} TO `{database}`.{queries.RATED_EVENTS}_previous")


@pytest.mark.parametrize("stopped", ["not started", "while copying", "between the renames"])
def test_a_warehouse_at_version_6_is_sorted_by_day_and_keeps_its_rows_once(make_settings: Callable[..., Settings],
                                                                           stopped: str) -> None:
    settings = make_settings(clickhouse_database=f"v6_{uuid.uuid4().hex[:8]}")
    _old_sorting_key_warehouse(settings, stopped)

    warehouse = Warehouse(settings)
    assert [migration.version for migration in warehouse.migrated] == [7]
    (order,) = warehouse.query(("SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                                {"db": settings.clickhouse_database, "t": queries.RATED_EVENTS}))[0]
    assert order == "org_id, toDate(event_time), user_id, request_id"
    assert warehouse.query((f"SELECT request_id, credits FROM {queries.RATED_EVENTS} FINAL ORDER BY request_id", {})) \
        == [(f"r{n}", Decimal(n)) for n in range(5)]  # r1's second copy still counted once
    tables = {name for (name,) in warehouse.query(("SELECT name FROM system.tables WHERE database = {db:String}",
                                                   {"db": settings.clickhouse_database}))}
    assert not {f"{queries.RATED_EVENTS}_next", f"{queries.RATED_EVENTS}_previous"} & tables  # nothing left over
    warehouse.refresh_rollups()  # the rollups' views read the new table by its name
    assert warehouse.query(("SELECT sum(credits), sum(events) FROM usage_daily FINAL", {})) == [(Decimal(10), 5)]
    assert Warehouse(settings).migrated == []

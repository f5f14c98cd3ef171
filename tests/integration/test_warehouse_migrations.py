"""Warehouse migrations on real chDB: a warehouse made before a change is brought to today's
shape, its rows kept; applying twice changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal

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

"""The warehouse schema as numbered migrations: `meterline warehouse migrate`, also run by every Warehouse.

Rules:
- A migration is applied once, in order, and recorded in `schema_migrations` (version,
  description, applied_at) after all its statements succeeded.
- Every statement is idempotent (`IF NOT EXISTS`, a `MODIFY COLUMN` to the type it already
  has...), so a migration interrupted half-way, or applied by two processes starting at once
  against a server, is simply applied again: the worst case is a second row for its version,
  and versions are read with DISTINCT.
- A migration never rewrites history: a change is a new migration. The tables' columns stay
  declared once, in `schemas/rated.py::RATED_COLUMNS`; migration 1 creates them as declared
  today, later ones bring older warehouses to the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meterline.schemas.rated import RATED_COLUMNS
from meterline.sinks import queries

if TYPE_CHECKING:
    from meterline.sinks.warehouse import Warehouse

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: Callable[[str], list[str]]  # database -> SQL
    # A step SQL alone cannot make idempotent (a table's engine), run after the statements.
    procedure: Callable[[Warehouse], None] | None = None


def _create_first_tables(database: str) -> list[str]:
    ddl = queries.create_tables(database)
    return [ddl[queries.RATED_EVENTS], ddl[queries.DUPLICATES]]


def _widen_money_columns(database: str) -> list[str]:
    # Warehouses made before money columns were Decimal(76, 18): on chDB a Decimal(38, 18) sum past
    # 10^20 wrapped around to a negative number without an error. A no-op on tables made today.
    return [f"ALTER TABLE `{database}`.{table} MODIFY COLUMN {name} {kind} SETTINGS mutations_sync = 2"
            for table in (queries.RATED_EVENTS, queries.DUPLICATES) for name, kind in RATED_COLUMNS if "Decimal" in kind]


def _add_placement_columns(database: str) -> list[str]:
    # Warehouses made before the accounts: where the balance counted each event (plan, cycle, late).
    added = [(name, kind) for name, kind in RATED_COLUMNS if name in ("plan", "cycle_start", "late")]
    return [f"ALTER TABLE `{database}`.{table} ADD COLUMN IF NOT EXISTS {name} {kind}"
            for table in (queries.RATED_EVENTS, queries.DUPLICATES) for name, kind in added]


CORRECTION_COLUMNS = ("revision", "deleted", "correction_id", "correction_reason")


def _add_correction_columns(database: str) -> list[str]:
    # rated_events gets them by the rebuild below, which gives it their engine too.
    added = [(name, kind) for name, kind in RATED_COLUMNS if name in CORRECTION_COLUMNS]
    return [*(f"ALTER TABLE `{database}`.{queries.DUPLICATES} ADD COLUMN IF NOT EXISTS {name} {kind}" for name, kind in added),
            queries.create_tables(database)[queries.CORRECTIONS]]


def _rebuild_rated_events(warehouse: Warehouse) -> None:
    """Give rated_events today's engine (it keeps a request id's latest revision), monthly partitions
    and sorting key: a table cannot change any of them in place, so its rows are copied into a new
    table, which then takes its name. Stopped at any step, it is run again from where it stands."""
    database, table = warehouse.database, queries.RATED_EVENTS
    new, old = f"{table}_next", f"{table}_previous"
    shapes = {name: (engine, partition, order) for name, engine, partition, order in warehouse.query((
        "SELECT name, engine_full, partition_key, sorting_key FROM system.tables WHERE database = {db:String}",
        {"db": database}))}
    if table not in shapes and new in shapes:  # stopped between the two renames
        warehouse.command(f"RENAME TABLE `{database}`.{new} TO `{database}`.{table}")
    elif not (shapes[table][0].startswith(queries.RATED_EVENTS_ENGINE) and shapes[table][1] == queries.RATED_EVENTS_PARTITION
              and shapes[table][2] == queries.RATED_EVENTS_ORDER):
        warehouse.command(f"DROP TABLE IF EXISTS `{database}`.{new}")
        warehouse.command(queries.create_rated_events(database, new))
        kept = [name for (name,) in warehouse.query((
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}", {"db": database, "t": table}))]
        columns = ", ".join(kept)
        warehouse.command(f"INSERT INTO `{database}`.{new} ({columns}) SELECT {columns} FROM `{database}`.{table}")
        warehouse.command(f"RENAME TABLE `{database}`.{table} TO `{database}`.{old}")
        warehouse.command(f"RENAME TABLE `{database}`.{new} TO `{database}`.{table}")
    warehouse.command(f"DROP TABLE IF EXISTS `{database}`.{old}")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "rated_events and usage_duplicates", _create_first_tables),
    Migration(2, "money columns Decimal(76, 18), so no sum can wrap around", _widen_money_columns),
    Migration(3, "plan, cycle_start and late on every rated row", _add_placement_columns),
    Migration(4, "corrections: revision and deleted on every rated row, rated_events keeps the latest (and is "
                 "partitioned by month), usage_corrections",
              _add_correction_columns, _rebuild_rated_events),
    Migration(5, "usage_decisions: refused and degraded reservations, commits past their TTL or estimate",
              lambda database: [queries.create_decisions(database)]),
    Migration(6, "usage_hourly and usage_daily: rollups per user, recomputed from rated_events by refreshable views",
              lambda database: [statement for table in queries.ROLLUPS for statement in queries.create_rollup(database, table)]),
    Migration(7, "rated_events sorted by each event's day before its user, so FINAL merges only the days recent "
                 "inserts touched", lambda database: [], _rebuild_rated_events),
)


def migrate(warehouse: Warehouse) -> list[Migration]:
    """Apply the migrations `warehouse` lacks, in order; return them (none: it was up to date)."""
    database = warehouse.database
    warehouse.command(queries.create_database(database))
    warehouse.command(f"CREATE TABLE IF NOT EXISTS `{database}`.{MIGRATIONS_TABLE} (version UInt32, description String, "
                      "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version")
    applied = {row[0] for row in warehouse.query(applied_versions(database))}
    done = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        for statement in migration.statements(database):
            warehouse.command(statement)
        if migration.procedure is not None:
            migration.procedure(warehouse)
        warehouse.command(f"INSERT INTO `{database}`.{MIGRATIONS_TABLE} (version, description) "
                          "VALUES ({version:UInt32}, {description:String})",
                          {"version": migration.version, "description": migration.description})
        done.append(migration)
    return done


def applied_versions(database: str) -> queries.Query:
    return f"SELECT DISTINCT version FROM `{database}`.{MIGRATIONS_TABLE} ORDER BY version", {}

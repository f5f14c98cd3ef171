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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "rated_events and usage_duplicates", queries.create_tables),
    Migration(2, "money columns Decimal(76, 18), so no sum can wrap around", _widen_money_columns),
    Migration(3, "plan, cycle_start and late on every rated row", _add_placement_columns),
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
        warehouse.command(f"INSERT INTO `{database}`.{MIGRATIONS_TABLE} (version, description) "
                          "VALUES ({version:UInt32}, {description:String})",
                          {"version": migration.version, "description": migration.description})
        done.append(migration)
    return done


def applied_versions(database: str) -> queries.Query:
    return f"SELECT DISTINCT version FROM `{database}`.{MIGRATIONS_TABLE} ORDER BY version", {}

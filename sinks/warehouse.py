"""The one place that talks to ClickHouse, through clickhouse-connect.

With no METERLINE_CLICKHOUSE_URL the same client runs chDB (the ClickHouse engine
in-process) on a data directory. chDB locks its directory to one process, so the
process that owns a Warehouse is the one that writes and answers queries.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from meterline.schemas.rated import RATED_FIELDS
from meterline.settings import Settings, private_dir
from meterline.sinks import queries
from meterline.sinks.queries import Query

# chDB allows one open data directory per process: share the client among threads.
_chdb_clients: dict[str, Client] = {}
_chdb_lock = threading.Lock()


def _connect(settings: Settings) -> Client:
    if settings.clickhouse_url is not None:
        return clickhouse_connect.get_client(dsn=settings.clickhouse_url.get_secret_value())
    path = str(settings.chdb_dir.resolve())
    with _chdb_lock:
        if path not in _chdb_clients:
            private_dir(settings.chdb_dir)
            _chdb_clients[path] = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        return _chdb_clients[path]


class Warehouse:
    """Create the schema, insert event batches, run read queries."""

    def __init__(self, settings: Settings):
        self.database = settings.clickhouse_database
        self._client = _connect(settings)
        self._lock = threading.Lock()  # the chDB client is not safe to use from two threads at once
        self.command(queries.create_database(self.database))
        for ddl in queries.create_tables(self.database):
            self.command(ddl)
        self._client.database = self.database  # unqualified table names in queries.py resolve here

    def command(self, sql: str) -> Any:
        with self._lock:
            return self._client.command(sql)

    def insert_rated(self, table: str, rows: Sequence[Sequence[Any]], dedupe_token: str) -> None:
        """Insert a batch of rated rows (RATED_FIELDS order); a retry with the same token is dropped."""
        with self._lock:
            self._client.insert(
                table, rows, column_names=list(RATED_FIELDS), database=self.database,
                settings={"insert_deduplication_token": dedupe_token},
            )

    def query(self, query: Query) -> list[Sequence[Any]]:
        sql, parameters = query
        with self._lock:
            return list(self._client.query(sql, parameters=parameters).result_rows)

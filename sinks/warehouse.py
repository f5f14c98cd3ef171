"""The one place that talks to ClickHouse, through clickhouse-connect.

With no METERLINE_CLICKHOUSE_URL the same client runs chDB (the ClickHouse engine
in-process) on a data directory. chDB locks its directory to one process, so the
process that owns a Warehouse is the one that writes and answers queries.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from meterline.exceptions import MeterlineError
from meterline.schemas.rated import RATED_FIELDS
from meterline.settings import Settings, private_dir
from meterline.sinks.queries import ROLLUPS, Query

# chDB allows one open data directory per process: share the client among threads.
_chdb_clients: dict[str, Client] = {}
_chdb_lock = threading.Lock()
_owned: dict[str, IO[str]] = {}  # lock files held for this process's lifetime


class DirectoryInUse(MeterlineError):
    """Another process owns the embedded warehouse's directory."""


def _own_directory(directory: Path) -> None:
    """Take the chDB directory for this process, or say which process has it.

    chDB itself refuses a second process with "Error initializing EmbeddedServer" and nothing
    else; a lock file beside the directory names the holder instead.
    """
    path = directory.with_name(directory.name + ".lock")
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while this process lives
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DirectoryInUse(f"the embedded ClickHouse directory {directory} is in use by {holder}; one process "
                             "owns it (stop that one, or set METERLINE_CHDB_PATH)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})")
    handle.flush()
    _owned[str(directory)] = handle


def _connect(settings: Settings) -> Client:
    if settings.clickhouse_url is not None:
        return clickhouse_connect.get_client(dsn=settings.clickhouse_url.get_secret_value())
    path = str(settings.chdb_dir.resolve())
    with _chdb_lock:
        if path not in _chdb_clients:
            private_dir(settings.chdb_dir)
            _own_directory(settings.chdb_dir.resolve())
            _chdb_clients[path] = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        return _chdb_clients[path]


class Warehouse:
    """Bring the schema up to date (`migrations.py`), insert event batches, run read queries."""

    def __init__(self, settings: Settings):
        from meterline.sinks.migrations import migrate

        self.database = settings.clickhouse_database
        self._client = _connect(settings)
        self._lock = threading.Lock()  # the chDB client is not safe to use from two threads at once
        self.migrated = migrate(self)
        self._client.database = self.database  # unqualified table names in queries.py resolve here

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self._client.command(sql, parameters=parameters)

    def refresh_rollups(self) -> None:
        """Bring the rollups up to date now, not at their views' next scheduled refresh."""
        for table in ROLLUPS:
            self.command(f"SYSTEM REFRESH VIEW `{self.database}`.{table}_refresh")
            self.command(f"SYSTEM WAIT VIEW `{self.database}`.{table}_refresh")

    def insert_rated(self, table: str, rows: Sequence[Sequence[Any]], dedupe_token: str,
                     columns: Sequence[str] = RATED_FIELDS) -> None:
        """Insert a batch of rows (RATED_FIELDS order, unless `columns` says); a retry with the same token is dropped."""
        with self._lock:
            self._client.insert(
                table, rows, column_names=list(columns), database=self.database,
                settings={"insert_deduplication_token": dedupe_token},
            )

    def insert_rated_json(self, table: str, records: Sequence[bytes], dedupe_token: str) -> None:
        """Insert rated records as they are (JSON, one per line), parsed by ClickHouse; a retry with the same token is dropped.

        A field a record lacks takes its column's default (schemas/rated.py MISSING_VALUES are those
        defaults); a field the table lacks is ignored.
        """
        with self._lock:
            self._client.raw_insert(f"`{self.database}`.{table}", insert_block=b"\n".join(records), fmt="JSONEachRow",
                                    settings={
                                        "insert_deduplication_token": dedupe_token,
                                        "date_time_input_format": "best_effort",  # ISO 8601 with its offset
                                        "input_format_skip_unknown_fields": 1,
                                        "input_format_defaults_for_omitted_fields": 1,
                                        # A batch is parsed by one thread: the sink's own thread reads the next
                                        # batch meanwhile, and splitting ~10 MB into chunks for a pool of parsers
                                        # cost ~7 % more CPU a row here.
                                        "input_format_parallel_parsing": 0,
                                    })

    def query(self, query: Query, settings: dict[str, Any] | None = None) -> list[Sequence[Any]]:
        sql, parameters = query
        with self._lock:
            return list(self._client.query(sql, parameters=parameters, settings=settings).result_rows)

    def query_with_columns(self, sql: str, settings: dict[str, Any] | None = None,
                           parameters: dict[str, Any] | None = None) -> tuple[list[str], list[Sequence[Any]]]:
        """A statement's column names and rows (with no parameters: as a person typed it)."""
        with self._lock:
            result = self._client.query(sql, parameters=parameters, settings=settings)
            return list(result.column_names), list(result.result_rows)

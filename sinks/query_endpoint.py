"""Read-only queries on the embedded warehouse from another process, through the one that owns it.

chDB opens its data directory in one process only: while `meterline sink` runs, `meterline sql`
and `meterline report` cannot open it. The sink serves them instead, on 127.0.0.1 only:

- `POST /v1/query` with `{"sql": ..., "parameters": {...}}` and the operator key as a bearer
  token; every statement passes `sql.checked_statement` (one statement, a reading one, no
  `INTO OUTFILE`) and runs with ClickHouse's `readonly = 1`, so the key opens reads, never writes.
- The address is written to `<chdb directory>.endpoint` (mode 0600, beside the lock file), and
  removed when the sink stops; a reader finds it there when the directory is in use.
- Values travel as JSON with their types tagged (`{"$decimal": "0.1"}`, `$datetime`, `$tuple`, and
  `$map` for every dict, so no data key is taken for a tag), so a report computed through the
  endpoint is exactly the one computed in place.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meterline.auth import operator_key, resolve_secret, same_key
from meterline.exceptions import MeterlineError
from meterline.settings import Settings
from meterline.sinks.queries import Query
from meterline.sinks.sql import READ_ONLY, RefusedStatement, checked_statement, error_line
from meterline.sinks.warehouse import DirectoryInUse, Warehouse

MAX_REQUEST_BYTES = 1024 * 1024
# chDB takes one statement at a time, so a query here holds the sink's inserts while it runs: the
# sink reads nothing more meanwhile (nothing is lost, its lag grows). Bounded tighter than sql's own.
ENDPOINT_SECONDS = 30
ENDPOINT_SETTINGS = {**READ_ONLY, "max_execution_time": ENDPOINT_SECONDS}


def endpoint_file(settings: Settings) -> Path:
    directory = settings.chdb_dir.resolve()
    return directory.with_name(directory.name + ".endpoint")


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item) for item in value]}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {"$map": [[_encode(k), _encode(v)] for k, v in value.items()]}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, dict):
        if "$decimal" in value:
            return Decimal(value["$decimal"])
        if "$datetime" in value:
            return datetime.fromisoformat(value["$datetime"])
        if "$tuple" in value:
            return tuple(_decode(item) for item in value["$tuple"])
        if "$map" in value:
            return {_decode(k): _decode(v) for k, v in value["$map"]}
        return {key: _decode(item) for key, item in value.items()}  # a plain object, as a person may write one
    return value


def dumps(value: Any) -> bytes:
    return json.dumps(_encode(value)).encode()


def loads(raw: bytes) -> Any:
    return _decode(json.loads(raw))


class QueryEndpoint:
    """The owner's side: serves read-only queries on `warehouse` until `close()`."""

    def __init__(self, settings: Settings, warehouse: Warehouse):
        self.settings = settings
        expected = operator_key(resolve_secret(settings))
        handler = _handler(warehouse, expected)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="query-endpoint", daemon=True)
        self._thread.start()
        path = endpoint_file(settings)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"url": self.url, "pid": os.getpid()}, file)

    def close(self) -> None:
        endpoint_file(self.settings).unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()


def _handler(warehouse: Warehouse, expected_key: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:  # statements are the reader's business: not logged
            pass

        def _answer(self, status: int, body: Any) -> None:
            raw = dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            header = self.headers.get("Authorization", "")
            if self.path != "/v1/query":
                return self._answer(404, {"error": "not found"})
            if not same_key(header[7:] if header.startswith("Bearer ") else "", expected_key):
                return self._answer(401, {"error": "the operator key is required"})
            length_text = self.headers.get("Content-Length") or "0"
            length = int(length_text) if length_text.isascii() and length_text.isdigit() else 0
            if not 0 < length <= MAX_REQUEST_BYTES:
                return self._answer(400, {"error": f"a query is 1 to {MAX_REQUEST_BYTES} bytes of JSON"})
            try:
                request = loads(self.rfile.read(length))
                sql, parameters = request["sql"], request.get("parameters") or {}
                if not isinstance(sql, str) or not isinstance(parameters, dict):
                    raise TypeError("sql must be text and parameters an object")
            except (ValueError, KeyError, TypeError, RecursionError) as error:
                return self._answer(400, {"error": f"not a query: {str(error)[:200]}"})
            try:
                checked_statement(warehouse, sql)
                columns, rows = warehouse.query_with_columns(sql, settings=ENDPOINT_SETTINGS, parameters=parameters)
            except RefusedStatement as error:
                return self._answer(403, {"error": str(error)})
            except Exception as error:  # noqa: BLE001 - the reader gets ClickHouse's reason, the sink goes on
                return self._answer(422, {"error": error_line(error)})
            return self._answer(200, {"columns": columns, "rows": [list(row) for row in rows]})

    return Handler


class RemoteWarehouse:
    """The reader's side: `query` and `query_with_columns`, as Warehouse has them, through the owner."""

    def __init__(self, url: str, key: str):
        self.url = url
        self._key = key

    def _post(self, sql: str, parameters: dict[str, Any] | None) -> tuple[list[str], list[Sequence[Any]]]:
        request = urllib.request.Request(f"{self.url}/v1/query", data=dumps({"sql": sql, "parameters": parameters or {}}),
                                         headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                reason = loads(error.read()).get("error", error.reason)
            except ValueError:
                reason = error.reason
            if error.code == 403:
                raise RefusedStatement(reason) from None
            raise MeterlineError(f"the warehouse's owner refused the query: {reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise MeterlineError(f"the warehouse's owner at {self.url} did not answer: {error}") from None
        return answer["columns"], answer["rows"]

    def query(self, query: Query, settings: dict[str, Any] | None = None) -> list[Sequence[Any]]:
        sql, parameters = query
        return self._post(sql, parameters)[1]

    def query_with_columns(self, sql: str, settings: dict[str, Any] | None = None) -> tuple[list[str], list[Sequence[Any]]]:
        return self._post(sql, None)


def open_for_reading(settings: Settings) -> Warehouse | RemoteWarehouse:
    """The warehouse, opened here; or, while another meterline process owns the embedded one, that process's endpoint."""
    try:
        return Warehouse(settings)
    except DirectoryInUse as in_use:
        try:
            url = json.loads(endpoint_file(settings).read_text())["url"]
        except (OSError, ValueError, KeyError, TypeError):
            raise in_use from None
        if not isinstance(url, str) or not url.startswith("http://127.0.0.1:"):
            raise in_use from None
        return RemoteWarehouse(url, operator_key(resolve_secret(settings)))

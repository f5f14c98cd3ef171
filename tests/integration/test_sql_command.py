"""`meterline sql` on real chDB: one statement that reads, printed; anything that writes is refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from meterline.cli import main
from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks.queries import RATED_EVENTS


@pytest.fixture
def sql_settings(broker_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = broker_settings.model_copy(update={"clickhouse_database": f"sql_{uuid.uuid4().hex[:8]}"})
    Warehouse(settings)  # migrated: the tables exist, empty
    for name in ("home", "chdb_path", "clickhouse_database"):
        monkeypatch.setenv(f"METERLINE_{name.upper()}", str(getattr(settings, name)))
    return settings


def test_a_select_prints_its_rows(sql_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "SELECT number AS n, 'a;b INTO OUTFILE x' AS s FROM numbers(3)", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": n, "s": "a;b INTO OUTFILE x"} for n in range(3)]
    assert main(["sql", f"SELECT count() AS rows FROM {RATED_EVENTS} FINAL", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["rows", "0"]


@pytest.mark.parametrize(("statement", "reason"), [
    (f"INSERT INTO {RATED_EVENTS} (org_id) VALUES ('x')", "INSERT is refused"),
    (f"DROP TABLE {RATED_EVENTS}", "DROP is refused"),
    (f"ALTER TABLE {RATED_EVENTS} DELETE WHERE 1", "ALTER is refused"),
    ("SELECT 1; DROP TABLE rated_events", "one statement at a time"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "only reads"),
    ("SELECT * FROM url('http://127.0.0.1:9/', CSV, 'a String')", "only reads"),
    ("SELECT 1 SETTINGS readonly = 0", "only reads"),
    ("SELEC 1", "Syntax error"),
    ("SELECT throwIf(1, 'boom')", "boom"),  # a statement that fails while it runs: an error, not a traceback
    ("", "give one SQL statement"),
])
def test_a_statement_that_could_write_is_refused(sql_settings: Settings, capsys: pytest.CaptureFixture[str],
                                                 statement: str, reason: str) -> None:
    assert main(["sql", statement]) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err
    (tables,) = Warehouse(sql_settings).query((f"SELECT count() FROM system.tables WHERE database = currentDatabase() "
                                               f"AND name = '{RATED_EVENTS}'", {}))[0]
    assert tables == 1


def test_into_outfile_is_refused_and_writes_no_file(sql_settings: Settings, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.csv"
    assert main(["sql", f"select 1 into   outfile '{target}'"]) == 2
    assert "INTO OUTFILE is refused" in capsys.readouterr().err
    assert not target.exists()


def test_a_result_too_large_to_print_is_refused_and_the_limit_cannot_be_lifted(
        sql_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from meterline.sinks.sql import MAX_RESULT_ROWS

    assert main(["sql", f"SELECT number FROM numbers({MAX_RESULT_ROWS + 1})", "--format", "csv"]) == 2
    assert "aggregate it, or add a LIMIT" in capsys.readouterr().err
    assert main(["sql", f"SELECT number FROM numbers({MAX_RESULT_ROWS + 1}) SETTINGS max_result_rows = 0"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["sql", f"SELECT count() AS n FROM numbers({MAX_RESULT_ROWS + 1})", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", str(MAX_RESULT_ROWS + 1)]

"""Read-only SQL for people (`meterline sql`): one statement, run so that it cannot write anything.

ClickHouse's own `readonly = 1` refuses writes, DDL, `SET` and the table functions that reach
files, URLs or programs (`file`, `url`, `executable`, ...). Two things pass it on chDB and are
refused here: several statements in one string (chDB runs them all), and `INTO OUTFILE` (chDB
wrote the file with `readonly = 1`). And only statements that read may start it (SELECT, WITH,
SHOW, DESCRIBE, EXPLAIN, EXISTS): an INSERT reached execution before readonly refused it. The statement is parsed by ClickHouse itself
(`formatQuerySingleLine`), so a `;` or `INTO OUTFILE` inside a string literal is not mistaken
for one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from meterline.exceptions import MeterlineError
from meterline.sinks.warehouse import Warehouse

# readonly = 1 also keeps a statement from raising these limits (ClickHouse refuses the setting):
# a result too large to print, or one that runs for ever, would otherwise take the process serving
# it down - the sink itself, when it answers for another process (query_endpoint.py).
MAX_RESULT_ROWS = 1_000_000
MAX_SECONDS = 300
READ_ONLY = {"readonly": 1, "max_result_rows": MAX_RESULT_ROWS, "result_overflow_mode": "throw",
             "max_execution_time": MAX_SECONDS}
# What a statement may start with, checked before ClickHouse's own readonly mode (two locks, not one).
READING_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"")
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


class RefusedStatement(MeterlineError):
    pass


def checked_statement(warehouse: Warehouse, text: str) -> str:
    """`text` as ClickHouse parses it, if it is one statement that writes no file; else RefusedStatement."""
    if not text.strip():
        raise RefusedStatement("give one SQL statement, e.g. \"SELECT count() FROM rated_events FINAL\"")
    try:
        (formatted,) = warehouse.query(("SELECT formatQuerySingleLine({statement:String})", {"statement": text}),
                                       settings=READ_ONLY)[0]
    except Exception as error:  # noqa: BLE001 - the parser's message is the useful part
        raise RefusedStatement(error_line(error)) from None
    first_word = formatted.lstrip("( ").split(" ", 1)[0].upper()
    if first_word not in READING_STATEMENTS:
        raise RefusedStatement(f"{first_word} is refused: meterline sql only reads ({', '.join(sorted(READING_STATEMENTS))})")
    if _OUTFILE.search(_QUOTED.sub("''", formatted)):
        raise RefusedStatement("INTO OUTFILE is refused: meterline sql prints its result (--format csv|json)")
    return formatted


def run_read_only(warehouse: Warehouse, text: str) -> tuple[list[str], list[Sequence[Any]]]:
    """Column names and rows of one read-only statement."""
    statement = checked_statement(warehouse, text)
    try:
        return warehouse.query_with_columns(statement, settings=READ_ONLY)
    except Exception as error:  # noqa: BLE001 - e.g. "Cannot execute query in readonly mode"
        raise RefusedStatement(error_line(error)) from None


def error_line(error: Exception) -> str:
    """What a reader needs of ClickHouse's error: its first line, in words where the code is known."""
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "Multi-statements are not allowed" in message:
        return "one statement at a time: this text holds several"
    if "(TOO_MANY_ROWS_OR_BYTES)" in message:
        return f"the result is over {MAX_RESULT_ROWS:,} rows: aggregate it, or add a LIMIT"
    if "(TIMEOUT_EXCEEDED)" in message:
        return f"the statement ran past {MAX_SECONDS} s and was stopped"
    if "(READONLY)" in message:
        return "refused: meterline sql only reads (ClickHouse: cannot execute query in readonly mode)"
    # A parser error quotes the whole wrapped query after "In scope"; the position and what it expected suffice.
    return message.split(" : In scope")[0][:400]

"""`meterline report distribution|heavy-users|top|models|spikes|cycle|losses` (the power law of cost per user, who carries it, on
which models, and who jumped) and `meterline sql`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterline.exceptions import MeterlineError

if TYPE_CHECKING:
    from meterline.settings import Settings

DEFAULT_DAYS = 30
WIDE_COLUMNS = 8


def instant_argument(text: str) -> datetime:
    from meterline.pricing.cycles import parse_instant

    try:
        return parse_instant(text)
    except MeterlineError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _period(args: argparse.Namespace) -> tuple[datetime, datetime]:
    end = args.to or datetime.now(timezone.utc)
    start = args.start or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise MeterlineError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    return start, end


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize() if value == value.to_integral() else value, "f")
    return "" if value is None else str(value)


def _print(rows: list[dict[str, Any]], title: str, output_format: str) -> None:
    if output_format == "json":
        print(json.dumps(rows, indent=2, default=_text))
    elif output_format == "csv":
        writer = csv.writer(sys.stdout)
        if rows:
            writer.writerow(rows[0])
        writer.writerows([[_text(value) for value in row.values()] for row in rows])
    else:
        from rich.console import Console
        from rich.table import Table

        if rows and len(rows[0]) > WIDE_COLUMNS:  # too wide for a terminal: one field per line, a table per row
            for row in rows:
                table = Table(title=title or None, show_header=False)
                for name, value in row.items():
                    table.add_row(name, _text(value))
                Console().print(table)
            return
        table = Table(title=title or None)
        for name in rows[0] if rows else ["(no rows)"]:
            table.add_column(name, justify="left" if name in ("org_id", "user_id", "top_model", "model", "model_mix", "suggestion") else "right")
        for row in rows:
            table.add_row(*(_text(value) for value in row.values()))
        Console().print(table)


def _distribution(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.reports import cost_distribution

    start, end = _period(args)
    report = cost_distribution(open_for_reading(settings), start, end, args.org)
    _print([report.as_row()], f"provider cost per user, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
           + (f", org {args.org}" if args.org else ""), args.format)
    return 0


def _heavy_users(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.reports import heavy_users

    start, end = _period(args)
    found = heavy_users(open_for_reading(settings), start, end, args.org, args.times_median, args.limit)
    _print([user.as_row() for user in found], f"users above {args.times_median} x the median cost, "
           f"{start:%Y-%m-%d} to {end:%Y-%m-%d}", args.format)
    return 0


def _top(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.reports import top_users

    start, end = _period(args)
    found = top_users(open_for_reading(settings), start, end, args.org, args.limit)
    _print([user.as_row() for user in found], f"the {args.limit} costliest users and their models, "
           f"{start:%Y-%m-%d} to {end:%Y-%m-%d}", args.format)
    return 0


def _models(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.reports import model_mix

    start, end = _period(args)
    _print([usage.as_row() for usage in model_mix(open_for_reading(settings), start, end, args.org)],
           f"the model mix, {start:%Y-%m-%d} to {end:%Y-%m-%d}", args.format)
    return 0


def _spikes(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.reports import BASELINE_DAYS, spikes

    day = (args.day or datetime.now(timezone.utc)).astimezone(timezone.utc)
    day = day.replace(hour=0, minute=0, second=0, microsecond=0)
    found = spikes(open_for_reading(settings), day, args.org, args.times_baseline, args.limit)
    _print([spike.as_row() for spike in found], f"users above {args.times_baseline} x their own mean daily cost of the "
           f"{BASELINE_DAYS} days before, on {day:%Y-%m-%d} UTC", args.format)
    return 0


def _cycle_usage(settings: Settings, args: argparse.Namespace) -> tuple[list[Any], Any, datetime]:
    """The org's billing entities in the cycle containing `--at`, the catalogue and that instant."""
    from meterline.schemas.usage import require_identifiers
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.reports import cycle_usage
    from meterline.subscriptions import load_checked_catalogue, read_topic

    require_identifiers(org=args.org)
    catalogue = load_checked_catalogue(settings)
    unreadable: list[str] = []
    subscriptions = read_topic(settings, unreadable)
    for where in unreadable:
        print(f"skipped a subscriptions record that is not a subscription: {where}", file=sys.stderr)
    at = args.at or datetime.now(timezone.utc)
    return cycle_usage(open_for_reading(settings), args.org, subscriptions, catalogue, settings.default_plan, at), catalogue, at


def _cycle(settings: Settings, args: argparse.Namespace) -> int:
    found, _catalogue, at = _cycle_usage(settings, args)
    _print([usage.as_row() for usage in found], f"org {args.org}: the billing cycle containing {at.isoformat()} "
           "(revenue before grants and carried-over credits)", args.format)
    return 0


def _losses(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.reports import negative_margins

    found, catalogue, at = _cycle_usage(settings, args)
    _print([loss.as_row() for loss in negative_margins(found, catalogue, args.limit)],
           f"org {args.org}: the {args.limit} largest losses, who costs more than they pay in the cycle containing "
           f"{at.isoformat()}", args.format)
    return 0


def _sql(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.sinks.query_endpoint import open_for_reading
    from meterline.sinks.sql import run_read_only

    columns, rows = run_read_only(open_for_reading(settings), args.statement)
    _print([dict(zip(columns, row)) for row in rows], "", args.format)
    return 0


def _reporting_errors(run: Any) -> Any:
    """A query the warehouse refuses is an error message, not a traceback."""

    def reported(settings: Settings, args: argparse.Namespace) -> int:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            return int(run(settings, args))
        except ClickHouseError as error:
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise MeterlineError(f"the warehouse refused the query: {lines[0][:400]}") from None

    return reported


def _positive_decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value.is_finite() or value <= 0 or value > 10**12:
        raise argparse.ArgumentTypeError(f"must be a number > 0 and <= 10^12, got {text!r}")
    return value


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100000, got {text!r}")
    return int(text)


def register(commands: Any) -> None:
    """Add `report` and `sql` to the `meterline` sub-command parsers."""
    sql = commands.add_parser("sql", help="run one read-only SQL statement on the warehouse")
    sql.add_argument("statement", help='e.g. "SELECT model, sum(credits) FROM rated_events FINAL GROUP BY model"')
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.set_defaults(run=_reporting_errors(_sql))
    reports = commands.add_parser("report", help="operator reports from the warehouse (dedupe-correct)") \
        .add_subparsers(dest="action", required=True)
    distribution = reports.add_parser("distribution", help="cost per user: p50 p90 p99 p99.9, top 1 %% share, p99 / median")
    heavy = reports.add_parser("heavy-users", help="users above K x the median user's cost, costliest first")
    heavy.add_argument("--times-median", type=_positive_decimal, default=Decimal(10), metavar="K")
    heavy.add_argument("--limit", type=_limit, default=20)
    top = reports.add_parser("top", help="the N costliest users, each with their model mix")
    top.add_argument("--limit", type=_limit, default=20)
    models = reports.add_parser("models", help="events, tokens, credits and provider cost per model")
    spike = reports.add_parser("spikes", help="users whose cost on a day jumped above K x their own last 7 days")
    spike.add_argument("--day", type=instant_argument, help="the UTC day containing this instant (default: today)")
    spike.add_argument("--times-baseline", type=_positive_decimal, default=Decimal(3), metavar="K")
    spike.add_argument("--limit", type=_limit, default=20)
    spike.add_argument("--org", help="one org only (default: every org's users)")
    spike.add_argument("--format", choices=["table", "csv", "json"], default="table")
    spike.set_defaults(run=_reporting_errors(_spikes))
    cycle = reports.add_parser("cycle", help="an org's billing entities in their current cycle: usage, cost, revenue, margin")
    losses = reports.add_parser("losses", help="an org's billing entities that cost more than they pay this cycle, "
                                "each with the plan that would cover it")
    for parser, run in ((cycle, _cycle), (losses, _losses)):
        parser.add_argument("org")
        parser.add_argument("--at", type=instant_argument, help="the cycle containing this instant (default: now)")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.set_defaults(run=_reporting_errors(run))
    losses.add_argument("--limit", type=_limit, default=20)
    for parser, run in ((distribution, _distribution), (heavy, _heavy_users), (top, _top), (models, _models)):
        parser.add_argument("--org", help="one org only (default: every org's users)")
        parser.add_argument("--from", dest="start", type=instant_argument, help=f"ISO 8601 (default: --to minus {DEFAULT_DAYS} days)")
        parser.add_argument("--to", type=instant_argument, help="ISO 8601, excluded (default: now)")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.set_defaults(run=_reporting_errors(run))

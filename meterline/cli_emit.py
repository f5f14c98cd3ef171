"""`meterline emit`: one event from flags or --json, or many from a JSON-lines file.

    meterline emit --org acme --user u-42 --model gpt-4o --input-tokens 1200 --output-tokens 340
    meterline emit --json '{"org_id": "acme", "user_id": "u-42", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 340}'
    meterline emit --file events.jsonl      # "-" reads standard input

A JSON event is either emit's fields (as above, plus latency_ms, request_id, action, cost_usd,
cached_input_tokens, metadata, timestamp) or a whole CloudEvents usage event (with
"specversion"), sent as is. Bad lines are skipped and listed at the end with their line number
and reason. Exit status: 0 all in Kafka; 1 some input rejected; 3 some events still in the
outage spool (Kafka unreachable; the next meterline process on this spool replays them).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from meterline.producers import Meter, MeterStats
from meterline.schemas import InvalidEventError, parse_event
from meterline.settings import Settings

console = Console(stderr=True)
FIELDS = {"org_id", "user_id", "model", "input_tokens", "output_tokens", "latency_ms", "request_id", "action",
          "cost_usd", "cached_input_tokens", "metadata", "timestamp"}
REQUIRED = ("org_id", "user_id", "model", "input_tokens", "output_tokens")
SHOWN_REJECTS = 50


@dataclass
class Outcome:
    accepted: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)


def register(commands: Any) -> None:
    """Add `emit` to the `meterline` command's subparsers."""
    emit = commands.add_parser("emit", help="emit usage events: one from flags or --json, many with --file")
    source = emit.add_mutually_exclusive_group()
    source.add_argument("--json", help="one event as JSON (emit's fields, or a CloudEvents document)")
    source.add_argument("--file", help="JSON lines, one event per line; '-' for standard input")
    emit.add_argument("--org", dest="org_id")
    emit.add_argument("--user", dest="user_id")
    emit.add_argument("--model")
    emit.add_argument("--input-tokens", type=int)
    emit.add_argument("--output-tokens", type=int)
    emit.add_argument("--cached-input-tokens", type=int)
    emit.add_argument("--latency-ms", type=int)
    emit.add_argument("--request-id", help="reuse the first attempt's id when retrying")
    emit.add_argument("--action")
    emit.add_argument("--cost-usd")
    emit.add_argument("--timestamp", help="ISO 8601 with a timezone, e.g. 2025-01-31T12:00:00Z")
    emit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    emit.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Kafka at the end")
    emit.set_defaults(run=run_emit)


def run_emit(settings: Settings, args: argparse.Namespace) -> int:
    meter = Meter(settings)
    try:
        if args.file is not None:
            outcome = _emit_file(meter, args.file)
        else:
            outcome = Outcome()
            try:
                fields = json.loads(args.json, parse_float=Decimal) if args.json is not None else _flag_fields(args)
                print(_emit_one(meter, fields))
                outcome.accepted = 1
            except (InvalidEventError, ValueError) as error:
                outcome.rejects.append((0, str(error)))
    finally:
        stats = meter.close(args.timeout)  # what Kafka has not acknowledged by then stays spooled
    return _summarise(outcome, stats, settings, many=args.file is not None)


def _flag_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {name: getattr(args, name) for name in FIELDS - {"metadata"} if getattr(args, name, None) is not None}
    if args.metadata:
        pairs = [item.partition("=") for item in args.metadata]
        if any(not sep for _k, sep, _v in pairs):
            raise ValueError("--metadata takes KEY=VALUE")
        fields["metadata"] = {key: value for key, _sep, value in pairs}
    return fields


def _emit_one(meter: Meter, fields: Any) -> str:
    """Validate and queue one event; raise InvalidEventError or ValueError saying what is wrong."""
    if not isinstance(fields, dict):
        raise ValueError("an event must be a JSON object")
    if "specversion" in fields:
        return meter.send(parse_event(fields))
    unknown = sorted(set(fields) - FIELDS)
    missing = [name for name in REQUIRED if name not in fields]
    if unknown or missing:
        raise ValueError("; ".join([f"unknown field {name!r}" for name in unknown] +
                                   [f"missing field {name!r}" for name in missing]))
    if isinstance(fields.get("timestamp"), str):
        try:
            fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
        except ValueError:
            raise ValueError(f"timestamp: not ISO 8601: {fields['timestamp']!r}") from None
    positional = [fields.pop(name) for name in REQUIRED]
    return meter.emit(*positional, **fields)


def _emit_file(meter: Meter, name: str) -> Outcome:
    outcome = Outcome()
    stream: TextIO = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115 - closed below
    total = None if name == "-" else Path(name).stat().st_size
    columns = (TextColumn("emitting"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("emit", total=total, rate="")
            for number, line in enumerate(stream, start=1):
                progress.advance(task, len(line.encode()))
                if not line.strip():
                    continue
                try:
                    _emit_one(meter, json.loads(line, parse_float=Decimal))
                    outcome.accepted += 1
                except json.JSONDecodeError as error:
                    outcome.rejects.append((number, f"not JSON: {error}"))
                except (InvalidEventError, ValueError) as error:
                    outcome.rejects.append((number, str(error)))
                if number % 1000 == 0:
                    progress.update(task, rate=f"{outcome.accepted:,} ok, {len(outcome.rejects):,} rejected")
            progress.update(task, rate=f"{outcome.accepted:,} ok, {len(outcome.rejects):,} rejected")
    finally:
        if stream is not sys.stdin:
            stream.close()
    return outcome


def _summarise(outcome: Outcome, stats: MeterStats, settings: Settings, many: bool) -> int:
    if outcome.rejects:
        table = Table(title=f"{len(outcome.rejects):,} rejected" + (" (nothing sent for these)" if many else ""))
        if many:
            table.add_column("line", justify="right")
        table.add_column("reason", overflow="fold")
        for number, reason in outcome.rejects[:SHOWN_REJECTS]:
            table.add_row(*([str(number)] if many else []), reason)
        console.print(table)
        if len(outcome.rejects) > SHOWN_REJECTS:
            console.print(f"... and {len(outcome.rejects) - SHOWN_REJECTS:,} more")
    if many or stats.sent:
        console.print(f"{outcome.accepted:,} accepted; in Kafka: {stats.delivered + stats.replayed:,}, "
                      f"in the spool: {stats.spool_pending:,}")
    if stats.spool_pending or stats.in_flight:
        console.print(f"[yellow]Kafka unreachable ({settings.kafka_bootstrap}): {stats.spool_pending:,} event(s) "
                      f"wait in the spool {settings.spool_path}; the next meterline process replays them[/yellow]")
    if outcome.rejects:
        return 1
    return 3 if stats.spool_pending or stats.in_flight else 0

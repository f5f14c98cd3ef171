"""`meterline emit`: one event from flags or --json, or many from a JSON-lines file.

    meterline emit --org acme --user u-42 --model gpt-4o --input-tokens 1200 --output-tokens 340
    meterline emit --json '{"org_id": "acme", "user_id": "u-42", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 340}'
    meterline emit --file events.jsonl      # "-" reads standard input

A JSON event is either emit's fields (as above, plus latency_ms, request_id, action, cost_usd,
cached_input_tokens, metadata, timestamp) or a whole CloudEvents usage event (with
"specversion"), sent as is. Bad lines are skipped and listed at the end with their line number
and reason, whatever went wrong with them. A model the price book does not know gets a warning
with the nearest known names (the worker would dead-letter the event); with --strict it is a reject.
Exit status: 0 all in Kafka; 1 some input rejected; 3 some events still in the outage spool (Kafka
unreachable; the next meterline process on this spool replays them).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from meterline.console import stderr_console

if TYPE_CHECKING:  # the rest is imported when the command runs: `meterline --help` stays quick
    from meterline.pricing import PriceBook
    from meterline.producers import Meter, MeterStats
    from meterline.settings import SdkSettings

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
    emit.add_argument("--strict", action="store_true",
                      help="reject events whose model the price book does not know (default: warn and send)")
    emit.set_defaults(run=run_emit)


class ModelCheck:
    """Says, once per model, when the price book cannot price a model; with `strict`, refuses it."""

    def __init__(self, prices: PriceBook, strict: bool):
        self.prices = prices
        self.strict = strict
        self.warned: set[str] = set()

    def __call__(self, model: object) -> None:
        if not isinstance(model, str) or model in self.warned:
            return  # not text: the schema names the problem
        if self.prices.knows(model) or self.prices.default_model is not None:
            return  # priced: by its name or an alias, or as the default model
        names = [*self.prices.models, *(alias for price in self.prices.models.values() for alias in price.aliases)]
        near = difflib.get_close_matches(model, names, n=3, cutoff=0.5)
        problem = (f"model {model!r} is not in the price book, so the worker would dead-letter the event"
                   + (f" (nearest: {', '.join(near)})" if near else ""))
        if self.strict:
            raise ValueError(problem)
        self.warned.add(model)
        stderr_console().print(f"[yellow]warning:[/yellow] {problem}; sending it anyway (--strict refuses it)")


def run_emit(settings: SdkSettings, args: argparse.Namespace) -> int:
    from meterline.pricing import load_price_book
    from meterline.producers import Meter

    check_model = ModelCheck(load_price_book(settings.prices), args.strict)
    # While Kafka is away librdkafka writes a raw line per connection attempt, and the meter logs
    # its switch to the spool: the summary below says it once, in words.
    logging.getLogger("meterline.producers").setLevel(logging.ERROR)
    meter = Meter(settings, producer_config={"log_level": 0})
    try:
        if args.file is not None:
            outcome = _emit_file(meter, args.file, check_model)
        else:
            outcome = Outcome()
            try:
                fields = json.loads(args.json, parse_float=Decimal) if args.json is not None else _flag_fields(args)
                print(_emit_one(meter, fields, check_model))
                outcome.accepted = 1
            except Exception as error:  # noqa: BLE001 - every reject gets a reason, never a traceback
                outcome.rejects.append((0, _reason(error)))
    finally:
        stats = meter.close(args.timeout)  # what Kafka has not acknowledged by then stays spooled
    return _summarise(outcome, stats, settings, many=args.file is not None)


def _flag_fields(args: argparse.Namespace) -> dict[str, Any]:
    from meterline.producers.events import EMIT_OPTIONS, EMIT_REQUIRED

    fields = {name: getattr(args, name) for name in (*EMIT_REQUIRED, *EMIT_OPTIONS)
              if name != "metadata" and getattr(args, name, None) is not None}
    if args.metadata:
        pairs = [item.partition("=") for item in args.metadata]
        if any(not sep for _k, sep, _v in pairs):
            raise ValueError("--metadata takes KEY=VALUE")
        fields["metadata"] = {key: value for key, _sep, value in pairs}
    return fields


def _reason(error: Exception) -> str:
    from meterline.schemas import InvalidEventError

    if isinstance(error, (InvalidEventError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"  # unforeseen: still a reason, and the next line goes on


def _emit_one(meter: Meter, fields: Any, check_model: Callable[[object], None]) -> str:
    """Validate and queue one event; raise InvalidEventError or ValueError saying what is wrong."""
    if not isinstance(fields, dict):
        raise ValueError("an event must be a JSON object")
    if "specversion" in fields:
        from meterline.schemas import parse_event

        event = parse_event(fields)
        check_model(event.data.model)
        return meter.send(event)
    from meterline.producers.events import EMIT_OPTIONS, EMIT_REQUIRED

    unknown = sorted(set(fields) - {*EMIT_REQUIRED, *EMIT_OPTIONS})
    missing = [name for name in EMIT_REQUIRED if name not in fields]
    if unknown or missing:
        raise ValueError("; ".join([f"unknown field {name!r}" for name in unknown] +
                                   [f"missing field {name!r}" for name in missing]))
    if isinstance(fields.get("timestamp"), str):
        try:
            fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
        except ValueError:
            raise ValueError(f"timestamp: not ISO 8601: {fields['timestamp']!r}") from None
    check_model(fields["model"])
    positional = [fields.pop(name) for name in EMIT_REQUIRED]
    return meter.emit(*positional, **fields)


def _emit_file(meter: Meter, name: str, check_model: Callable[[object], None]) -> Outcome:
    outcome = Outcome()
    stream: TextIO = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115 - closed below
    total = None if name == "-" else Path(name).stat().st_size
    try:
        with _progress_bar(total, outcome) as advance:
            for number, line in enumerate(stream, start=1):
                advance(len(line.encode()), number)
                if not line.strip():
                    continue
                try:
                    _emit_one(meter, json.loads(line, parse_float=Decimal), check_model)
                    outcome.accepted += 1
                except json.JSONDecodeError as error:
                    outcome.rejects.append((number, f"not JSON: {error}"))
                except Exception as error:  # noqa: BLE001 - a bulk load finishes every line it can
                    outcome.rejects.append((number, _reason(error)))
    finally:
        if stream is not sys.stdin:
            stream.close()
    return outcome


@contextmanager
def _progress_bar(total: int | None, outcome: Outcome) -> Iterator[Callable[[int, int], None]]:
    """rich's progress bar on stderr, fed (bytes read, line number); without rich, none."""
    try:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
    except ModuleNotFoundError:  # the SDK alone: the summary at the end says it all
        yield lambda _size, _number: None
        return
    columns = (TextColumn("emitting"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr_console(), transient=False) as progress:  # type: ignore[arg-type]
        task = progress.add_task("emit", total=total, rate="")

        def advance(size: int, number: int) -> None:
            progress.advance(task, size)
            if number % 1000 == 0:
                progress.update(task, rate=f"{outcome.accepted:,} ok, {len(outcome.rejects):,} rejected")

        yield advance
        progress.update(task, rate=f"{outcome.accepted:,} ok, {len(outcome.rejects):,} rejected")


def _summarise(outcome: Outcome, stats: MeterStats, settings: SdkSettings, many: bool) -> int:
    console = stderr_console()
    if outcome.rejects:
        # One line a reject, "line N: reason": easy to read, to grep, and to fix in the file.
        console.print(f"[red]{len(outcome.rejects):,} rejected[/red]" + (" (nothing sent for these):" if many else ":"))
        for number, reason in outcome.rejects[:SHOWN_REJECTS]:
            console.print(f"  line {number}: {reason}" if many else f"  {reason}", markup=False, highlight=False)
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

"""The `pricing`, `plans` and `billing` commands: answers about prices, plans and invoices.

Each handler takes `(settings, args)` and returns an exit code; the domain lives in
`meterline.pricing`. Human output is a rich table, `--format json` a JSON document with
money and credits as decimal strings. The wall clock is read only here, at the edge.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterline.console import stderr_console

if TYPE_CHECKING:  # the domain is imported when a command runs: `meterline --help` stays quick
    from rich.console import Console

    from meterline.pricing.catalogue import Catalogue
    from meterline.pricing.invoice import Grant, Invoice
    from meterline.pricing.margin import CreditMargin
    from meterline.pricing.rating import Rater, Rating
    from meterline.settings import SdkSettings


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _console() -> Console:
    from rich.console import Console

    return Console(width=shutil.get_terminal_size((120, 24)).columns, soft_wrap=False)


def _catalogue(settings: SdkSettings, args: argparse.Namespace) -> Catalogue:
    """`--prices`/`--plans`, else METERLINE_PRICES/METERLINE_PLANS, else the shipped defaults."""
    from meterline.pricing.catalogue import load_catalogue

    return load_catalogue(args.prices or settings.prices, args.plans or settings.plans, settings.cache_dir)


def _dump(data: Any) -> int:
    print(json.dumps(data, indent=2, default=lambda v: format(v, "f") if isinstance(v, Decimal) else str(v)))
    return 0


def _percent(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _ratio(value: Decimal | None) -> str:
    return "inf" if value is None else f"{value:.2f}:1"


def _margin_json(margin: CreditMargin) -> dict[str, Any]:
    return {"revenue_per_credit": margin.revenue_per_credit, "cost_per_credit": margin.cost_per_credit,
            "ratio": margin.ratio, "gross_margin": margin.gross_margin,
            "target_ratio": margin.target_ratio, "below_target": margin.below_target}


def _explain(rating: Rating, args: argparse.Namespace, rater: Rater) -> str:
    if rating.rule.startswith("action:"):
        return f"action tier {rating.rule[7:]!r}: {rating.credits} credits, flat"
    per_1k = rater.credits_per_1k(rating.model)
    return f"({args.input_tokens} + {args.output_tokens}) tokens / 1000 x {per_1k} credit{'' if per_1k == 1 else 's'} per 1,000 tokens"


def _quote(settings: SdkSettings, args: argparse.Namespace) -> int:
    from rich.table import Table

    from meterline.pricing.margin import call_margin
    from meterline.pricing.money import EXACT
    from meterline.pricing.rating import Rater

    rater = Rater.from_catalogue(catalogue := _catalogue(settings, args))
    with localcontext(EXACT):  # the worker's context: the quote is the amount the stream would count
        rating = rater.rate_usage(args.model, args.input_tokens, args.output_tokens,
                                  cached_input_tokens=args.cached_tokens, action=args.action,
                                  reported_cost_usd=args.cost_usd)
    margin = None if args.credit_price is None else call_margin(
        args.credit_price, rating.provider_cost_usd, rating.credits, catalogue.credits.target_ratio)
    if args.format == "json":
        return _dump({"requested_model": args.model, **rating._asdict(), "explanation": _explain(rating, args, rater),
                      "margin": None if margin is None else _margin_json(margin)})
    table = Table(title=f"Quote: {args.model}", show_header=False)
    rows = [("priced as", rating.model), ("tokens (input / cached / output)", f"{args.input_tokens} / {args.cached_tokens} / {args.output_tokens}"),
            ("provider cost", f"${rating.provider_cost_usd} ({rating.cost_source.replace('_', ' ')})"),
            ("credits", f"{rating.credits}"), ("rule", _explain(rating, args, rater))]
    if margin is not None:
        rows += [("revenue", f"${rating.credits * margin.revenue_per_credit} at ${margin.revenue_per_credit} per credit"),
                 ("cost per credit", f"${margin.cost_per_credit}"), ("ratio", _ratio(margin.ratio)),
                 ("gross margin", _percent(margin.gross_margin) + ("  [red]below target[/red]" if margin.below_target else ""))]
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)
    return 0


def _import_litellm(_settings: SdkSettings, args: argparse.Namespace) -> int:
    from meterline.pricing.exceptions import PricingError
    from meterline.pricing.litellm import TOKEN_MODES, convert_litellm, parse_litellm

    source = Path(args.file)
    try:
        raw = source.read_bytes()
    except OSError as error:
        raise PricingError(f"{source}: cannot read: {error.strerror or error}") from None
    result = convert_litellm(parse_litellm(raw, str(source)), modes=args.mode or TOKEN_MODES,
                             providers=args.provider or (), source=source.name)
    if args.output:
        Path(args.output).write_text(result.yaml_text, encoding="utf-8")
    else:
        sys.stdout.write(result.yaml_text)
    stderr_console().print(
        f"{result.models} models written, {len(result.skipped)} entries skipped, {result.aliases} base-name aliases "
        f"({len(result.ambiguous_aliases)} shared by several models), {result.rounded_prices} prices rounded to 12 "
        f"decimals per 1,000 tokens{f' -> {args.output}' if args.output else ''}", highlight=False)
    return 0


def _render(settings: SdkSettings, args: argparse.Namespace) -> int:
    from meterline.pricing.page import render_html, render_json

    plan_file = _catalogue(settings, args).plan_file
    text = render_json(plan_file) if args.format == "json" else render_html(plan_file)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _check(settings: SdkSettings, args: argparse.Namespace) -> int:
    from rich.table import Table

    from meterline.pricing.margin import check_margins

    catalogue = _catalogue(settings, args)
    report = check_margins(catalogue, args.credit_price, args.plan)
    status = 1 if report.flagged else 0
    if args.format == "json":
        _dump({"revenue_from": report.revenue_from, "target_ratio": catalogue.credits.target_ratio,
               "flagged": len(report.flagged), "degradation_warnings": list(report.cheaper_fallback_problems),
               "rows": [{"model": r.model, "tier": r.tier, "input_tokens": r.call.input_tokens,
                         "output_tokens": r.call.output_tokens, "call_cost": r.call_cost, "credits": r.credits,
                         **_margin_json(r.margin)} for r in report.rows]})
        return status
    table = Table(title=f"Credit-to-cost, revenue per credit from {report.revenue_from}; target {catalogue.credits.target_ratio}:1")
    for column in ("model", "tier", "credits", "call cost", "revenue/credit", "cost/credit", "ratio", "margin", ""):
        table.add_column(column, justify="left" if column in ("model", "tier", "") else "right")
    for r in report.rows:
        m = r.margin
        table.add_row(r.model, r.tier, f"{r.credits}", f"${r.call_cost}", f"${m.revenue_per_credit:.4f}", f"${m.cost_per_credit:.5f}",
                      _ratio(m.ratio), _percent(m.gross_margin), "[red]BELOW TARGET[/red]" if m.below_target else "ok")
    console = _console()
    console.print(table)
    for warning in report.cheaper_fallback_problems:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"{len(report.flagged)} of {len(report.rows)} model x tier rows below {catalogue.credits.target_ratio}:1; "
                  f"plans valid: {', '.join(catalogue.plans)}")
    return status


def _cycles(_settings: SdkSettings, args: argparse.Namespace) -> int:
    from rich.table import Table

    from meterline.pricing.cycles import BillingSchedule, parse_instant

    schedule = BillingSchedule(parse_instant(args.anchor), args.interval)
    cycles = schedule.cycles(args.count)
    if args.format == "json":
        return _dump({"anchor": schedule.anchor.isoformat(), "interval": args.interval,
                      "cycles": [{"index": c.index, "start": c.start.isoformat(), "end": c.end.isoformat(),
                                  "days": c.duration.total_seconds() / 86400} for c in cycles]})
    table = Table(title=f"{args.interval}ly cycles, anchor {schedule.anchor.isoformat()}, [start, end) UTC")
    for column in ("#", "start", "end", "days"):
        table.add_column(column, justify="right" if column in ("#", "days") else "left")
    for c in cycles:
        table.add_row(str(c.index), c.start.isoformat(), c.end.isoformat(), f"{c.duration.total_seconds() / 86400:g}")
    _console().print(table)
    return 0


def _grant(text: str) -> Grant:
    from meterline.pricing.cycles import parse_instant
    from meterline.pricing.invoice import Grant

    credits, _, expiry = text.partition("@")
    return Grant(f"grant-{credits}", _decimal(credits), "promo" if expiry else "topup", parse_instant(expiry) if expiry else None)


def _preview(settings: SdkSettings, args: argparse.Namespace) -> int:
    from meterline.pricing.cycles import BillingSchedule, parse_instant
    from meterline.pricing.exceptions import PricingError
    from meterline.pricing.invoice import CarriedCredits, compute_invoice
    from meterline.pricing.proration import prorate_change

    catalogue = _catalogue(settings, args)
    plan = catalogue.plan(args.plan)
    cycle = terms = None
    if args.anchor:
        schedule = BillingSchedule(parse_instant(args.anchor), plan.interval)
        # The edge may read the clock; the domain only ever gets the instant.
        cycle = schedule.cycle_at(parse_instant(args.at) if args.at else datetime.now(timezone.utc))
    if args.from_plan:
        if cycle is None or not args.changed_at:
            raise PricingError("--from-plan needs --anchor and --changed-at to know the cycle and the instant")
        terms = prorate_change(catalogue.plan(args.from_plan), plan, cycle, parse_instant(args.changed_at))
    carried = [CarriedCredits(args.carried, args.carried_cycles)] if args.carried else []
    grants = [_grant(text) for text in args.grant or []]
    invoice = compute_invoice(args.plan, plan, args.credits_used, carried=carried, grants=grants, cycle=cycle, terms=terms)
    return _dump(_invoice_json(invoice)) if args.format == "json" else _print_invoice(invoice)


def _invoice_json(invoice: Invoice) -> dict[str, Any]:
    return {"plan": invoice.plan, "credits_used": invoice.credits_used,
            "cycle": None if invoice.cycle is None else {"start": invoice.cycle.start.isoformat(), "end": invoice.cycle.end.isoformat()},
            "lines": [line._asdict() for line in invoice.lines], "subtotal": invoice.subtotal, "total": invoice.total,
            "carry_out": [asdict(batch) for batch in invoice.carry_out],
            "grants_out": [asdict(grant) for grant in invoice.grants_out], "notes": list(invoice.notes)}


def _print_invoice(invoice: Invoice) -> int:
    from rich.table import Table

    span = f", cycle {invoice.cycle.start.isoformat()} - {invoice.cycle.end.isoformat()}" if invoice.cycle else ""
    table = Table(title=f"Invoice preview: plan {invoice.plan}, {invoice.credits_used} credits used{span}")
    for column in ("line", "credits", "unit price", "amount"):
        table.add_column(column, justify="left" if column == "line" else "right")
    for line in invoice.lines:
        quantity = "" if line.kind == "base_fee" else f"{line.quantity}"
        unit = "" if line.unit_price is None or line.kind == "base_fee" else f"${line.unit_price}"
        table.add_row(line.description, quantity, unit, f"${line.amount:.2f}" if line.amount or line.unit_price is not None else "")
    table.add_row("[bold]total[/bold] (rounded once, half up)", "", "", f"[bold]${invoice.total}[/bold]")
    console = _console()
    console.print(table)
    for note in invoice.notes:
        console.print(f"note: {note}")
    return 0


def _files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prices", type=Path, help="price book YAML (default: METERLINE_PRICES, then shipped)")
    parser.add_argument("--plans", type=Path, help="plan catalogue YAML (default: METERLINE_PLANS, then shipped)")


def _format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["text", "json"], default="text")


def register(commands: Any) -> None:
    """Add `pricing`, `plans` and `billing` to the `meterline` sub-command parsers."""
    pricing = commands.add_parser("pricing", help="price book, quotes and the pricing page").add_subparsers(dest="action", required=True)
    imp = pricing.add_parser("import-litellm", help="convert LiteLLM's model_prices_and_context_window.json to our YAML")
    imp.add_argument("file")
    imp.add_argument("--output", help="write here instead of stdout")
    imp.add_argument("--mode", action="append", help="keep this mode (repeatable; default: the modes priced per token)")
    imp.add_argument("--provider", action="append", help="keep only this litellm_provider (repeatable)")
    imp.set_defaults(run=_import_litellm)
    quote = pricing.add_parser("quote", help="provider cost and credits of one call")
    quote.add_argument("--model", required=True)
    quote.add_argument("--input-tokens", type=_count, required=True)
    quote.add_argument("--output-tokens", type=_count, required=True)
    quote.add_argument("--cached-tokens", type=_count, default=0, help="part of the input tokens read from the prompt cache")
    quote.add_argument("--action", help="action tier (e.g. simple, complex)")
    quote.add_argument("--cost-usd", type=_decimal, help="a provider cost reported by the caller (overrides the price book)")
    quote.add_argument("--credit-price", type=_decimal, help="also show the margin at this revenue per credit")
    _files(quote)
    _format(quote)
    quote.set_defaults(run=_quote)
    render = pricing.add_parser("render", help="write the public pricing page from the plans file")
    render.add_argument("--format", choices=["json", "html"], default="json")
    render.add_argument("--output", help="write here instead of stdout")
    _files(render)
    render.set_defaults(run=_render)

    plans = commands.add_parser("plans", help="validate the plan catalogue").add_subparsers(dest="action", required=True)
    check = plans.add_parser("check", help="credit-to-cost ratio per model x tier; exit 1 if any is below target")
    check.add_argument("--credit-price", type=_decimal, help="revenue per credit (default: lowest of the paying plans)")
    check.add_argument("--plan", help="use this plan's revenue per credit")
    _files(check)
    _format(check)
    check.set_defaults(run=_check)

    billing = commands.add_parser("billing", help="billing cycles and invoice previews").add_subparsers(dest="action", required=True)
    cycles = billing.add_parser("cycles", help="list a subscription's billing cycles")
    cycles.add_argument("--anchor", required=True, help="subscription start, ISO 8601 (UTC if no zone on a bare date)")
    cycles.add_argument("--interval", choices=["month", "year"], default="month")
    cycles.add_argument("--count", type=_count, default=12)
    _format(cycles)
    cycles.set_defaults(run=_cycles)
    preview = billing.add_parser("preview", help="the invoice one cycle would get")
    preview.add_argument("--plan", required=True)
    preview.add_argument("--credits-used", type=_decimal, required=True)
    preview.add_argument("--carried", type=_decimal, default=Decimal(0), help="credits carried over into this cycle")
    preview.add_argument("--carried-cycles", type=int, default=1, help="cycles the carried credits may still be used in")
    preview.add_argument("--grant", action="append", help="CREDITS or CREDITS@EXPIRY: a top-up, or a promo that expires")
    preview.add_argument("--anchor", help="subscription anchor; with --at picks the cycle")
    preview.add_argument("--at", help="an instant in the cycle to preview (default: now)")
    preview.add_argument("--from-plan", help="prorate: the plan in force before --changed-at")
    preview.add_argument("--changed-at", help="prorate: when the plan changed, inside the cycle")
    _files(preview)
    _format(preview)
    preview.set_defaults(run=_preview)

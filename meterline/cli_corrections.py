"""`meterline corrections void|amend ORG --user USER --request-id ID --reason TEXT`: correct one counted event."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from meterline.exceptions import MeterlineError

if TYPE_CHECKING:
    from meterline.settings import Settings

AMENDABLE = {"model": str, "action": str, "input_tokens": int, "output_tokens": int, "cached_input_tokens": int}


def _cost(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"must be a number of US dollars such as 0.0125, got {text!r}") from None


def _correct(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.producers.corrections import build_correction
    from meterline.schemas.errors import InvalidEventError
    from meterline.stack import produce_and_wait

    amended = None
    if args.correction == "amend":
        amended = {name: getattr(args, name) for name in (*AMENDABLE, "cost_usd") if getattr(args, name) is not None}
    try:
        correction = build_correction(args.org, args.user, args.request_id, reason=args.reason, amended=amended,
                                      correction_id=args.id)
    except InvalidEventError as error:
        raise MeterlineError("the correction is not valid: " + "; ".join(str(p) for p in error.problems)) from None
    produce_and_wait(settings, settings.usage_topic, [(correction.user_key.encode(), correction.to_json())])
    what = "void" if amended is None else "amendment (" + ", ".join(f"{k}={v}" for k, v in amended.items()) + ")"
    print(f"sent the {what} of {correction.user_key} request {correction.request_id!r}: correction id {correction.id} "
          "(send it again with --id to retry safely: a correction id is applied once). A request id the worker "
          "does not remember is refused to the dead-letter topic with the reason.")
    return 0


def register(commands: Any) -> None:
    """Add `corrections` to the `meterline` sub-command parsers."""
    corrections = commands.add_parser("corrections", help="void or amend one counted event, with a reason") \
        .add_subparsers(dest="correction", required=True)
    for action, help_text in (("void", "take one event out of its user's balance and the warehouse"),
                              ("amend", "replace usage fields of one event; the balance changes by the difference")):
        parser = corrections.add_parser(action, help=help_text)
        parser.add_argument("org")
        parser.add_argument("--user", required=True)
        parser.add_argument("--request-id", required=True, help="the request id of the event to correct")
        parser.add_argument("--reason", required=True, help="why, for the audit trail (usage_corrections)")
        parser.add_argument("--id", help="the correction id (default: a new one); the same id corrects once")
        if action == "amend":
            for name, kind in AMENDABLE.items():
                parser.add_argument(f"--{name.replace('_', '-')}", type=kind)
            parser.add_argument("--cost-usd", type=_cost, help="the provider cost the caller was billed")
        parser.set_defaults(run=_correct)

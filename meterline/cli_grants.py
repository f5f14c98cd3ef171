"""`meterline grants add ORG --user USER --credits N [--expires INSTANT] --reason TEXT`: credits outside the plan."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from meterline.cli_warehouse import instant_argument
from meterline.exceptions import MeterlineError

if TYPE_CHECKING:
    from meterline.settings import Settings


def _credits(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"must be a number of credits such as 100 or 12.5, got {text!r}") from None


def _add(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from meterline.producers.request_ids import new_request_id
    from meterline.schemas.errors import InvalidEventError
    from meterline.schemas.grant import GrantEvent
    from meterline.stack import produce_and_wait

    try:
        grant = GrantEvent(id=args.id or new_request_id(), org_id=args.org, user_id=args.user, credits=args.credits,
                           kind=args.kind, expires_at=args.expires, reason=args.reason, time=datetime.now(timezone.utc))
    except ValidationError as error:
        problems = InvalidEventError.from_validation_error(error).problems
        raise MeterlineError("the grant is not valid: " + "; ".join(str(problem) for problem in problems)) from None
    produce_and_wait(settings, settings.usage_topic, [(grant.user_key.encode(), grant.to_json())])
    expiry = f", expiring {grant.expires_at.isoformat()}" if grant.expires_at else ""
    print(f"granted {grant.credits} credits ({grant.kind}{expiry}) to {grant.user_key}: grant id {grant.id} "
          "(give it again with --id to retry safely: a grant id is applied once)")
    return 0


def register(commands: Any) -> None:
    """Add `grants` to the `meterline` sub-command parsers."""
    grants = commands.add_parser("grants", help="credits given outside the plan: top-ups and promotions") \
        .add_subparsers(dest="action", required=True)
    add = grants.add_parser("add", help="grant credits to one user (applied in order with their usage, once per id)")
    add.add_argument("org")
    add.add_argument("--user", required=True, help="the user (an org's pool cannot take grants yet)")
    add.add_argument("--credits", type=_credits, required=True)
    add.add_argument("--expires", type=instant_argument, help="ISO 8601 instant; usable through the cycle it falls in")
    add.add_argument("--reason", required=True, help="why, for the audit trail")
    add.add_argument("--kind", choices=["topup", "promo"], default="topup")
    add.add_argument("--id", help="the grant id (default: a new one); the same id is granted once")
    add.set_defaults(run=_add)

"""`meterline subscriptions load FILE [--dry-run]` and `meterline subscriptions show ORG [--user USER]`."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from meterline.pricing.catalogue import Catalogue
    from meterline.schemas.subscription import Subscription
    from meterline.settings import Settings


def _load(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.subscriptions import load_checked_catalogue, publish, read_file

    subscriptions = read_file(Path(args.file), load_checked_catalogue(settings))
    for subscription in subscriptions:
        history = " -> ".join([subscription.plan, *(f"{c.plan} at {c.at.isoformat()}" for c in subscription.changes)])
        print(f"{subscription.subscriber_key}: {history}, since {subscription.since.isoformat()}")
    if args.dry_run:
        print(f"{len(subscriptions)} subscription(s) valid; nothing published (--dry-run)")
        return 0
    publish(settings, subscriptions)
    print(f"{len(subscriptions)} subscription(s) published to {settings.subscriptions_topic}")
    return 0


def _describe(subscription: Subscription, catalogue: Catalogue, now: datetime) -> dict[str, Any]:
    from meterline.subscriptions import billing_cycle

    plan_id = subscription.plan_at(now) or subscription.plan
    cycle = billing_cycle(subscription, catalogue, now)
    return {"subscriber": subscription.subscriber_key, "plan": plan_id, "since": subscription.since.isoformat(),
            "cycle_start": cycle.start.isoformat(), "cycle_end": cycle.end.isoformat(),
            "stripe_customer_id": subscription.stripe_customer_id or "",
            "changes": [f"{change.plan} at {change.at.isoformat()}" for change in subscription.changes]}


def _show(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.schemas.subscription import BEGINNING, effective_subscription
    from meterline.schemas.usage import require_identifiers
    from meterline.subscriptions import load_checked_catalogue, read_topic

    require_identifiers(org=args.org, user=args.user)
    catalogue = load_checked_catalogue(settings)
    unreadable: list[str] = []
    subscriptions = read_topic(settings, unreadable)
    now = datetime.now(timezone.utc)
    if args.user is not None:
        found = effective_subscription(args.org, args.user, subscriptions, settings.default_plan, now)
        rows = [_describe(found, catalogue, now) | {"applies_to": f"{args.org}/{args.user}"}]
        if found.since == BEGINNING:
            rows[0] |= {"subscriber": "(none: the default plan)", "since": ""}
    else:
        rows = [_describe(s, catalogue, now) for key, s in sorted(subscriptions.items())
                if key == args.org or key.startswith(f"{args.org}/")]
    for row in rows:
        print("  ".join(f"{name}={value}" for name, value in row.items() if value not in ("", [])))
    if not rows:
        print(f"no subscription for org {args.org!r}: its users are on the default plan ({settings.default_plan})")
    for where in unreadable:
        print(f"skipped a record that is not a subscription: {where}")
    return 0


def register(commands: Any) -> None:
    """Add `subscriptions` to the `meterline` sub-command parsers."""
    subscriptions = commands.add_parser("subscriptions", help="who is on which plan: load a file, show an org") \
        .add_subparsers(dest="action", required=True)
    load = subscriptions.add_parser("load", help="check a YAML or CSV file and publish it to the subscriptions topic")
    load.add_argument("file")
    load.add_argument("--dry-run", action="store_true", help="check and list, publish nothing")
    load.set_defaults(run=_load)
    show = subscriptions.add_parser("show", help="an org's subscriptions, or the one that applies to --user")
    show.add_argument("org")
    show.add_argument("--user")
    show.set_defaults(run=_show)

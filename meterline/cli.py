"""The `meterline` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from meterline.cli_emit import register as register_emit
from meterline.cli_pricing import register as register_pricing
from meterline.cli_corrections import register as register_corrections
from meterline.cli_grants import register as register_grants
from meterline.cli_subscriptions import register as register_subscriptions
from meterline.cli_warehouse import register as register_warehouse
from meterline.console import stderr_console
from meterline.exceptions import MeterlineError

if TYPE_CHECKING:  # each command imports what it needs when it runs: `meterline --help` stays quick
    from meterline.settings import SdkSettings, Settings

# What `pip install meterline` leaves out, and the extra that brings it (pyproject.toml).
EXTRA_OF_MODULE = {"rich": "cli", "faust": "server", "mode": "server", "aiokafka": "server", "uvloop": "server",
                   "clickhouse_connect": "server", "chdb": "server", "quixstreams": "bench"}


def _stack(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.stack import fetch_jars, stack_down, stack_up

    if args.action == "fetch":
        stderr_console().print(f"Kafka {settings.kafka_version} jars in {fetch_jars(settings)}")
    elif args.action == "up":
        status = stack_up(settings)
        stderr_console().print(f"Kafka answering on {status.bootstrap} (pid {status.pid}), data in {settings.kafka_data_dir}")
    elif args.action == "down":
        stderr_console().print("Kafka stopped" if stack_down(settings) else "Kafka was not running")
    else:
        from meterline.stack.status import stack_report

        parts = stack_report(settings)
        for part in parts:
            stderr_console().print(f"{part.name:8} {'[green]up[/green]  ' if part.up else '[red]down[/red]'} {part.detail}")
        return 0 if parts[0].up else 3
    return 0


def _sink(settings: Settings, _args: argparse.Namespace) -> int:
    from meterline.sinks import ClickHouseSink, Warehouse
    from meterline.sinks.query_endpoint import QueryEndpoint
    from meterline.stack import ensure_topics

    ensure_topics(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    warehouse = Warehouse(settings)
    logging.getLogger("meterline.sinks").info("storing %s in ClickHouse (%s)", settings.rated_topic,
                                             "server" if settings.clickhouse_url else f"chDB at {settings.chdb_dir}")
    # Embedded, this process alone can open the warehouse: it answers `meterline sql` and `report` for others.
    endpoint = None if settings.clickhouse_url else QueryEndpoint(settings, warehouse)
    try:
        ClickHouseSink(settings, warehouse).run(stop)
    finally:
        if endpoint is not None:
            endpoint.close()
    return 0


def _alerts(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.auth import resolve_secret
    from meterline.webhooks import shown_url, check_url, deliver_alerts, webhook_secret

    url = args.url or settings.alert_webhook_url
    if not url:
        raise MeterlineError("give the receiver's URL: --url or METERLINE_ALERT_WEBHOOK_URL")
    check_url(url)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("meterline.webhooks").info("delivering %s to %s", settings.alerts_topic, shown_url(url))
    counts = deliver_alerts(settings, url, webhook_secret(resolve_secret(settings)), stop)
    logging.getLogger("meterline.webhooks").info("stopped: %d delivered, %d refused by the receiver, %d retries",
                                                 counts.delivered, counts.skipped, counts.retries)
    return 0


def _warehouse(settings: Settings, _args: argparse.Namespace) -> int:
    from meterline.sinks import Warehouse
    from meterline.sinks.migrations import MIGRATIONS

    warehouse = Warehouse(settings)  # opening it applies what is missing
    for migration in warehouse.migrated:
        print(f"applied {migration.version}: {migration.description}")
    where = "server" if settings.clickhouse_url else f"chDB at {settings.chdb_dir}"
    print(f"warehouse {settings.clickhouse_database} ({where}) is at version {MIGRATIONS[-1].version}"
          + ("" if warehouse.migrated else ", nothing to apply"))
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.processors.worker import prepare_topics, run_worker
    from meterline.settings import load_settings

    if args.processes < 1:
        raise MeterlineError(f"--processes must be at least 1, got {args.processes}")
    if args.loglevel is not None:  # validated as the variable is
        settings = load_settings(worker_log_level=args.loglevel)
    prepare_topics(settings)  # with our partition count, before Faust would auto-create them
    if args.processes == 1:
        run_worker(settings)
        return 0
    from meterline.processors.supervisor import supervise

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return supervise(settings, args.processes, stop, say=stderr_console().print)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.demo import run_demo

    return run_demo(settings, events=args.events, users=args.users)


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from meterline.auth import DEFAULT_TOKEN_TTL_SECONDS, operator_key, org_key, resolve_secret, user_token

    from meterline.schemas.usage import require_identifiers

    # The events' own rule: "a/b" + "c" must not sign the same message as "a" + "b/c", and a
    # key is only worth having for an id an event can carry.
    require_identifiers(org=args.org, user=args.user)
    secret = resolve_secret(settings)
    if args.operator:
        print(operator_key(secret))
    elif args.webhook:
        from meterline.webhooks import webhook_secret

        print(webhook_secret(secret))
    elif args.org is None:
        raise MeterlineError("give an org id (and --user for a user token), or --operator")
    elif args.revoke:
        if args.user is not None or not args.reason:
            raise MeterlineError("--revoke revokes every key and token of the org: give the org and --reason, no --user")
        from meterline.revocations import revoke

        valid_from = revoke(settings, args.org, args.reason)
        print(f"every key and user token of {args.org} issued before now is revoked (the workers apply it within "
              "about a second); its new org key:", file=sys.stderr)
        print(org_key(secret, args.org, valid_from))
    else:
        print(org_key(secret, args.org) if args.user is None
              else user_token(secret, args.org, args.user, int(time.time()) + (args.ttl or DEFAULT_TOKEN_TTL_SECONDS)))
    return 0


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _duration(text: str) -> int:
    """`90s`, `30m`, `24h`, `7d` (or seconds alone) as seconds, within 1 s and MAX_TOKEN_TTL_SECONDS."""
    from meterline.auth import MAX_TOKEN_TTL_SECONDS

    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    if not (number.isascii() and number.isdigit()) or not 1 <= int(number) * DURATION_UNITS[unit] <= MAX_TOKEN_TTL_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a duration from 1s to 366d such as 30m, 24h or 7d, got {text!r}")
    return int(number) * DURATION_UNITS[unit]


class _Version(argparse.Action):
    """`--version`, reading the installed metadata only when asked (importlib.metadata is slow to import)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        from importlib.metadata import version

        parser.exit(message=f"meterline {version('meterline')}\n")


# The commands that read the price book and plans (the others never open them).
PRICED_COMMANDS = frozenset({"worker", "demo", "emit", "pricing", "plans", "billing", "subscriptions"})
LONG_RUNNING = frozenset({"worker", "sink", "demo", "alerts"})
# The commands that read only SdkSettings (every METERLINE_ name is still checked).
SDK_COMMANDS = frozenset({"emit", "pricing", "plans", "billing"})


def check_configuration(settings: SdkSettings, command: str) -> list[str]:
    """Validate everything `command` reads before it starts; raise MeterlineError on the first problem.

    The settings themselves were validated when they were read (names and values). Returns what
    was checked, in words.
    """
    from meterline.settings import Settings

    checked = ["METERLINE_ variables"]
    if command in PRICED_COMMANDS:
        from meterline.pricing.catalogue import load_catalogue

        catalogue = load_catalogue(settings.prices, settings.plans, settings.cache_dir)
        if isinstance(settings, Settings):
            from meterline.subscriptions import check_default_plan

            check_default_plan(settings, catalogue)
        checked.append(f"price book ({settings.prices or 'shipped'}) and plans ({settings.plans or 'shipped'})")
    if isinstance(settings, Settings) and command in LONG_RUNNING and settings.api_secret is None \
            and settings.api_secret_file is not None:
        from meterline.auth import resolve_secret

        resolve_secret(settings)
        checked.append(f"API secret file ({settings.api_secret_file})")
    return checked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterline", description="Per-user metering for AI products.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the command's whole configuration (variables, price book, plans) and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    stack = commands.add_parser("stack", help="run the local single-node Kafka broker")
    stack.add_argument("action", choices=["up", "down", "status", "fetch"])
    stack.set_defaults(run=_stack)
    worker = commands.add_parser("worker", help="run the Faust processor (dedupe, roll-up, balance API)")
    worker.add_argument("--loglevel", help="error, warn, info or debug (default: METERLINE_WORKER_LOG_LEVEL, warn)")
    worker.add_argument("--processes", type=int, default=1,
                        help="run N workers on ports METERLINE_WORKER_PORT, +1, ...; each restarted when it exits")
    worker.set_defaults(run=_worker)
    commands.add_parser("sink", help="run the Kafka -> ClickHouse sink").set_defaults(run=_sink)
    warehouse = commands.add_parser("warehouse", help="the ClickHouse schema: apply its migrations (the sink does on start)")
    warehouse.add_argument("action", choices=["migrate"])
    warehouse.set_defaults(run=_warehouse)
    demo = commands.add_parser("demo", help="run the whole pipeline on simulated traffic and check it")
    demo.add_argument("--events", type=int, default=20_000)
    demo.add_argument("--users", type=int, default=300)
    demo.set_defaults(run=_demo)
    keys = commands.add_parser("keys", help="print an org API key, a user token (--user) or the operator key")
    keys.add_argument("org", nargs="?")
    keys.add_argument("--user")
    keys.add_argument("--operator", action="store_true", help="the key for the worker's own counters")
    keys.add_argument("--webhook", action="store_true", help="the secret alert webhooks are signed with")
    keys.add_argument("--ttl", type=_duration,
                      help="how long a --user token stays valid: 30m, 24h, 7d (default 24h, at most 366d)")
    keys.add_argument("--revoke", action="store_true",
                      help="refuse every key and user token of the org issued until now, and print a new org key")
    keys.add_argument("--reason", help="why the keys are revoked (with --revoke; kept on the revocations topic)")
    keys.set_defaults(run=_keys)
    alerts = commands.add_parser("alerts", help="alert webhooks: POST each alert, signed, retried") \
        .add_subparsers(dest="action", required=True)
    deliver = alerts.add_parser("deliver", help="deliver the alerts topic to a URL until stopped (SIGTERM)")
    deliver.add_argument("--url", help="the receiver (default: METERLINE_ALERT_WEBHOOK_URL)")
    deliver.set_defaults(run=_alerts)
    register_emit(commands)
    register_pricing(commands)
    register_subscriptions(commands)
    register_grants(commands)
    register_corrections(commands)
    register_warehouse(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from meterline.settings import load_sdk_settings, load_settings

        settings = load_sdk_settings() if args.command in SDK_COMMANDS else load_settings()
        if args.check_config or args.command in LONG_RUNNING:  # before anything is wired or started
            checked = check_configuration(settings, args.command)
            if args.check_config:
                print(f"configuration of `meterline {args.command}` is valid: {'; '.join(checked)}")
                return 0
        return int(args.run(settings, args))
    except MeterlineError as error:
        stderr_console().print(f"[red]error:[/red] {error}")
        return 2
    except ModuleNotFoundError as error:
        extra = EXTRA_OF_MODULE.get((error.name or "").partition(".")[0])
        if extra is None:
            raise
        stderr_console().print(f"[red]error:[/red] `meterline {args.command}` needs the {extra} extra "
                      f"({error.name} is not installed): pip install 'meterline[{extra}]'", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Subscriptions as data: read them from a YAML or CSV file, publish them, read them back from Kafka.

Files (every problem is reported with its line, all at once, before anything is published):

- YAML: a top-level `subscriptions:` list; each item has the fields of `Subscription`
  (`org_id`, optional `user_id`, `plan`, `since`, optional `anchor`, `stripe_customer_id`,
  `changes: [{plan, at}, ...]`). Instants are ISO 8601 text with a zone.
- CSV: a header naming `org_id,user_id,plan,since` and optionally `anchor,stripe_customer_id`;
  one row per plan a subscriber had. A subscriber's rows, in time order, are its history: the
  first starts it, each later one is a plan change at its `since`. `anchor` and
  `stripe_customer_id` may be given on the first row only.

Checked against the plan catalogue: every plan exists, and a history keeps one billing
interval (a change from monthly to yearly starts a new schedule, see pricing/proration.py).

Publishing is idempotent: the subscriptions topic is compacted and keyed by subscriber, and each
record carries the subscriber's whole history. A subscriber missing from a later file keeps its
record (nothing is deleted by omission).
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Context, localcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meterline.exceptions import MeterlineError
from meterline.feeds import CompactedFeed, UnusableRecord
from meterline.pricing.catalogue import Catalogue
from meterline.pricing.cycles import BillingSchedule, Cycle
from meterline.pricing.config import problems_from
from meterline.pricing.plans import Plan
from meterline.pricing.proration import CycleTerms, prorate_change
from meterline.schemas.subscription import STRIPE_CUSTOMER_PATTERN, STRIPE_CUSTOMER_RULE, Subscription
from meterline.schemas.usage import IDENTIFIER_PATTERN, IDENTIFIER_RULE
from meterline.settings import Settings

CSV_COLUMNS = ("org_id", "user_id", "plan", "since", "anchor", "stripe_customer_id")
CSV_REQUIRED = ("org_id", "plan", "since")
RULES = {IDENTIFIER_PATTERN: IDENTIFIER_RULE, STRIPE_CUSTOMER_PATTERN: STRIPE_CUSTOMER_RULE}


@dataclass(frozen=True)
class LineProblem:
    line: int
    field: str
    rule: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.rule}"


class SubscriptionFileError(MeterlineError):
    def __init__(self, source: str, problems: list[LineProblem]):
        self.problems = problems
        listed = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem(s), nothing published:\n{listed}")


def billing_cycle(subscription: Subscription, catalogue: Catalogue, at: datetime) -> Cycle:
    """The subscription's cycle containing `at` (its first cycle while `at` is before its anchor)."""
    plan = catalogue.plan(subscription.plan_at(at) or subscription.plan)
    return BillingSchedule(subscription.billing_anchor, plan.interval).cycle_at(max(at, subscription.billing_anchor))


@dataclass(frozen=True)
class CycleTermsOf:
    """What one cycle of a subscription bills: the plan at the cycle's end and its (prorated) terms."""

    plan_id: str
    plan: Plan
    terms: CycleTerms
    note: str = ""


def cycle_terms(subscription: Subscription, catalogue: Catalogue, cycle: Cycle) -> CycleTermsOf:
    """The terms of `cycle`: the plan's own, or prorated on the last plan change inside the cycle."""
    last_instant = cycle.end - timedelta(microseconds=1)
    plan_id = subscription.plan_at(last_instant) or subscription.plan
    plan = catalogue.plan(plan_id)
    inside = [change for change in subscription.changes if cycle.start < change.at < cycle.end]
    if not inside:
        return CycleTermsOf(plan_id, plan, CycleTerms.of(plan))
    before = subscription.plan_at(inside[-1].at - timedelta(microseconds=1)) or subscription.plan
    # Proration rounds included credits to 0.01 (half up): in Python's default context, not the
    # caller's (the worker adds credits in money.EXACT, which raises on any rounding).
    with localcontext(Context()):
        terms = prorate_change(catalogue.plan(before), plan, cycle, inside[-1].at)
    note = terms.note + (" (several changes this cycle: prorated on the last)" if len(inside) > 1 else "")
    return CycleTermsOf(plan_id, plan, terms, note)


def check_default_plan(settings: Settings, catalogue: Catalogue) -> None:
    if settings.default_plan not in catalogue.plans:
        raise MeterlineError(f"METERLINE_DEFAULT_PLAN: unknown plan {settings.default_plan!r} "
                             f"(known: {', '.join(sorted(catalogue.plans))})")


def load_checked_catalogue(settings: Settings) -> Catalogue:
    """The price book and plans, with METERLINE_DEFAULT_PLAN checked against them."""
    from meterline.pricing.catalogue import load_catalogue

    catalogue = load_catalogue(settings.prices, settings.plans, settings.cache_dir)
    check_default_plan(settings, catalogue)
    return catalogue


def read_file(path: Path, catalogue: Catalogue) -> list[Subscription]:
    """The file's subscriptions, checked whole; raise SubscriptionFileError listing every problem."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise SubscriptionFileError(str(path), [LineProblem(0, "file", f"cannot read: {error.strerror or error}")]) from None
    except UnicodeDecodeError as error:
        raise SubscriptionFileError(str(path), [LineProblem(0, "file", f"is not UTF-8 text (byte {error.start})")]) from None
    if path.suffix.lower() == ".csv":
        items, problems = _csv_items(text)
    else:
        items, problems = _yaml_items(text)
    subscriptions: list[Subscription] = []
    first_line: dict[str, int] = {}
    for line, item in items:
        try:
            subscription = Subscription.model_validate(item)
        except ValidationError as error:
            problems += [LineProblem(line, p.path, _readable(p.reason)) for p in problems_from(error)]
            continue
        key = subscription.subscriber_key
        if key in first_line:
            problems.append(LineProblem(line, "org_id/user_id", f"{key!r} is already subscribed on line {first_line[key]}; "
                                                                 "give its plan changes as `changes` instead"))
            continue
        first_line[key] = line
        problems += [LineProblem(line, field, rule) for field, rule in _catalogue_problems(subscription, catalogue)]
        subscriptions.append(subscription)
    if problems:
        raise SubscriptionFileError(str(path), sorted(problems, key=lambda p: p.line))
    return subscriptions


def _readable(reason: str) -> str:
    """A pattern's rule in words instead of the regular expression pydantic names."""
    for pattern, rule in RULES.items():
        if pattern in reason:
            return rule
    return reason.removeprefix("Value error, ")


def _catalogue_problems(subscription: Subscription, catalogue: Catalogue) -> Iterable[tuple[str, str]]:
    names = list(catalogue.plans)
    fields = ["plan", *(f"changes[{i}].plan" for i in range(len(subscription.changes)))]
    known = []
    for field, plan in zip(fields, subscription.plans):
        if plan in catalogue.plans:
            known.append(catalogue.plans[plan])
            continue
        nearest = difflib.get_close_matches(plan, names, n=1, cutoff=0.5)
        yield field, f"unknown plan {plan!r}" + (f"; did you mean {nearest[0]!r}?" if nearest else f" (known: {', '.join(sorted(names))})")
    intervals = {plan.interval for plan in known}
    if len(intervals) > 1:
        yield "changes", (f"mixes billing intervals ({', '.join(sorted(intervals))}): a change of interval ends "
                          "this subscription and starts a new one")


def _yaml_items(text: str) -> tuple[list[tuple[int, Any]], list[LineProblem]]:
    import yaml

    class TextTimes(yaml.SafeLoader):
        """Instants stay text: YAML's own timestamps drop a zone-less value's ambiguity silently."""

    TextTimes.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader = None
    try:
        loader = TextTimes(text)  # it already reads: a NUL character is refused here
        root = loader.get_single_node()
        if root is None:
            return [], [LineProblem(1, "file", "is empty; expected `subscriptions:` and a list")]
        if not isinstance(root, yaml.MappingNode):
            return [], [LineProblem(root.start_mark.line + 1, "file", "must be a mapping with a `subscriptions:` list")]
        listing = next((value for key, value in root.value if key.value == "subscriptions"), None)
        others = [key for key, _value in root.value if key.value != "subscriptions"]
        problems = [LineProblem(key.start_mark.line + 1, str(key.value), "unknown key (only `subscriptions`)") for key in others]
        if not isinstance(listing, yaml.SequenceNode):
            return [], problems + [LineProblem(1, "subscriptions", "must be a list")]
        return [(node.start_mark.line + 1, loader.construct_object(node, deep=True)) for node in listing.value], problems
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        return [], [LineProblem(line, "file", f"not valid YAML: {getattr(error, 'problem', None) or error}")]
    finally:
        if loader is not None:
            loader.dispose()


def _csv_items(text: str) -> tuple[list[tuple[int, Any]], list[LineProblem]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    problems = [LineProblem(1, "header", f"unknown column {name!r} (columns: {', '.join(CSV_COLUMNS)})")
                for name in header if name not in CSV_COLUMNS]
    problems += [LineProblem(1, "header", f"column {name!r} is required") for name in CSV_REQUIRED if name not in header]
    if problems:
        return [], problems
    histories: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(LineProblem(line, "row", f"has {len(header) + len(row[None])} fields, the header {len(header)}"))
            continue
        values = {name.strip(): (value or "").strip() for name, value in row.items()}
        subscriber = (values["org_id"], values.get("user_id", ""))
        if subscriber not in histories:
            histories[subscriber] = (line, {name: value for name, value in values.items() if value} | {"changes": []})
            continue
        for name in ("anchor", "stripe_customer_id"):
            if values.get(name):
                problems.append(LineProblem(line, name, f"only the subscriber's first row (line {histories[subscriber][0]}) may set it"))
        histories[subscriber][1]["changes"].append({"plan": values["plan"], "at": values["since"]})
    return list(histories.values()), problems


def publish(settings: Settings, subscriptions: list[Subscription]) -> None:
    """Write each subscriber's record to the compacted subscriptions topic; return once Kafka has them all."""
    from meterline.stack import ensure_topics, produce_and_wait

    ensure_topics(settings, compacted=(settings.subscriptions_topic,))
    produce_and_wait(settings, settings.subscriptions_topic,
                     [(subscription.subscriber_key.encode(), subscription.to_json()) for subscription in subscriptions])


class SubscriptionFeed(CompactedFeed[Subscription]):
    """Every subscriber's latest record on the subscriptions topic (meterline/feeds.py).

    A record that is not a subscription, or (given a catalogue) names a plan the catalogue does
    not know, is skipped and named in `unreadable`: the subscriber keeps its previous record.
    """

    def __init__(self, settings: Settings, catalogue: Catalogue | None = None):
        super().__init__(settings.kafka_bootstrap, settings.subscriptions_topic)
        self.catalogue = catalogue

    def parse(self, key: str, value: bytes) -> Subscription:
        try:
            record = Subscription.model_validate_json(value)
        except ValidationError:
            raise UnusableRecord("") from None
        if key != record.subscriber_key:  # the topic is compacted by key: another key would keep two histories
            raise UnusableRecord(f"its key {key!r} is not its subscriber {record.subscriber_key!r}")
        problems = list(_catalogue_problems(record, self.catalogue)) if self.catalogue is not None else []
        if problems:
            raise UnusableRecord(f"{record.subscriber_key}: {'; '.join(f'{f}: {r}' for f, r in problems)}")
        return record


def read_topic(settings: Settings, unreadable: list[str], timeout: float = 30.0) -> dict[str, Subscription]:
    """Every subscriber's latest record, read from the start of the subscriptions topic to its end.

    Records that are not subscriptions are skipped and named in `unreadable`.
    """
    feed = SubscriptionFeed(settings)
    try:
        return feed.read_to_end(timeout)
    finally:
        unreadable.extend(feed.unreadable)
        feed.close()

"""The usage agent: decode, dedupe, rate, roll up. Bad events go to the dead-letter topic."""

from __future__ import annotations

import logging
import os
import signal
import time

from faust.types import EventT

from meterline.processors.app import app, balances, dead_letter_topic, seen_requests, settings, usage_topic
from meterline.processors.ledger import Balance, Decision, ExpiryIndex, SeenRequest, decide, must_remember
from meterline.pricing import PricingError, Rater, Rating
from meterline.schemas import FieldProblem, InvalidEventError, UsageEvent, parse_event, record_time

log = logging.getLogger(__name__)
rater = Rater.from_files(settings.prices, settings.plans)  # a bad price book stops the worker at start
counters = {"counted": 0, "duplicates": 0, "replayed": 0, "dead_lettered": 0}
expiry = ExpiryIndex(settings.dedupe_window_seconds)


@app.on_partitions_assigned.connect
async def _rebuild_expiry_index(*_args: object, **_kwargs: object) -> None:
    # Another worker may have remembered or forgotten ids while it owned a partition.
    expiry.reset()


def _forget_expired(partition: int, now: float) -> None:
    if not expiry.loaded(partition):
        expiry.load(partition, ((k, SeenRequest.from_json(v)) for k, v in seen_requests.items() if v is not None))
    for key in expiry.pop_expired(partition, now):
        # Deleting inside the event's context writes the tombstone to this partition's changelog.
        seen_requests.pop(key, None)


async def _dead_letter(raw: bytes, key: bytes | None, error: InvalidEventError, partition: int, offset: int) -> None:
    counters["dead_lettered"] += 1
    await dead_letter_topic.send(
        key=key,
        value={
            "reason": str(error),
            "problems": [{"field": p.field, "rule": p.rule} for p in error.problems],
            "partition": partition,
            "offset": offset,
            "raw": raw.decode("utf-8", errors="replace"),
        },
    )


def handle(parsed: UsageEvent, rating: Rating, partition: int, offset: int) -> None:
    """Apply one valid, rated usage event to the tables (synchronous: no await between read and write)."""
    # First, so the index of this partition is loaded from the recovered table before it grows.
    _forget_expired(partition, time.time())
    user_key = parsed.user_key.encode()
    dedupe_key = parsed.dedupe_key.encode()
    seen_raw = seen_requests.get(dedupe_key)
    balance = Balance.from_json(balances.get(user_key))
    seen = SeenRequest.from_json(seen_raw) if seen_raw else None
    decision = decide(balance, seen, partition, offset)
    if must_remember(decision, seen):
        # The window runs from when we first saw the id, so a late backfill is still deduped.
        remembered = SeenRequest(partition, offset, time.time())
        seen_requests[dedupe_key] = remembered.to_json()
        expiry.add(dedupe_key, remembered)
    if decision is Decision.APPLY:
        balances[user_key] = balance.apply(rating.credits, partition, offset).to_json()
        counters["counted"] += 1
    elif decision is Decision.DUPLICATE:
        counters["duplicates"] += 1
    else:
        counters["replayed"] += 1


@app.agent(usage_topic)
async def process_usage(stream):  # type: ignore[no-untyped-def]  # Faust agents are untyped
    try:
        async for event in stream.events():
            await _process(event)
    except Exception:
        # Faust would restart the agent while the web server goes on answering balances that no
        # longer move. Stop the whole worker instead (SIGTERM: a clean stop; replays are harmless).
        log.critical("the usage agent crashed; stopping the worker", exc_info=True)
        os.kill(os.getpid(), signal.SIGTERM)
        raise


async def _process(event: EventT) -> None:
    raw: bytes = event.value
    try:
        # "Too far in the future" is judged against the record's Kafka timestamp, not this
        # worker's clock, so the sink and a replay after a crash judge it the same way.
        parsed = parse_event(raw, now=record_time(event.message.timestamp))
        rating = rater.rate(parsed)
    except InvalidEventError as error:
        await _dead_letter(raw, event.key, error, event.message.partition, event.message.offset)
        return
    except PricingError as error:  # e.g. a model the price book does not know: never priced at zero
        problem = InvalidEventError([FieldProblem("data.model", str(error))])
        await _dead_letter(raw, event.key, problem, event.message.partition, event.message.offset)
        return
    handle(parsed, rating, event.message.partition, event.message.offset)

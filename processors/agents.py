"""The usage agent: decode, dedupe, rate, roll up. Bad events go to the dead-letter topic."""

from __future__ import annotations

import heapq
import logging
import time

from faust.types import EventT

from meterline.processors.app import app, balances, dead_letter_topic, seen_requests, settings, usage_topic
from meterline.processors.ledger import Balance, Decision, SeenRequest, decide
from meterline.pricing import PricingError, Rater, Rating
from meterline.schemas import FieldProblem, InvalidEventError, parse_event

log = logging.getLogger(__name__)

# Per partition: a min-heap of (seen_at, key) over seen_requests, to drop ids older than the
# window. Rebuilt from the recovered table the first time a partition is seen after a start.
_expiry: dict[int, list[tuple[float, bytes]]] = {}
rater = Rater.from_files(settings.prices, settings.plans)  # a bad price book stops the worker at start
counters = {"counted": 0, "duplicates": 0, "replayed": 0, "dead_lettered": 0}


def _expiry_heap(partition: int) -> list[tuple[float, bytes]]:
    heap = _expiry.get(partition)
    if heap is None:
        heap = [
            (float(value[2]), key)
            for key, value in seen_requests.items()
            if value is not None and int(value[0]) == partition
        ]
        heapq.heapify(heap)
        _expiry[partition] = heap
    return heap


def _forget_expired(partition: int, now: float) -> None:
    heap = _expiry_heap(partition)
    horizon = now - settings.dedupe_window_seconds
    while heap and heap[0][0] < horizon:
        _, key = heapq.heappop(heap)
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


def handle(event: EventT, rating: Rating) -> None:
    """Apply one valid, rated usage event to the tables (synchronous: no await between read and write)."""
    parsed = event.value
    partition, offset = event.message.partition, event.message.offset
    user_key = parsed.user_key.encode()
    dedupe_key = parsed.dedupe_key.encode()
    seen_raw = seen_requests.get(dedupe_key)
    balance = Balance.from_json(balances.get(user_key))
    decision = decide(balance, SeenRequest.from_json(seen_raw) if seen_raw else None, partition, offset)
    if decision is Decision.APPLY:
        # The window runs from when we first saw the id, so a late backfill is still deduped.
        seen = SeenRequest(partition, offset, time.time())
        seen_requests[dedupe_key] = seen.to_json()
        heapq.heappush(_expiry_heap(partition), (seen.seen_at, dedupe_key))
        balances[user_key] = balance.apply(rating.credits, partition, offset).to_json()
        counters["counted"] += 1
    elif decision is Decision.DUPLICATE:
        counters["duplicates"] += 1
    else:
        counters["replayed"] += 1
    _forget_expired(partition, time.time())


@app.agent(usage_topic)
async def process_usage(stream):  # type: ignore[no-untyped-def]  # Faust agents are untyped
    async for event in stream.events():
        raw: bytes = event.value
        try:
            event.value = parse_event(raw)
            rating = rater.rate(event.value)
        except InvalidEventError as error:
            await _dead_letter(raw, event.key, error, event.message.partition, event.message.offset)
            continue
        except PricingError as error:  # e.g. a model the price book does not know: never priced at zero
            problem = InvalidEventError([FieldProblem("data.model", str(error))])
            await _dead_letter(raw, event.key, problem, event.message.partition, event.message.offset)
            continue
        handle(event, rating)

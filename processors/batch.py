"""One batch of source records in, everything to write out: the worker's logic, without Kafka or Faust.

`BatchProcessor.process` decides, for each record in offset order, whether it is applied, a
duplicate, a conflict, a replay or a dead letter, and returns what the batch must write: each
touched user's state once, one remembered-ids record per partition, the expired ones to delete,
the rated records and the dead letters. The caller writes them and waits for Kafka's
acknowledgement before it acknowledges the source offsets (processors/README.md says why each
crash point is safe).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import NamedTuple

from pydantic import ValidationError

from meterline.pricing import PricingError, Rater
from meterline.pricing.rating import Rating
from meterline.pricing.invoice import Grant
from meterline.processors.accounts import ZERO, Accounts, CycleAccount, Placement, alert_record
from meterline.pricing.money import EXACT
from meterline.schemas import FieldProblem, InvalidEventError, UsageEvent, parse_event, record_time
from meterline.schemas.correction import CORRECTION_TYPE_BYTES, CorrectionEvent, parse_correction
from meterline.schemas.grant import GRANT_TYPE_BYTES, GrantEvent, parse_grant
from meterline.schemas.usage import UsageData
from meterline.schemas.rated import Status, rated_record
from meterline.processors.pools import PoolEntry, pool_usage_record
from meterline.processors.state import (RememberedIds, Seen, UserState, batch_price_version, decode_batch, encode_batch,
                                        id_digest, payload_fingerprint)

# Why no Kafka record may stop the worker: any record is either applied or dead-lettered.
MAX_REASON_CHARS = 2000


class SourceRecord(NamedTuple):
    """One record of the usage topic (a tuple: made once per event, ~5x cheaper than a frozen dataclass)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # the record's Kafka time, epoch seconds


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record: its original key and value bytes, untouched, and why."""

    record: SourceRecord
    problems: tuple[FieldProblem, ...]

    @property
    def reason(self) -> str:
        return "; ".join(str(p) for p in self.problems)[:MAX_REASON_CHARS]


@dataclass
class BatchResult:
    states: dict[bytes, tuple[int, UserState]] = field(default_factory=dict)  # user key -> (partition, state)
    remembered: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (partition, batch key, record)
    forgotten: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, batch key) to delete
    rated: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (partition, user key, rated record)
    alerts: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (partition, user key, alert record)
    pooled: dict[tuple[str, int], list[PoolEntry]] = field(default_factory=dict)  # (org, partition) -> pool entries
    pool_usage: list[tuple[bytes, bytes]] = field(default_factory=list)  # (org key, pool usage record): processors/pools.py
    before: dict[bytes, CycleAccount | None] = field(default_factory=dict)  # each user's account before the batch
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # (partition, user key, request id, credits) of events whose user holds reservations: each may commit one
    commits: list[tuple[int, bytes, str, Decimal]] = field(default_factory=list)


ReadRecord = Callable[[int, int], "bytes | None"]  # (partition, offset) -> that source record's value

# Kafka stamps records in milliseconds: a batch's records share a few hundred instants at most.
_record_time = lru_cache(maxsize=1024)(record_time)


def decode(record: SourceRecord) -> UsageEvent | GrantEvent | CorrectionEvent | DeadLetter:
    """The record's usage event, grant or correction, or why it is a dead letter. Never raises."""
    if record.value is None:
        return DeadLetter(record, (FieldProblem("value", "the record has no value (null)"),))
    event: UsageEvent | GrantEvent | CorrectionEvent
    try:
        try:
            # "Too far in the future" is judged against the record's Kafka time, not this worker's
            # clock, so a replay after a crash judges it the same way.
            event = parse_event(record.value, now=_record_time(record.timestamp))
        except InvalidEventError:
            # Only what is not a usage event pays for these checks.
            if GRANT_TYPE_BYTES in record.value:
                event = parse_grant(record.value, _record_time(record.timestamp))
            elif CORRECTION_TYPE_BYTES in record.value:
                event = parse_correction(record.value, _record_time(record.timestamp))
            else:
                raise
    except InvalidEventError as error:
        return DeadLetter(record, tuple(error.problems))
    except Exception as error:  # noqa: BLE001 - whatever a record does, it must not stop the worker
        return DeadLetter(record, (FieldProblem("event", f"could not be read: {type(error).__name__}: {error}"),))
    if record.key != event.user_key.encode():
        # Counted under another key, the user's balance would live on two partitions at once.
        return DeadLetter(record, (FieldProblem("key", f"the record key {record.key!r} must be the event's "
                                                       f"org_id/user_id {event.user_key!r}"),))
    return event


def revision_digest(user_key: bytes, request_id: str, revision: int) -> int:
    """Where correction number `revision` of a request is remembered (its offset)."""
    return id_digest(b"%s\x00revision\x00%s\x00%d" % (user_key, request_id.encode(), revision))


def amended(event: UsageEvent, correction: CorrectionEvent) -> UsageEvent:
    """`event` with the amendment's fields; InvalidEventError if together they break a rule (cached > input)."""
    assert correction.amended is not None
    try:
        data = UsageData.model_validate({**event.data.model_dump(), **correction.amended.changes()})
    except ValidationError as error:
        problems = InvalidEventError.from_validation_error(error).problems
        raise InvalidEventError([FieldProblem(f"amended.{p.field.removeprefix('data.')}", p.rule) for p in problems]) from None
    return event.model_copy(update={"data": data})


class BatchProcessor:
    """The per-partition memory of remembered ids, and the rules that apply a batch."""

    def __init__(self, rater: Rater, accounts: Accounts, price_version: str, window_seconds: float,
                 max_ids_per_partition: int, price_books: Callable[[str], Rater | None] = lambda _version: None):
        self.rater = rater
        self.accounts = accounts
        self.price_version = price_version
        self.price_books = price_books  # a rater for an earlier price book version (meterline/price_books.py), or None
        # Remembered ids name their price book by an index into this list: a small int, not a string an id.
        self._price_book_versions = [""]  # 0: not recorded (batch records written before price books were named)
        self._price_book = self._price_book_index(price_version)
        self.window_seconds = window_seconds
        self.max_ids = max_ids_per_partition
        self.remembered: dict[int, RememberedIds] = {}
        self._batch_numbers = itertools.count()
        self.holders: Container[bytes] = frozenset()  # the users with reservations (processors/enforcement.py)

    def loaded(self, partition: int) -> bool:
        return partition in self.remembered

    def load(self, partition: int, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild a partition's remembered ids from its batch records (after a start or a rebalance)."""
        ids = RememberedIds(self.window_seconds, self.max_ids)
        batches = []
        for key, raw in records:
            seen_at, entries = decode_batch(raw, self._price_book_index(batch_price_version(raw)))
            batches.append((seen_at, key, list(entries)))
        for seen_at, key, entries in sorted(batches, key=lambda batch: batch[0]):
            ids.add_batch(key, seen_at, entries)
        self.remembered[partition] = ids

    def _price_book_index(self, version: str) -> int:
        if version not in self._price_book_versions:
            self._price_book_versions.append(version)
        return self._price_book_versions.index(version)

    def _rater_of(self, price_book: int) -> tuple[str, Rater | None]:
        """The version of the price book at `price_book`, and its rater (None: not readable here)."""
        version = self._price_book_versions[price_book]
        if version in ("", self.price_version):  # not recorded: the records from before, rated with this one
            return self.price_version, self.rater
        return version, self.price_books(version)

    def forget_partitions(self) -> None:
        """After a rebalance another worker may have written these partitions: reload before use."""
        self.remembered.clear()

    def process(self, records: list[SourceRecord], state_of: Callable[[bytes], UserState],
                now: float, read_record: ReadRecord | None = None) -> BatchResult:
        """Apply `records` (each partition's in offset order). `state_of` reads a user's stored state;
        `read_record` reads an earlier source record (a correction reads the event it corrects).

        Costs, credits and balances are computed under `money.EXACT`: an amount that would need
        rounding raises (and its event is a dead letter) instead of being rounded.
        """
        in_batch: dict[tuple[int, int], bytes | None] = {}  # made on a correction's first read: most batches have none

        def read(partition: int, offset: int) -> bytes | None:
            if not in_batch:
                in_batch.update(((record.partition, record.offset), record.value) for record in records)
            if (partition, offset) in in_batch:
                return in_batch[(partition, offset)]
            return None if read_record is None else read_record(partition, offset)

        with localcontext(EXACT):
            return self._process(records, state_of, now, read)

    def _process(self, records: list[SourceRecord], state_of: Callable[[bytes], UserState],
                 now: float, read: ReadRecord) -> BatchResult:
        result = BatchResult()
        first_seen: defaultdict[int, dict[int, Seen]] = defaultdict(dict)  # partition -> ids first seen in this batch
        for partition in {record.partition for record in records}:
            # Before judging: a copy that arrives after the window is counted again, whichever
            # batch it comes in, so a replay of this batch reaches the same verdict.
            result.forgotten.extend((partition, key) for key in self.remembered[partition].expire(now))
        for record in records:
            outcome = decode(record)
            if not isinstance(outcome, DeadLetter):
                event_time = outcome.time.timestamp()  # epoch seconds, once: judged here, kept in the state
                outcome = self._too_late(record, event_time, now) or outcome
            if isinstance(outcome, DeadLetter):
                result.dead_letters.append(outcome)
                result.counts["dead_lettered"] += 1
                continue
            try:
                if isinstance(outcome, GrantEvent):
                    self._grant(record, outcome, state_of, first_seen[record.partition], result)
                    continue
                if isinstance(outcome, CorrectionEvent):
                    self._correct(record, outcome, state_of, first_seen[record.partition], result,
                                  read, now)
                    continue
                rating = self.rater.rate(outcome)
                self._apply(record, outcome, rating.provider_cost_usd, rating.credits, rating.rule, state_of,
                            first_seen[record.partition], result, now, event_time)
            except PricingError as error:  # e.g. a model the price book does not know: never priced at zero
                field_name = "data.model" if isinstance(outcome, UsageEvent) else "event"
                result.dead_letters.append(DeadLetter(record, (FieldProblem(field_name, str(error)),)))
                result.counts["dead_lettered"] += 1
            except ArithmeticError as error:  # the bounds make it unreachable; never rounded if it were
                # _apply raises before it records anything, so the event is not half applied.
                result.dead_letters.append(DeadLetter(record, (FieldProblem(
                    "data", f"its credits cannot be added to the balance exactly: {type(error).__name__}"),)))
                result.counts["dead_lettered"] += 1
        for user_key, (partition, state) in result.states.items():
            org_id, _, user_id = user_key.decode().partition("/")
            for alert in self.accounts.alerts(org_id, user_id, result.before[user_key], state.account):
                result.alerts.append((partition, user_key, alert_record(org_id, user_id, alert, now)))
        result.pool_usage.extend((org_id.encode(), pool_usage_record(org_id, partition, entries))
                                 for (org_id, partition), entries in result.pooled.items())
        for partition, entries in first_seen.items():
            ids = self.remembered[partition]
            if entries:
                # Unique per batch, so a replayed batch never overwrites an earlier record's ids.
                first = min(seen.offset for seen in entries.values())
                batch_key = f"{partition}/{first}/{now}/{next(self._batch_numbers)}".encode()
                items = list(entries.items())
                ids.add_batch(batch_key, now, items)
                result.remembered.append((partition, batch_key, encode_batch(now, items, self.price_version)))
            result.forgotten.extend((partition, key) for key in ids.expire(now))  # the bound on ids
        return result

    def _too_late(self, record: SourceRecord, event_time: float, now: float) -> DeadLetter | None:
        """An event (or grant) older than the dedupe window is refused: a re-send could no longer be recognised.

        Judged against the record's Kafka time (the worker's clock when it has none), so a replay
        after a crash reaches the same verdict.
        """
        written = record.timestamp if record.timestamp and record.timestamp > 0 else now
        age = written - event_time
        if age <= self.window_seconds:
            return None
        return DeadLetter(record, (FieldProblem("time", f"is {age / 86_400:,.1f} days before the record was written; "
                                                        f"events older than the dedupe window ({self.window_seconds / 86_400:g} "
                                                        "days) are refused, as a re-send could be counted twice"),))

    def _state(self, user_key: bytes, state_of: Callable[[bytes], UserState], result: BatchResult) -> UserState:
        """The user's state as this batch has left it so far (the stored one, read once, at first)."""
        touched = result.states.get(user_key)
        if touched:
            return touched[1]
        state = state_of(user_key)
        result.before.setdefault(user_key, state.account)
        return state

    def _grant(self, record: SourceRecord, grant: GrantEvent, state_of: Callable[[bytes], UserState],
               first_seen: dict[int, Seen], result: BatchResult) -> None:
        """A grant, exactly once: its id is remembered like a request id, its offset like an event's."""
        user_key = record.key or b""  # decode() checked that it is the grant's org_id/user_id
        partition, offset = record.partition, record.offset
        state = self._state(user_key, state_of, result)
        digest = id_digest(b"%s\x00grant\x00%s" % (user_key, grant.id.encode()))  # no request id holds a NUL
        # What the grant gives, not when it was sent: a retry of the same grant is a duplicate.
        fingerprint = payload_fingerprint(f"{grant.credits}/{grant.kind}/{grant.expires_at}".encode())
        seen = first_seen.get(digest) or self.remembered[partition].get(digest)
        if seen is not None and seen.offset != offset:
            result.counts["duplicate_grants" if seen.fingerprint == fingerprint else "conflicting_grants"] += 1
            return
        if state.has_applied(partition, offset):
            result.counts["replayed"] += 1
        else:
            account = self.accounts.grant(grant.org_id, grant.user_id, Grant(grant.id, grant.credits, grant.kind,
                                                                             grant.expires_at), grant.time, state.account)
            result.states[user_key] = (partition, state._replace(partition=partition, last_offset=offset, account=account))
            result.counts["grants"] += 1
        if seen is None:
            first_seen[digest] = Seen(offset, fingerprint, self._price_book)

    def _correct(self, record: SourceRecord, correction: CorrectionEvent, state_of: Callable[[bytes], UserState],
                 first_seen: dict[int, Seen], result: BatchResult, read: ReadRecord, now: float) -> None:
        """Void or amend one counted event, exactly once (processors/README.md, "Corrections").

        The event's current version is rebuilt from Kafka: the counted event at the offset its
        request id is remembered at, then each earlier correction of it, in order. The balance
        changes by the difference between that version and the new one.
        """
        user_key = record.key or b""  # decode() checked that it is the correction's org_id/user_id
        partition, offset = record.partition, record.offset
        remembered = self.remembered[partition]

        def lookup(digest: int) -> Seen | None:
            return first_seen.get(digest) or remembered.get(digest)

        digest = id_digest(b"%s\x00correction\x00%s" % (user_key, correction.id.encode()))  # no request id holds a NUL
        fingerprint = payload_fingerprint(correction.effect())
        seen = lookup(digest)
        if seen is not None and seen.offset != offset:
            result.counts["duplicate_corrections" if seen.fingerprint == fingerprint else "conflicting_corrections"] += 1
            return
        found = self._current_version(partition, user_key, correction, offset, lookup, read)
        if isinstance(found, FieldProblem):
            result.dead_letters.append(DeadLetter(record, (found,)))
            result.counts["dead_lettered"] += 1
            return
        previous, previous_offset, revision, price_book = found
        version, rater = self._rater_of(price_book)
        if rater is None:
            result.dead_letters.append(DeadLetter(record, (FieldProblem("request_id", (
                f"its version was rated with price book {version}, which this worker cannot read: a correction "
                "takes back what was charged, at the prices it was charged at")),)))
            result.counts["dead_lettered"] += 1
            return
        try:
            before = rater.rate(previous)
            after = None if correction.amended is None else amended(previous, correction)
            rating = None if after is None else self.rater.rate(after)
        except (InvalidEventError, PricingError) as error:
            problems = error.problems if isinstance(error, InvalidEventError) else (FieldProblem("amended", str(error)),)
            result.dead_letters.append(DeadLetter(record, tuple(problems)))
            result.counts["dead_lettered"] += 1
            return
        credits = (ZERO if rating is None else rating.credits) - before.credits
        cost = (ZERO if rating is None else rating.provider_cost_usd) - before.provider_cost_usd
        events = -1 if after is None else 0
        state = self._state(user_key, state_of, result)
        data = previous.data
        placement, account = self.accounts.correct(data.org_id, data.user_id, previous.time, credits, cost, events,
                                                   state.account)
        if state.has_applied(partition, offset):
            result.counts["replayed"] += 1  # corrected before a crash; its rows are published again below
        else:
            result.states[user_key] = (partition, state.correct(credits, events, partition, offset, account, now))
            result.counts["corrections"] += 1
        if placement.pooled:
            result.pooled.setdefault((data.org_id, partition), []).append(
                PoolEntry(offset, placement.cycle_start.timestamp(), credits, cost, events))
        if seen is None:
            first_seen[digest] = Seen(offset, fingerprint, self._price_book)
        revision_key = revision_digest(user_key, correction.request_id, revision)
        if lookup(revision_key) is None:
            first_seen[revision_key] = Seen(offset, 0, self._price_book)
        # For the audit trail, the version it replaces; then the new one (for a void: what was voided, deleted).
        result.rated.append((partition, user_key, self._rated(previous, before, version, "superseded", partition,
                                                               previous_offset, now, placement, revision - 1, correction)))
        result.rated.append((partition, user_key, self._rated(
            after or previous, rating or before, self.price_version if after else version, "amended" if after else "voided",
            partition, offset, now, placement, revision, correction)))

    def _current_version(self, partition: int, user_key: bytes, correction: CorrectionEvent, offset: int,
                         lookup: Callable[[int], Seen | None],
                         read: ReadRecord) -> tuple[UsageEvent, int, int, int] | FieldProblem:
        """The version of the corrected event before the correction at `offset`: (event, its offset, the new
        revision, the price book that rated it)."""
        seen = lookup(id_digest(b"%s/%s" % (user_key, correction.request_id.encode())))
        if seen is None:
            return FieldProblem("request_id", f"no event of {user_key.decode()} with request id {correction.request_id!r} "
                                              "is remembered: it was never counted, or is older than the dedupe window")
        raw = read(partition, seen.offset)
        if raw is None or payload_fingerprint(raw) != seen.fingerprint:
            return FieldProblem("request_id", f"the counted event at offset {seen.offset} could not be read back from Kafka")
        try:
            version, version_offset, price_book = parse_event(raw), seen.offset, seen.price_book
        except InvalidEventError as error:  # it was valid when counted; a record read back must still not stop the worker
            return FieldProblem("request_id", f"the counted event at offset {seen.offset} no longer reads as one: {error}")
        revision = 1
        while (earlier := lookup(revision_digest(user_key, correction.request_id, revision))) is not None \
                and earlier.offset != offset:
            raw = read(partition, earlier.offset)
            try:
                before = parse_correction(raw or b"")
            except InvalidEventError:
                return FieldProblem("request_id", f"correction {revision} at offset {earlier.offset} could not be read back from Kafka")
            if before.amended is None:
                return FieldProblem("request_id", f"request id {correction.request_id!r} was voided by correction {before.id!r}")
            version, version_offset, price_book = amended(version, before), earlier.offset, earlier.price_book
            revision += 1
        return version, version_offset, revision, price_book

    @staticmethod
    def _rated(event: UsageEvent, rating: Rating, price_version: str, status: Status, partition: int, offset: int,
               now: float, placement: Placement, revision: int, correction: CorrectionEvent) -> bytes:
        return rated_record(event, provider_cost_usd=rating.provider_cost_usd, credits=rating.credits,
                            credit_rule=rating.rule, price_version=price_version, status=status,
                            partition=partition, offset=offset, processed_at=now, placement=placement,
                            revision=revision, correction=correction)

    def _apply(self, record: SourceRecord, event: UsageEvent, cost: Decimal, credits: Decimal, rule: str,
               state_of: Callable[[bytes], UserState], first_seen: dict[int, Seen],
               result: BatchResult, now: float, event_time: float) -> None:
        user_key = record.key or b""  # decode() checked that it is the event's org_id/user_id
        partition, offset = record.partition, record.offset
        state = self._state(user_key, state_of, result)
        digest = id_digest(b"%s/%s" % (user_key, event.id.encode()))
        fingerprint = payload_fingerprint(record.value or b"")
        seen = first_seen.get(digest) or self.remembered[partition].get(digest)
        data = event.data
        placement, account = self.accounts.place(data.org_id, data.user_id, event.time, credits, cost, state.account)
        status: Status
        if seen is not None and seen.offset != offset:
            # Seen first at another offset: a re-send. Counted once; recorded for audit.
            status = "duplicate" if seen.fingerprint == fingerprint else "conflict"
            result.counts["replayed" if state.has_applied(partition, offset) else status + "s"] += 1
        else:
            status = "applied"
            replay = state.has_applied(partition, offset)
            if not replay:
                # First: if it raises, nothing is recorded.
                state = state.apply(credits, partition, offset, account, event_time, now)
            if seen is None:
                # Also for a replay: its state was stored but its batch of ids may have been lost.
                first_seen[digest] = Seen(offset, fingerprint, self._price_book)
            if replay:
                result.counts["replayed"] += 1  # counted before a crash; published again below
            else:
                result.states[user_key] = (partition, state)
                result.counts["applied"] += 1
            if placement.pooled:  # also for a replay: the pool skips what it applied, and recovers what was lost
                result.pooled.setdefault((data.org_id, partition), []).append(
                    PoolEntry(offset, placement.cycle_start.timestamp(), credits, cost, 1, event.id))
        result.rated.append((partition, user_key, rated_record(
            event, provider_cost_usd=cost, credits=credits, credit_rule=rule, price_version=self.price_version,
            status=status, partition=partition, offset=offset, processed_at=now, placement=placement)))
        if user_key in self.holders:  # whatever its status: a replay or a re-send still closes its hold
            result.commits.append((partition, user_key, event.id, credits))

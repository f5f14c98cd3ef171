"""The fast path `emit` uses: validate in plain Python, write the CloudEvents JSON by template.

Building the pydantic `UsageEvent` and dumping it costs ~20 us an event; this costs ~2 us
(benchmarks/bench_emit.py prints both). It is conservative: whenever an argument is not one of
the plain types it knows (int tokens, str ids, int/float/Decimal cost, aware datetime,
dict[str, str] metadata) or breaks a rule, the whole call goes to `build_event`. So the schema
stays the one authority on what is valid, every error message comes from it, and a valid but
unusual argument (a cost given as "0.25") still works. tests/unit/producers/test_events.py
checks with hypothesis that both paths accept the same events with the same meaning.

Strings are JSON-escaped by orjson and cached per distinct value (orgs, users and models
repeat); numbers are formatted from exact ints; the request id and timestamp come from one
clock reading.

Generated request ids come from the encoder's own `request_ids.RequestIdClock`, whose state
the common call reads inline.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from decimal import Decimal
from time import time_ns as _time_ns
from typing import Any

import orjson

from meterline.producers.events import EMIT_OPTIONS, build_event, default_source
from meterline.producers.request_ids import HEX3, RequestIdClock
from meterline.schemas import EVENT_TYPE, FieldProblem, InvalidEventError, UsageEvent
from meterline.schemas.usage import (
    IDENTIFIER_PATTERN,
    MAX_ACTION_CHARS,
    MAX_CLOCK_SKEW,
    MAX_EVENT_BYTES,
    MAX_IDENTIFIER_CHARS,
    MAX_LATENCY_MS,
    MAX_METADATA_BYTES,
    MAX_MODEL_CHARS,
    MAX_REPORTED_COST_USD,
    MAX_REQUEST_ID_CHARS,
    MAX_SOURCE_CHARS,
    MAX_TOKENS,
    MONEY_DECIMAL_PLACES,
    REQUEST_ID_PATTERN,
)

# The schema's patterns (fullmatch: Python's `$` also matches before a final newline). Where
# Python's \s is wider than pydantic's, the schema path decides.
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_UTC = timezone.utc
_CACHE_LIMIT = 100_000  # distinct strings kept escaped; cleared past this
# The common call (no request id, action, cost, metadata or timestamp given) is one f-string of
# cached pieces; the id's counter is looked up as text rather than formatted (~0.2 us).
_HEAD = '{"specversion":"1.0","id":"'
_SMALL = 10_000
_DECIMAL = [str(n) for n in range(_SMALL)]
_COUNTS = frozenset({"latency_ms", "cached_input_tokens"})  # the options the common call may take
_OPTIONS = frozenset(EMIT_OPTIONS)
_TEMPLATE = (
    '{"specversion":"1.0","id":%s,"source":%s,"type":"' + EVENT_TYPE + '","subject":%s,"time":"%s",'
    '"datacontenttype":"application/json","data":{"org_id":%s,"user_id":%s,"model":%s,"input_tokens":%d,'
    '"output_tokens":%d,"cached_input_tokens":%d,"latency_ms":%d%s,"metadata":%s}}'
)


def _json(value: str) -> str | None:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # lone surrogates: let the schema say what is wrong
        return None


def _cost(value: object) -> str | None:
    """The cost as a decimal string when it is plainly valid, else None (the schema decides)."""
    if type(value) is int and 0 <= value <= MAX_REPORTED_COST_USD:
        return str(value)
    if type(value) is float and math.isfinite(value) and value >= 0:
        value = Decimal(repr(value))  # 0.1 stays 0.1, as in the schema
    if type(value) is Decimal and value.is_finite() and value >= 0 and _fits_money_column(value):
        return str(value)
    return None


def _fits_money_column(value: Decimal) -> bool:
    """At most 18 decimals and at most MAX_REPORTED_COST_USD, as the schema checks it."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked by the caller
    return -exponent <= MONEY_DECIMAL_PLACES and value <= MAX_REPORTED_COST_USD


def _metadata(metadata: object) -> str | None:
    if metadata is None:
        return "{}"
    if type(metadata) is not dict:
        return None
    size = 0
    for key, value in metadata.items():
        if type(key) is not str or type(value) is not str:
            return None
        try:
            size += len(key.encode()) + len(value.encode())
        except UnicodeEncodeError:  # lone surrogates: let the schema say what is wrong
            return None
    if size > MAX_METADATA_BYTES:
        return None
    try:
        return orjson.dumps(metadata).decode()
    except orjson.JSONEncodeError:
        return None


def _unknown_option(name: str) -> TypeError:
    """The error a plain function raises for a misspelt keyword, with the nearest real one."""
    import difflib

    nearest = difflib.get_close_matches(name, EMIT_OPTIONS, n=1)
    return TypeError(f"emit() got an unexpected keyword argument {name!r}"
                     + (f"; did you mean {nearest[0]!r}?" if nearest else ""))


def _time(timestamp: object, now: datetime) -> str | None:
    if type(timestamp) is not datetime or timestamp.utcoffset() is None or timestamp - now > MAX_CLOCK_SKEW:
        return None
    try:
        text = timestamp.astimezone(_UTC).isoformat()
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00, before the first UTC instant: the schema says so
        return None
    return text[:-6] + "Z"  # "+00:00" -> "Z"


class EventEncoder:
    """Turn `emit` arguments into (request id, Kafka key, CloudEvents JSON), validated.

    Args:
        source: the CloudEvents `source` (default ``meterline-sdk://<hostname>``).
    """

    def __init__(self, source: str | None = None):
        self.source = source or default_source()
        escaped = _json(self.source)
        if not 0 < len(self.source) <= MAX_SOURCE_CHARS or escaped is None:
            raise InvalidEventError([FieldProblem("source", f"must be 1 to {MAX_SOURCE_CHARS} characters of text")])
        self._source = escaped
        # (org, user, model) -> (JSON from the id's end to the time, JSON from the time's end to the
        # input token count, Kafka key)
        self._heads: dict[tuple[str, str, str], tuple[str, str, bytes]] = {}
        self._identifiers: dict[str, str] = {}  # valid org/user id -> JSON string
        self._models: dict[str, str] = {}  # valid model -> JSON string
        self.ids = RequestIdClock()

    def _identifier(self, value: object) -> str | None:
        if type(value) is not str or not 0 < len(value) <= MAX_IDENTIFIER_CHARS or _IDENTIFIER.fullmatch(value) is None:
            return None
        escaped = _json(value)
        if escaped is not None:
            if len(self._identifiers) >= _CACHE_LIMIT:
                self._identifiers.clear()
            self._identifiers[value] = escaped
        return escaped

    def _model(self, value: object) -> str | None:
        if type(value) is not str or not 0 < len(value) <= MAX_MODEL_CHARS:
            return None
        escaped = _json(value)
        if escaped is not None:
            if len(self._models) >= _CACHE_LIMIT:
                self._models.clear()
            self._models[value] = escaped
        return escaped

    def encode(self, org_id: str, user_id: str, model: str, input_tokens: int, output_tokens: int,
               **options: Any) -> tuple[str, bytes, bytes]:
        """Validate and encode one event (`build_event`'s arguments); raise InvalidEventError naming every bad field."""
        if not options or options.keys() <= _COUNTS:
            latency_ms = options.get("latency_ms", 0) if options else 0
            cached_input_tokens = options.get("cached_input_tokens", 0) if options else 0
            head = self._heads.get((org_id, user_id, model)) if type(org_id) is type(user_id) is type(model) is str \
                else None
            if (  # the rules of the slow path below, chained: ~60 ns less
                head is not None
                and type(input_tokens) is type(output_tokens) is type(latency_ms) is type(cached_input_tokens) is int
                and 0 <= cached_input_tokens <= input_tokens <= MAX_TOKENS and 0 <= output_tokens <= MAX_TOKENS
                and 0 <= latency_ms <= MAX_LATENCY_MS
            ):
                # `RequestIdClock.next`, inlined: a call costs ~70 ns.
                millis = _time_ns() // 1_000_000
                ids = self.ids
                stamp, id_head, id_tail, when, count = ids.state
                if stamp != millis:
                    _, id_head, id_tail, when, count = ids.tick(millis)
                number = count()
                if number > 4095:
                    _, id_head, id_tail, when, count = ids.tick(millis)
                    number = count()
                rid = f"{id_head}{HEX3[number]}{id_tail}"
                # A count's text is looked up when small: str(int) is a fifth of this path.
                return rid, head[2], (
                    f'{_HEAD}{rid}{head[0]}{when}{head[1]}'
                    f'{_DECIMAL[input_tokens] if input_tokens < _SMALL else input_tokens},'
                    f'"output_tokens":{_DECIMAL[output_tokens] if output_tokens < _SMALL else output_tokens},'
                    f'"cached_input_tokens":'
                    f'{_DECIMAL[cached_input_tokens] if cached_input_tokens < _SMALL else cached_input_tokens},'
                    f'"latency_ms":{_DECIMAL[latency_ms] if latency_ms < _SMALL else latency_ms},"metadata":{{}}}}}}'
                ).encode()
        elif not options.keys() <= _OPTIONS:
            raise _unknown_option(sorted(options.keys() - _OPTIONS)[0])
        get = options.get
        latency_ms, request_id, action = get("latency_ms", 0), get("request_id"), get("action")
        cost_usd, cached_input_tokens = get("cost_usd"), get("cached_input_tokens", 0)
        metadata, timestamp = get("metadata"), get("timestamp")
        org = self._identifiers.get(org_id) if type(org_id) is str else None
        if org is None:
            org = self._identifier(org_id)
        user = self._identifiers.get(user_id) if type(user_id) is str else None
        if user is None:
            user = self._identifier(user_id)
        name = self._models.get(model) if type(model) is str else None
        if name is None:
            name = self._model(model)
        extra = ""
        ok = (
            org is not None and user is not None and name is not None
            and type(input_tokens) is int and 0 <= input_tokens <= MAX_TOKENS
            and type(output_tokens) is int and 0 <= output_tokens <= MAX_TOKENS
            and type(latency_ms) is int and 0 <= latency_ms <= MAX_LATENCY_MS
            and type(cached_input_tokens) is int and 0 <= cached_input_tokens <= input_tokens
        )
        if ok and cost_usd is not None:
            cost = _cost(cost_usd)
            ok, extra = cost is not None, f',"cost_usd":"{cost}"'
        if ok and action is not None:
            escaped = _json(action) if type(action) is str and 0 < len(action) <= MAX_ACTION_CHARS else None
            ok, extra = escaped is not None, f'{extra},"action":{escaped}'
        meta = _metadata(metadata) if ok else None
        ok = ok and meta is not None
        # One clock reading gives both the id's milliseconds and the event time.
        rid, now = self.ids.next()
        if ok and timestamp is not None:
            when = _time(timestamp, datetime.now(_UTC))
            ok = when is not None
        else:
            when = now
        if ok and request_id is not None:
            quoted = _json(request_id) if type(request_id) is str and 0 < len(request_id) <= MAX_REQUEST_ID_CHARS \
                and _REQUEST_ID.fullmatch(request_id) else None
            ok, rid = quoted is not None, request_id
        else:
            quoted = f'"{rid}"'
        if not ok:  # the schema decides, and says what is wrong
            event = build_event(org_id, user_id, model, input_tokens, output_tokens, source=self.source, **options)
            return event.id, event.user_key.encode(), event.to_json()
        document = _TEMPLATE % (quoted, self._source, user, when, org, user, name, input_tokens, output_tokens,
                                cached_input_tokens, latency_ms, extra, meta)
        key = f"{org_id}/{user_id}".encode()
        if user is not None:  # remember the escaped parts for the common case
            if len(self._heads) >= _CACHE_LIMIT:
                self._heads.clear()
            self._heads[(org_id, user_id, model)] = (
                f'","source":{self._source},"type":"{EVENT_TYPE}","subject":{user},"time":"',
                f'","datacontenttype":"application/json","data":{{"org_id":{org},"user_id":{user},"model":{name},'
                '"input_tokens":', key)
        return rid, key, document.encode()

    @staticmethod
    def encode_event(event: UsageEvent) -> tuple[str, bytes, bytes]:
        """Encode an already-validated event (a re-send keeps its request id).

        Raises InvalidEventError past MAX_EVENT_BYTES (possible only through extension fields):
        Kafka would refuse it, and it could never leave the spool.
        """
        value = event.to_json()
        if len(value) > MAX_EVENT_BYTES:
            raise InvalidEventError([FieldProblem("event", f"encodes to {len(value):,} bytes; at most {MAX_EVENT_BYTES:,}")])
        return event.id, event.user_key.encode(), value


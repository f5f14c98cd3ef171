"""The rated event: what the worker counted, as it publishes it on the rated topic.

The worker is the one rating authority: the sink stores these records as they are, so the
warehouse holds exactly what the balances counted. One JSON object per event; its fields are the
warehouse's columns, declared here once (name, ClickHouse type) and derived everywhere else.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from meterline.schemas.usage import UsageEvent

if TYPE_CHECKING:
    from meterline.processors.accounts import Placement
    from meterline.schemas.correction import CorrectionEvent

# applied: counted as sent. duplicate, conflict: a re-send, not counted. amended, voided: the event's
# version after a correction (rated_events keeps the highest revision; a voided one is deleted);
# superseded: the version a correction replaced, for the audit trail only.
Status = Literal["applied", "duplicate", "conflict", "amended", "voided", "superseded"]

RATED_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("org_id", "String"),
    ("user_id", "String"),
    ("request_id", "String"),
    ("event_time", "DateTime64(3, 'UTC')"),
    ("model", "LowCardinality(String)"),
    ("action", "LowCardinality(String)"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cached_input_tokens", "UInt64"),
    ("latency_ms", "UInt32"),
    # Decimal(76, 18): sum() keeps its argument's type, and a Decimal(38, 18) sum past 10^20 wraps
    # around to a negative number without an error (seen on chDB). 58 whole digits cannot be reached.
    ("reported_cost_usd", "Nullable(Decimal(76, 18))"),
    ("provider_cost_usd", "Decimal(76, 18)"),
    ("credits", "Decimal(76, 18)"),
    ("credit_rule", "LowCardinality(String)"),
    ("price_version", "LowCardinality(String)"),
    ("source", "String"),
    ("metadata", "Map(String, String)"),
    ("status", "LowCardinality(String)"),  # applied | duplicate | conflict
    ("kafka_partition", "UInt32"),
    ("kafka_offset", "UInt64"),
    ("processed_at", "DateTime64(3, 'UTC')"),
    # Where the balance counted it (processors/accounts.py): the plan at its event time, the start
    # of its billing cycle, and whether that cycle was already closed (an adjustment to bill).
    ("plan", "LowCardinality(String)"),
    ("cycle_start", "DateTime64(3, 'UTC')"),
    ("late", "Bool"),
    # Corrections (schemas/correction.py): 0 as sent, n after n corrections. rated_events keeps the
    # highest revision of each request id, and hides it when `deleted` (a void).
    ("revision", "UInt32"),
    ("deleted", "UInt8"),
    ("correction_id", "String"),
    ("correction_reason", "String"),
)
# Records written before a column existed lack it (and an uncorrected event carries none of the
# corrections' columns): stored with these values.
MISSING_VALUES: Final[dict[str, Any]] = {"plan": "", "cycle_start": 0.0, "late": False, "revision": 0, "deleted": 0,
                                         "correction_id": "", "correction_reason": ""}
RATED_FIELDS: Final = tuple(name for name, _type in RATED_COLUMNS)
_DECIMALS = frozenset(name for name, kind in RATED_COLUMNS if "Decimal" in kind)
_TIMES = frozenset(name for name, kind in RATED_COLUMNS if kind.startswith("DateTime"))


def rated_record(event: UsageEvent, *, provider_cost_usd: Decimal, credits: Decimal, credit_rule: str,
                 price_version: str, status: Status, partition: int, offset: int, processed_at: float,
                 placement: Placement, revision: int = 0, correction: CorrectionEvent | None = None) -> bytes:
    # The fields read from the models' dicts: an attribute of a pydantic model costs ~3x a plain
    # one, and the worker makes a record per event.
    envelope, data = event.__dict__, event.data.__dict__
    cost = data["cost_usd"]
    record = {
        "status": status,  # first: the sink routes a record by it without parsing (rated_status)
        "org_id": data["org_id"], "user_id": data["user_id"], "request_id": envelope["id"],
        "event_time": envelope["time"], "model": data["model"], "action": data["action"] or "",
        "input_tokens": data["input_tokens"], "output_tokens": data["output_tokens"],
        "cached_input_tokens": data["cached_input_tokens"], "latency_ms": data["latency_ms"],
        "reported_cost_usd": None if cost is None else str(cost),
        "provider_cost_usd": str(provider_cost_usd), "credits": str(credits), "credit_rule": credit_rule,
        "price_version": price_version, "source": envelope["source"], "metadata": data["metadata"],
        "kafka_partition": partition, "kafka_offset": offset, "processed_at": processed_at,
        "plan": placement.plan, "cycle_start": placement.cycle_start, "late": placement.late,
    }
    if correction is not None:
        record |= {"revision": revision, "deleted": int(status == "voided"), "correction_id": correction.id,
                   "correction_reason": correction.reason}
    return orjson.dumps(record)


_STATUS_PREFIX = b'{"status":"'


def rated_status(raw: bytes) -> str:
    """A rated record's status. Read from its first field when it is there (rated_record puts it
    first; parsing 600 bytes to route them was ~15 % of the sink's time), else parsed."""
    if raw.startswith(_STATUS_PREFIX):
        return raw[len(_STATUS_PREFIX):raw.index(b'"', len(_STATUS_PREFIX))].decode()
    return orjson.loads(raw)["status"]  # type: ignore[no-any-return]


def rated_row(raw: bytes) -> list[Any]:
    """A rated record as a warehouse row, in RATED_FIELDS order (exact Decimals, aware times)."""
    record = orjson.loads(raw)
    row = []
    for name in RATED_FIELDS:
        value = record[name] if name in record else MISSING_VALUES[name]
        if name in _DECIMALS and value is not None:
            value = Decimal(value)
        elif name in _TIMES:
            value = datetime.fromisoformat(value) if isinstance(value, str) else datetime.fromtimestamp(value, tz=timezone.utc)
        row.append(value)
    return row

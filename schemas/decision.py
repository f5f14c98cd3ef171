"""The decisions topic's record: refused and degraded reservations, and commits past their TTL or estimate.

Its columns are declared once, here: the worker writes the record from them and the warehouse's
`usage_decisions` table is made from them (sinks/queries.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final

import orjson

MONEY = "Decimal(76, 18)"
DECISION_COLUMNS: Final = (
    ("org_id", "String"),
    ("user_id", "String"),
    ("reservation_id", "String"),
    ("outcome", "LowCardinality(String)"),  # refused, degraded, over_estimate, committed_after_expiry
    ("reason", "LowCardinality(String)"),  # balance, concurrency, rate; "" for a commit
    ("requested_model", "LowCardinality(String)"),
    ("model", "LowCardinality(String)"),
    ("plan", "LowCardinality(String)"),
    ("held", MONEY),  # credits held (or that would have been)
    ("charged", f"Nullable({MONEY})"),  # what the commit charged, for a commit
    ("decided_at", "DateTime64(3, 'UTC')"),
)
DECISION_FIELDS: Final = tuple(name for name, _kind in DECISION_COLUMNS)


def decision_record(org_id: str, user_id: str, reservation_id: str, outcome: str, reason: str | None,
                    requested_model: str, model: str, plan: str, held: Decimal, charged: Decimal | None,
                    at: float) -> bytes:
    return orjson.dumps({
        "org_id": org_id, "user_id": user_id, "reservation_id": reservation_id, "outcome": outcome,
        "reason": reason or "", "requested_model": requested_model, "model": model, "plan": plan,
        "held": str(held), "charged": None if charged is None else str(charged),
        "decided_at": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds"),
    })


def decision_row(raw: bytes) -> list[Any]:
    """A decision record as a warehouse row, in DECISION_FIELDS order; raises on a record not written by a worker."""
    value = orjson.loads(raw)
    row: list[Any] = [str(value[name]) for name in DECISION_FIELDS[:8]]
    row.append(Decimal(value["held"]))
    row.append(None if value["charged"] is None else Decimal(value["charged"]))
    row.append(datetime.fromisoformat(value["decided_at"]))
    return row

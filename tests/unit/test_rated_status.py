"""Reading a rated record's status without parsing it, as the sink routes records."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.processors.accounts import Placement
from meterline.producers import build_event
from meterline.schemas.rated import rated_record, rated_status


def _record(status: str, metadata: dict[str, str]) -> bytes:
    event = build_event("acme", "alice", "gpt-4o-mini", 10, 2, request_id="r1", source="test",
                        timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc), metadata=metadata)
    return rated_record(event, provider_cost_usd=Decimal("0.001"), credits=Decimal("0.1"), credit_rule="tokens",
                        price_version="v", status=status, partition=0, offset=1, processed_at=1.0,  # type: ignore[arg-type]
                        placement=Placement("free", datetime(2026, 1, 1, tzinfo=timezone.utc), False))


@given(status=st.sampled_from(["applied", "duplicate", "conflict"]),
       metadata=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4))
def test_the_status_read_from_the_first_field_is_the_parsed_one(status: str, metadata: dict[str, str]) -> None:
    raw = _record(status, metadata)
    assert rated_status(raw) == orjson.loads(raw)["status"] == status


def test_a_record_with_its_status_elsewhere_is_parsed_not_searched() -> None:
    # A record written before the status came first, whose metadata names a "status" of its own.
    legacy = orjson.dumps({"metadata": {"status": "applied"}, "status": "duplicate"})
    assert rated_status(legacy) == "duplicate"


@pytest.mark.parametrize("raw", [b'{"status":"applied', b'{"status":"\xff\xfe"}', b"not json", b""])
def test_a_record_whose_status_cannot_be_read_raises(raw: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the sink counts any failure as an unreadable record
        rated_status(raw)

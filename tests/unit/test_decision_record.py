"""The decisions topic's record (schemas/decision.py) and its warehouse row."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest

from meterline.schemas.decision import DECISION_FIELDS, decision_record, decision_row


def test_a_decision_record_has_exactly_the_table_columns_and_reads_back_as_its_row():
    raw = decision_record("acme", "u1", "r1", "refused", "balance", "gpt-4o", "gpt-4o", "free", Decimal("2.5"), None,
                          1_800_000_000.25)
    assert tuple(orjson.loads(raw)) == DECISION_FIELDS
    assert decision_row(raw) == ["acme", "u1", "r1", "refused", "balance", "gpt-4o", "gpt-4o", "free", Decimal("2.5"), None,
                                 datetime(2027, 1, 15, 8, 0, 0, 250000, tzinfo=timezone.utc)]


def test_a_commit_record_keeps_what_it_charged_exactly():
    raw = decision_record("acme", "u1", "r1", "over_estimate", None, "gpt-4o", "gpt-4o-mini", "", Decimal(1),
                          Decimal("123456789012345678.000000000000000001"), 0.0)
    row = decision_row(raw)
    assert row[4] == "" and row[9] == Decimal("123456789012345678.000000000000000001")


@pytest.mark.parametrize("raw", [b"\xff", b"{}", b'{"org_id": 1}', b"[]"])
def test_a_record_not_written_by_a_worker_raises_for_the_sink_to_skip(raw):
    with pytest.raises(Exception):
        decision_row(raw)

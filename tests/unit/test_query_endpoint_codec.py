"""The query endpoint's JSON keeps every value's type, both ways."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from meterline.sinks.query_endpoint import dumps, loads

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.decimals(allow_nan=False, allow_infinity=False)
    | st.datetimes(timezones=st.just(timezone.utc)),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@given(values)
def test_a_value_comes_back_as_it_went(value: object) -> None:
    assert loads(dumps(value)) == value


def test_a_map_whose_key_looks_like_a_tag_stays_a_map() -> None:
    assert loads(dumps({"$decimal": "not a number"})) == {"$decimal": "not a number"}


def test_a_plain_object_written_by_hand_is_read_with_its_tags() -> None:
    assert loads(b'{"parameters": {"at": {"$datetime": "2026-11-01T00:00:00+00:00"}, "d": {"$decimal": "1.5"}}}') == {
        "parameters": {"at": datetime(2026, 11, 1, tzinfo=timezone.utc), "d": Decimal("1.5")}}

"""What a worker keeps in a table's memory for each user."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace
from typing import Any

import orjson

from meterline.processors import tables
from meterline.processors.state import UserState


def _table() -> Any:
    """The parts of a Faust table with a memory store that tables.put touches."""
    return SimpleNamespace(data=SimpleNamespace(data={}, _key_partition={}))


def test_a_stored_value_takes_about_its_length_in_memory() -> None:
    table, users = _table(), 2_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        values = [UserState(events=n).to_bytes() for n in range(users)]  # orjson's bytes, as the worker writes them
        length = max(map(len, values))
        for n, value in enumerate(values):
            tables.put(table, n % 8, f"org/user-{n}".encode(), value)
        del values, value  # what remains is the table's
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The value, its bytes object's header and the two dicts' share; orjson's own buffer is >= 4 KiB.
    assert used / users < length + 400


def test_a_value_put_then_deleted_leaves_nothing_behind() -> None:
    table = _table()
    tables.put(table, 3, b"org/alice", orjson.dumps({"v": 2}))
    assert table.data.data == {b"org/alice": b'{"v":2}'} and table.data._key_partition == {b"org/alice": 3}
    tables.put(table, 3, b"org/alice", None)
    assert table.data.data == {} and table.data._key_partition == {}

"""The warehouse contract: what meterline relies on from ClickHouse, on every backend it supports.

It runs on the embedded engine (chDB) always, and on a ClickHouse server when
METERLINE_TEST_CLICKHOUSE_URL names one (e.g. http://default:@127.0.0.1:8123); without it the
server half is skipped, saying so: no ClickHouse server package or Docker engine exists on the
machines this project is built on. Each test gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import SecretStr

from meterline.processors.accounts import Placement
from meterline.producers import build_event
from meterline.schemas.rated import RATED_FIELDS, rated_record, rated_row
from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks.queries import RATED_EVENTS, count_distinct_events, credits_per_user

SERVER_URL = "METERLINE_TEST_CLICKHOUSE_URL"
WHEN = datetime(2026, 11, 3, tzinfo=timezone.utc)


NO_SERVER = (f"no ClickHouse server to run the contract on: set {SERVER_URL} (no server package or Docker "
             "engine exists on this machine; the embedded half ran)")


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.skipif(not os.environ.get(SERVER_URL),
                                                                                     reason=NO_SERVER))])
def warehouse(request: pytest.FixtureRequest, broker_settings: Settings) -> Iterator[Warehouse]:
    database = f"contract_{uuid.uuid4().hex[:8]}"
    server = {"clickhouse_url": SecretStr(os.environ[SERVER_URL])} if request.param == "server" else {}
    # A server that is named but does not answer fails the suite: it was asked for.
    opened = Warehouse(broker_settings.model_copy(update={**server, "clickhouse_database": database}))
    try:
        yield opened
    finally:
        opened.command(f"DROP DATABASE IF EXISTS `{database}`")


def records(count: int, org: str = "ct", cost: str = "0.001", credits: str = "1.25") -> list[bytes]:
    placement = Placement("pro", WHEN, False)
    return [rated_record(build_event(org, f"u{n % 5}", "gpt-4o", 10, 2, request_id=f"r{n}", source="test",
                                     timestamp=WHEN + timedelta(seconds=n)),
                         provider_cost_usd=Decimal(cost), credits=Decimal(credits), credit_rule="tokens",
                         price_version="v", status="applied", partition=0, offset=n, processed_at=1.0, placement=placement)
            for n in range(count)]


def test_migrations_are_idempotent(warehouse: Warehouse) -> None:
    from meterline.sinks.migrations import migrate

    assert warehouse.migrated  # a new database gets every migration ...
    assert migrate(warehouse) == []  # ... once


def test_a_batch_retried_with_its_token_is_stored_once_even_before_any_merge(warehouse: Warehouse) -> None:
    batch = records(50)
    for _ in range(3):
        warehouse.insert_rated_json(RATED_EVENTS, batch, dedupe_token="t-1")
    assert warehouse.query((f"SELECT count() FROM {RATED_EVENTS}", {}))[0][0] == 50  # no FINAL: the insert was dropped


def test_a_replay_under_another_token_counts_once_before_and_after_a_merge(warehouse: Warehouse) -> None:
    batch = records(40)
    warehouse.insert_rated_json(RATED_EVENTS, batch, dedupe_token="first")
    warehouse.insert_rated_json(RATED_EVENTS, batch[10:], dedupe_token="replayed-from-10")
    expected = {f"u{n}": Decimal("1.25") * sum(1 for i in range(40) if i % 5 == n) for n in range(5)}

    def as_stored() -> tuple[int, dict[str, Decimal]]:
        return (warehouse.query(count_distinct_events("ct"))[0][0],
                {user: credits for _org, user, credits, _n in warehouse.query(credits_per_user("ct"))})

    assert as_stored() == (40, expected)
    warehouse.command(f"OPTIMIZE TABLE {RATED_EVENTS} FINAL")
    assert as_stored() == (40, expected)


def test_the_json_path_stores_what_the_typed_path_stores(warehouse: Warehouse) -> None:
    batch = records(20)
    warehouse.insert_rated_json(RATED_EVENTS, batch[:10], dedupe_token="json")
    warehouse.insert_rated(RATED_EVENTS, [rated_row(raw) for raw in batch[10:]], dedupe_token="typed")
    stored = warehouse.query((f"SELECT {', '.join(RATED_FIELDS)} FROM {RATED_EVENTS} FINAL ORDER BY kafka_offset", {}))
    assert len(stored) == 20
    # Row n (JSON) and row n + 10 (typed) differ only where the generator made them differ.
    varying = {RATED_FIELDS.index(name) for name in ("request_id", "event_time", "kafka_offset")}
    same = [i for i in range(len(RATED_FIELDS)) if i not in varying]
    assert all([row[i] for i in same] == [stored[n + 10][i] for i in same] for n, row in enumerate(stored[:10]))
    times = [row[RATED_FIELDS.index("event_time")] for row in stored]
    # The column is UTC; a backend may hand it back without its zone.
    assert [t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in times] == [WHEN + timedelta(seconds=n) for n in range(20)]
    assert [row[RATED_FIELDS.index("request_id")] for row in stored] == [f"r{n}" for n in range(20)]


def test_money_sums_are_exact_past_what_a_float_or_decimal_38_holds(warehouse: Warehouse) -> None:
    # 1,000 calls of 10^18 credits and 10^17 + 10^-18 USD: 10^21 and 10^20 + 10^-15, exactly.
    batch = records(1000, cost="100000000000000000.000000000000000001", credits="1000000000000000000")
    warehouse.insert_rated_json(RATED_EVENTS, batch, dedupe_token="big")
    (credits, cost), = warehouse.query((f"SELECT sum(credits), sum(provider_cost_usd) FROM {RATED_EVENTS} FINAL", {}))
    assert Decimal(credits) == Decimal(10) ** 21
    assert Decimal(cost) == Decimal("100000000000000000000.000000000000001")  # 36 digits: written out, not computed at 28

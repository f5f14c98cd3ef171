"""The hourly and daily rollups on real chDB: kept by their refreshable views, exact under replays,
retried batches with moved boundaries, corrections and late events, before and after OPTIMIZE FINAL.
The expected sums are computed here, from the rows the test wrote."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterline.schemas.rated import RATED_FIELDS
from meterline.settings import Settings
from meterline.sinks import Warehouse
from meterline.sinks.queries import RATED_EVENTS, ROLLUPS

START = datetime(2026, 11, 30, 20, tzinfo=timezone.utc)  # eight hours that straddle a day and a month


def _row(user: str, request_id: str, when: datetime, credits: Decimal, tokens: int, revision: int = 0,
         deleted: int = 0) -> list[object]:
    values = {name: 0 for name in RATED_FIELDS} | {
        "org_id": "acme", "user_id": user, "request_id": request_id, "event_time": when, "model": "gpt-4o",
        "action": "", "reported_cost_usd": None, "provider_cost_usd": credits / 100, "credits": credits,
        "input_tokens": tokens, "credit_rule": "tokens", "price_version": "v", "source": "test", "metadata": {},
        "status": "applied", "processed_at": when, "revision": revision, "deleted": deleted}
    return [values[name] for name in RATED_FIELDS]


def _bucket(when: datetime, table: str) -> datetime:
    hour = when.replace(minute=0, second=0, microsecond=0)
    return hour if ROLLUPS[table] == "toStartOfHour" else hour.replace(hour=0)


def _rollup(warehouse: Warehouse, table: str) -> dict[tuple[str, datetime], tuple[int, int, Decimal]]:
    rows = warehouse.query((f"SELECT user_id, bucket, events, input_tokens, credits FROM {table} FINAL "
                            "WHERE org_id = 'acme'", {}))
    return {(user, bucket.replace(tzinfo=timezone.utc)): (events, tokens, credits)
            for user, bucket, events, tokens, credits in rows if events}


def _expected(latest: dict[str, list[object]], table: str) -> dict[tuple[str, datetime], tuple[int, int, Decimal]]:
    index = {name: n for n, name in enumerate(RATED_FIELDS)}
    sums: dict[tuple[str, datetime], list] = defaultdict(lambda: [0, 0, Decimal(0)])
    for row in latest.values():
        if row[index["deleted"]]:
            continue
        entry = sums[(row[index["user_id"]], _bucket(row[index["event_time"]], table))]  # type: ignore[arg-type]
        entry[0] += 1
        entry[1] += row[index["input_tokens"]]  # type: ignore[operator]
        entry[2] += row[index["credits"]]  # type: ignore[operator]
    return {key: (events, tokens, credits) for key, (events, tokens, credits) in sums.items()}


@pytest.fixture()
def warehouse(broker_settings: Settings) -> Warehouse:
    return Warehouse(broker_settings.model_copy(update={"clickhouse_database": f"rollups_{uuid.uuid4().hex[:8]}"}))


def test_rollups_count_each_request_once_whatever_the_replays_and_merges(warehouse: Warehouse) -> None:
    rng = random.Random(11)
    rows, latest = [], {}
    for n in range(3000):
        request_id = f"r{n}"
        row = _row(f"u{rng.randrange(40)}", request_id, START + timedelta(seconds=rng.randrange(8 * 3600)),
                   Decimal(rng.randrange(1, 10**6)) / 1000, rng.randrange(10_000))
        rows.append(row)
        latest[request_id] = row
    for first in range(0, len(rows), 500):
        warehouse.insert_rated(RATED_EVENTS, rows[first:first + 500], dedupe_token=f"batch-{first}")
    warehouse.refresh_rollups()
    # A worker's replay and a sink's retry with other boundaries: the same rows again, new tokens.
    replayed = rows[250:1750]
    for first in range(0, len(replayed), 300):
        warehouse.insert_rated(RATED_EVENTS, replayed[first:first + 300], dedupe_token=f"retry-{first}")
    # Corrections: an amendment (revision 1) and a void (deleted), written after the first refresh.
    amended = list(latest["r5"])
    amended[RATED_FIELDS.index("credits")] = Decimal("123.456")
    amended[RATED_FIELDS.index("revision")] = 1
    voided = list(latest["r6"])
    voided[RATED_FIELDS.index("revision")], voided[RATED_FIELDS.index("deleted")] = 1, 1
    late = _row("u1", "late-1", START - timedelta(days=40), Decimal(7), 70)  # a bucket weeks behind
    warehouse.insert_rated(RATED_EVENTS, [amended, voided, late], dedupe_token="corrections")
    latest |= {"r5": amended, "r6": voided, "late-1": late}
    warehouse.refresh_rollups()
    for table in ROLLUPS:
        assert _rollup(warehouse, table) == _expected(latest, table), table
    for table in (RATED_EVENTS, *ROLLUPS):
        warehouse.command(f"OPTIMIZE TABLE `{warehouse.database}`.{table} FINAL")
    warehouse.refresh_rollups()
    for table in ROLLUPS:
        assert _rollup(warehouse, table) == _expected(latest, table), table


def test_an_hour_whose_every_event_was_voided_rolls_up_to_nothing(warehouse: Warehouse) -> None:
    when = START + timedelta(minutes=5)
    warehouse.insert_rated(RATED_EVENTS, [_row("alice", "only", when, Decimal(3), 30)], dedupe_token="first")
    warehouse.refresh_rollups()
    assert _rollup(warehouse, "usage_hourly") == {("alice", _bucket(when, "usage_hourly")): (1, 30, Decimal(3))}
    warehouse.insert_rated(RATED_EVENTS, [_row("alice", "only", when, Decimal(3), 30, revision=1, deleted=1)],
                           dedupe_token="void")
    warehouse.refresh_rollups()
    assert _rollup(warehouse, "usage_hourly") == {}
    assert _rollup(warehouse, "usage_daily") == {}

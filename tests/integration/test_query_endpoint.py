"""`meterline sql` and `meterline report` while a sink owns the embedded warehouse: answered by the sink,
read-only, behind the operator key; the sink, separate process, on the real broker and chDB."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from confluent_kafka import Producer

from meterline.auth import operator_key
from meterline.processors.accounts import Placement
from meterline.processors.worker import child_environment
from meterline.producers import build_event
from meterline.schemas.rated import rated_record
from meterline.settings import Settings
from meterline.sinks.query_endpoint import endpoint_file
from meterline.stack import ensure_topics

from tests.integration.pipeline import wait_for
from tests.integration.test_run_twice import cli

WHEN = datetime(2026, 11, 10, tzinfo=timezone.utc)


def publish_rated(settings: Settings, count: int) -> dict[str, Decimal]:
    """`count` rated records on the settings' rated topic; returns each user's provider cost."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    cost_of: dict[str, Decimal] = {}
    for n in range(count):
        user, cost = f"u{n % 7}", Decimal(n + 1) / 1000
        event = build_event("qe", user, "gpt-4o", 10, 2, request_id=f"r{n}", source="test", timestamp=WHEN)
        producer.produce(settings.rated_topic, rated_record(
            event, provider_cost_usd=cost, credits=Decimal(1), credit_rule="tokens", price_version="v", status="applied",
            partition=0, offset=n, processed_at=1.0, placement=Placement("free", WHEN, False)), event.user_key.encode())
        cost_of[user] = cost_of.get(user, Decimal(0)) + cost
    producer.flush(30)
    return cost_of


def sql(settings: Settings, statement: str) -> subprocess.CompletedProcess[str]:
    return cli(settings, "sql", statement, "--format", "json")


def stored(settings: Settings) -> int:
    """Rows in the warehouse, as `meterline sql` counts them from another process."""
    result = sql(settings, "SELECT count() AS n FROM rated_events FINAL")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]["n"]


def post(url: str, body: bytes, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/query", data=body, headers=headers), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_running_sink_answers_sql_and_reports_for_others_read_only_and_behind_the_operator_key(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(chdb_path=tmp_path / "chdb", rated_topic=f"rated-{uuid.uuid4().hex[:8]}")
    ensure_topics(settings)
    cost_of = publish_rated(settings, 300)
    env = child_environment(settings) | {"METERLINE_CHDB_PATH": str(settings.chdb_dir), "METERLINE_SINK_GROUP": settings.sink_group}
    sink = subprocess.Popen([sys.executable, "-m", "meterline.cli", "sink"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: endpoint_file(settings).exists(), timeout=60), "the sink wrote no endpoint file"
        assert endpoint_file(settings).stat().st_mode & 0o077 == 0  # its address is for this user only
        assert wait_for(lambda: stored(settings) == 300, timeout=90)
        result = cli(settings, "report", "distribution", "--org", "qe", "--from", (WHEN - timedelta(days=1)).isoformat(),
                     "--to", (WHEN + timedelta(days=1)).isoformat(), "--format", "json")
        assert result.returncode == 0, result.stderr
        (row,) = json.loads(result.stdout)
        assert row["users"] == 7 and Decimal(row["total_cost_usd"]) == sum(cost_of.values())

        for statement in ("INSERT INTO rated_events (org_id) VALUES ('x')", "DROP TABLE rated_events",
                          "SELECT 1; SELECT 2", "SELECT 1 INTO OUTFILE '/tmp/x'"):
            refused = sql(settings, statement)
            assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert stored(settings) == 300
        too_large = sql(settings, "SELECT number FROM numbers(1000001)")  # past sql.MAX_RESULT_ROWS
        assert too_large.returncode == 2 and "add a LIMIT" in too_large.stderr, too_large.stderr

        url = json.loads(endpoint_file(settings).read_text())["url"]
        key = operator_key(settings.api_secret.get_secret_value())  # type: ignore[union-attr]
        query = json.dumps({"sql": "SELECT count() FROM rated_events"}).encode()
        assert post(url, query, None) == 401 and post(url, query, "mlo_forged") == 401
        assert post(url, json.dumps({"sql": "DROP TABLE rated_events"}).encode(), key) == 403
        assert post(url, b"\xff\xfe not json", key) == 400 and post(url, b'{"sql": 5}', key) == 400
        assert post(url, b"[" * 500_000 + b"]" * 500_000, key) == 400  # nested past any parser's depth
        assert post(url, json.dumps({"sql": "SELECT {d:Decimal(9, 2)}", "parameters": {"d": {"$decimal": [1]}}}).encode(), key) == 400
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        connection.putrequest("POST", "/v1/query")
        connection.putheader("Authorization", f"Bearer {key}")
        connection.putheader("Content-Length", "x")
        connection.endheaders()
        assert connection.getresponse().status == 400
        assert post(url, query, key) == 200
        assert sink.poll() is None  # no request stopped it
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=30)
    assert sink.returncode == 0, sink.stderr.read() if sink.stderr else ""
    assert not endpoint_file(settings).exists()
    assert stored(settings) == 300  # the sink is gone: the directory opens in place again

"""API scoping, the sink's write-then-commit and the dedupe window, on the real broker and chDB."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest

from meterline.auth import operator_key, org_key, user_token
from meterline.client import get_balance
from meterline.producers import Meter
from meterline.sinks import ClickHouseSink, queries
from meterline.sinks.clickhouse_sink import Batch
from tests.integration.pipeline import balances_match, expected_credits, running_pipeline, wait_for


def test_balance_api_is_scoped_to_the_org_and_to_the_user(make_settings):
    settings = make_settings()
    secret = settings.api_secret.get_secret_value()
    with running_pipeline(settings, with_sink=False):
        url = settings.worker_url
        assert get_balance(url, org_key(secret, "acme"), "acme", "u1")["events"] == 0
        later, earlier = int(time.time()) + 3600, int(time.time()) - 1
        assert get_balance(url, user_token(secret, "acme", "u1", later), "acme", "u1")["events"] == 0
        for token, org, user in [
            (org_key(secret, "globex"), "acme", "u1"),  # another org's key
            (user_token(secret, "acme", "u2", later), "acme", "u1"),  # another user's token
            (user_token(secret, "acme", "u1", earlier), "acme", "u1"),  # an expired token
            ("", "acme", "u1"),  # no credentials
        ]:
            with pytest.raises(urllib.error.HTTPError) as raised:
                get_balance(url, token, org, user)
            assert raised.value.code == 401
        # The worker's own counters open with the operator key only.
        for token, status in ((org_key(secret, "acme"), 401), (operator_key(secret), 200)):
            request = urllib.request.Request(f"{url}/v1/worker/stats", headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert status == 200 and set(json.loads(response.read())) >= {"applied", "duplicates"}
            except urllib.error.HTTPError as error:
                assert error.code == status


class FlakyWarehouse:
    """Our own seam: a real Warehouse that fails the first `failures` inserts."""

    def __init__(self, warehouse, failures: int):
        self.warehouse, self.failures, self.attempts = warehouse, failures, 0

    def _attempt(self):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("ClickHouse unreachable")

    def insert_rated_json(self, table, records, dedupe_token):
        self._attempt()
        self.warehouse.insert_rated_json(table, records, dedupe_token)

    def insert_rated(self, table, rows, dedupe_token):
        self._attempt()
        self.warehouse.insert_rated(table, rows, dedupe_token)


def rated_in_stream(pipeline, meter, org, count, users):
    """`count` events sent and counted by the worker (so all are on the rated topic); returns them."""
    events = [meter.build(org, f"u{i % users}", "gpt-4o", i, i) for i in range(count)]
    for event in events:
        meter.send(event)
    meter.flush()
    assert wait_for(balances_match(pipeline, org, expected_credits(events)))
    return events


def test_sink_crash_between_write_and_commit_counts_nothing_twice(make_settings):
    settings = make_settings(sink_batch_size=100_000, sink_batch_seconds=3600)
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        events = rated_in_stream(pipeline, meter, "org-sink", 500, users=7)
        crashed = ClickHouseSink(settings, pipeline.warehouse)
        assert wait_for(lambda: crashed.poll_once(timeout=0.5) >= 0 and len(crashed.batch) >= 500), \
            f"the sink buffered {len(crashed.batch)} of 500 rated records"
        crashed.write()  # rows stored ...
        # ... and the process dies before committing: its buffer is gone, nothing is committed,
        # and (standing in for the session timeout) its group membership ends.
        crashed.batch = Batch()
        crashed.close()
        assert pipeline.warehouse.query(queries.count_distinct_events("org-sink"))[0][0] == 500

        # A new sink re-reads the same batch; ClickHouse is also down for its first two tries.
        flaky = FlakyWarehouse(pipeline.warehouse, failures=2)
        restarted = ClickHouseSink(settings.model_copy(update={"sink_batch_seconds": 0.5}), flaky)  # type: ignore[arg-type]
        stop = threading.Event()
        thread = threading.Thread(target=restarted.run, args=(stop,))
        thread.start()
        try:
            assert wait_for(lambda: flaky.attempts >= 3 and restarted.rows_written >= 500 and not restarted.batch.next_offset)
        finally:
            stop.set()
            thread.join(30)
        assert pipeline.warehouse.query(queries.count_distinct_events("org-sink"))[0][0] == 500
        stored = {u: c for _o, u, c, _n in pipeline.warehouse.query(queries.credits_per_user("org-sink"))}
        assert stored == expected_credits(events)


def test_dedupe_window_is_bounded_and_configurable_and_an_older_copy_is_refused(make_settings):
    settings = make_settings(dedupe_window_seconds=2)
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        first = meter.build("org-window", "u1", "gpt-4o", 1000, 0)
        meter.send(first)
        meter.send(first)  # inside the window: dropped
        meter.flush()
        assert wait_for(balances_match(pipeline, "org-window", {"u1": Decimal(1)}))
        time.sleep(3)
        meter.emit("org-window", "u1", "gpt-4o", 1000, 0)  # a later event lets the worker forget the first id
        meter.flush()
        assert wait_for(balances_match(pipeline, "org-window", {"u1": Decimal(2)}))
        # Past the window the id may be forgotten: the copy, older than the window, is refused
        # (dead-lettered as too late) rather than counted a second time.
        meter.send(first)
        meter.flush()
        assert wait_for(lambda: pipeline.stats()["dead_lettered"] == 1)
        assert pipeline.stats()["remembered_ids"] == 1  # the first id was forgotten, the second is kept
        assert balances_match(pipeline, "org-window", {"u1": Decimal(2)})()


def test_a_sink_stops_promptly_while_clickhouse_is_down_and_a_new_one_stores_everything(make_settings):
    settings = make_settings(sink_batch_seconds=0.2)
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        events = rated_in_stream(pipeline, meter, "org-outage-stop", 300, users=5)
        down = FlakyWarehouse(pipeline.warehouse, failures=10**9)  # ClickHouse never answers this one
        stuck = ClickHouseSink(settings, down)  # type: ignore[arg-type]
        stop = threading.Event()
        thread = threading.Thread(target=stuck.run, args=(stop,))
        thread.start()
        assert wait_for(lambda: down.attempts >= 2, timeout=60)  # it holds a batch it cannot store
        began = time.monotonic()
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the sink did not stop while ClickHouse was down"
        assert time.monotonic() - began < 15
        # Nothing was committed: a sink with ClickHouse back stores every event, once.
        stop = threading.Event()
        thread = threading.Thread(target=ClickHouseSink(settings, pipeline.warehouse).run, args=(stop,))
        thread.start()
        try:
            assert wait_for(lambda: pipeline.warehouse.query(
                queries.count_distinct_events("org-outage-stop"))[0][0] == 300, timeout=60)
        finally:
            stop.set()
            thread.join(30)
        stored = {u: c for _o, u, c, _n in pipeline.warehouse.query(queries.credits_per_user("org-outage-stop"))}
        assert stored == expected_credits(events)


def test_a_sink_replaces_a_consumer_out_of_its_group_and_stores_every_event_once(make_settings):
    """The replacement (sinks/group_watch.py) on the real broker: the new consumer starts from the last
    commit, so what the old one held is stored and what it had stored is not read again."""
    settings = make_settings(sink_batch_size=100_000, sink_batch_seconds=3600)
    org = "org-regroup"
    with running_pipeline(settings, with_sink=False) as pipeline, Meter(settings) as meter:
        sink = ClickHouseSink(settings, pipeline.warehouse)
        stored_first = rated_in_stream(pipeline, meter, org, 200, users=6)
        assert wait_for(lambda: sink.poll_once(timeout=0.5) >= 0 and len(sink.batch) >= 200)
        assert sink.flush()  # stored and committed
        held = [meter.build(org, f"u{i % 6}", "gpt-4o", i, 1) for i in range(150)]
        for event in held:
            meter.send(event)
        meter.flush()
        assert wait_for(balances_match(pipeline, org, expected_credits(stored_first + held)))
        assert wait_for(lambda: sink.poll_once(timeout=0.5) >= 0 and len(sink.batch) >= 150)
        first, watch = sink._consumer, sink._group_watch
        made = watch.steady_at
        # librdkafka's own statistics of this consumer: a steady member, its broker up.
        assert wait_for(lambda: sink.poll_once(timeout=0.5) >= 0 and watch.steady_at > made
                        and watch.broker_up_since is not None, timeout=30)
        assert not watch.stuck(time.monotonic())
        # Out of its group that long (as after the broker restart seen in CI): it is replaced.
        watch.steady_at = watch.broker_up_since = time.monotonic() - settings.sink_stuck_seconds - 1
        sink.poll_once(timeout=0.5)
        assert sink._consumer is not first
        assert wait_for(lambda: sink.poll_once(timeout=0.5) >= 0 and len(sink.batch) >= 150, timeout=60)
        time.sleep(1)
        sink.poll_once(timeout=0.5)
        assert len(sink.batch) == 150, "the new consumer did not start from the last commit"
        assert sink.flush()
        sink.close()
        events = stored_first + held
        assert pipeline.warehouse.query(queries.count_distinct_events(org))[0][0] == len(events)
        stored = {u: c for _o, u, c, _n in pipeline.warehouse.query(queries.credits_per_user(org))}
        assert stored == expected_credits(events)

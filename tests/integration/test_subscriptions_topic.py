"""`meterline subscriptions load` and `show` against the real broker: published once per subscriber, read back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from meterline.cli import main
from meterline.schemas.subscription import Subscription
from meterline.settings import Settings
from meterline.subscriptions import read_topic
from tests.unit.accounts.test_subscriptions_file import TWO_SUBSCRIBERS as FILE



@pytest.fixture
def cli_settings(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = make_settings(subscriptions_topic=f"subs-{uuid.uuid4().hex[:10]}")
    for name, value in {"BOOTSTRAP": settings.kafka_bootstrap, "SUBSCRIPTIONS_TOPIC": settings.subscriptions_topic,
                        "HOME": str(settings.home), "USAGE_TOPIC": settings.usage_topic,
                        "DEAD_LETTER_TOPIC": settings.dead_letter_topic}.items():
        monkeypatch.setenv(f"METERLINE_{name}", value)
    return settings


def records(settings: Settings) -> list[tuple[bytes, bytes]]:
    """Every record of the subscriptions topic, read independently of the code under test."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex}", "enable.auto.commit": False})
    found = []
    try:
        metadata = consumer.list_topics(settings.subscriptions_topic, timeout=10).topics[settings.subscriptions_topic]
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(settings.subscriptions_topic, partition), timeout=10)
            if high > low:
                consumer.assign([TopicPartition(settings.subscriptions_topic, partition, low)])
                while len([r for r in found if r[0] == partition]) < high - low:
                    for message in consumer.consume(100, 5):
                        found.append((partition, message.key(), message.value()))
    finally:
        consumer.close()
    return [(key, value) for _partition, key, value in found]


def test_load_publishes_one_record_per_subscriber_and_show_reads_them(cli_settings: Settings, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(FILE)
    assert main(["subscriptions", "load", str(path)]) == 0
    published = records(cli_settings)
    assert sorted(key for key, _value in published) == [b"acme", b"acme/alice"]
    acme = Subscription.model_validate_json(dict(published)[b"acme"])
    assert acme.stripe_customer_id == "cus_Abc123" and acme.plans == ("pro", "enterprise")
    capsys.readouterr()

    assert main(["subscriptions", "show", "acme", "--user", "bob"]) == 0
    shown = capsys.readouterr().out
    assert "subscriber=acme " in shown and "plan=enterprise" in shown and "applies_to=acme/bob" in shown
    assert main(["subscriptions", "show", "other", "--user", "x"]) == 0
    assert "(none: the default plan)" in capsys.readouterr().out


def test_a_reload_is_idempotent_and_a_dry_run_publishes_nothing(cli_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(FILE)
    assert main(["subscriptions", "load", "--dry-run", str(path)]) == 0
    assert read_topic(cli_settings, []) == {}
    assert main(["subscriptions", "load", str(path)]) == 0
    first = read_topic(cli_settings, [])
    assert main(["subscriptions", "load", str(path)]) == 0
    assert read_topic(cli_settings, []) == first  # the latest record per subscriber is the same history
    assert set(first) == {"acme", "acme/alice"}


def test_a_file_with_problems_publishes_nothing(cli_settings: Settings, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(FILE + "  - org_id: beta\n    plan: gold\n    since: 2026-01-01T00:00:00Z\n")
    assert main(["subscriptions", "load", str(path)]) == 2
    assert "line 12: plan: unknown plan 'gold'" in capsys.readouterr().err
    assert read_topic(cli_settings, []) == {}


def test_show_skips_a_record_that_is_not_a_subscription(cli_settings: Settings, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(FILE)
    assert main(["subscriptions", "load", str(path)]) == 0
    producer = Producer({"bootstrap.servers": cli_settings.kafka_bootstrap})
    producer.produce(cli_settings.subscriptions_topic, b"\xff not json", b"acme/mallory")
    producer.flush(10)
    capsys.readouterr()
    assert main(["subscriptions", "show", "acme"]) == 0
    out = capsys.readouterr().out
    assert "subscriber=acme/alice" in out and "skipped a record that is not a subscription" in out

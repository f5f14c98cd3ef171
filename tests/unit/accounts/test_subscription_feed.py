"""What the worker's subscriptions feed keeps from each record (meterline/subscriptions.py), with fake messages."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from meterline.pricing.catalogue import default_catalogue
from meterline.schemas.subscription import Subscription
from meterline.settings import Settings
from meterline.subscriptions import SubscriptionFeed

PRO = Subscription(org_id="acme", user_id="alice", plan="pro", since=datetime(2026, 1, 1, tzinfo=timezone.utc))


class Message:
    def __init__(self, key: bytes | None, value: bytes | None, offset: int = 0):
        self._key, self._value, self._offset = key, value, offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def feed(tmp_path: Path) -> SubscriptionFeed:
    return SubscriptionFeed(Settings(home=tmp_path, bootstrap="127.0.0.1:1"), default_catalogue())


def test_the_latest_record_of_a_subscriber_wins_and_a_tombstone_removes_it(tmp_path: Path) -> None:
    subscriptions = feed(tmp_path)
    enterprise = PRO.model_copy(update={"plan": "enterprise"})
    subscriptions._take(Message(b"acme/alice", PRO.to_json()))
    subscriptions._take(Message(b"acme/alice", enterprise.to_json(), 1))
    assert subscriptions.latest == {"acme/alice": enterprise}
    subscriptions._take(Message(b"acme/alice", None, 2))
    assert subscriptions.latest == {}
    subscriptions.close()


def test_a_record_that_is_not_usable_is_named_and_the_previous_one_stays(tmp_path: Path) -> None:
    subscriptions = feed(tmp_path)
    subscriptions._take(Message(b"acme/alice", PRO.to_json()))
    unknown_plan = PRO.to_json().replace(b'"pro"', b'"platinum"')
    for offset, value in enumerate((b"\xff\xfe not json", b"[]", unknown_plan), start=1):
        subscriptions._take(Message(b"acme/alice", value, offset))
    assert subscriptions.latest == {"acme/alice": PRO}
    assert [where.split(" (")[0] for where in subscriptions.unreadable] == [
        "partition 0 offset 1", "partition 0 offset 2", "partition 0 offset 3"]
    assert "unknown plan 'platinum'" in subscriptions.unreadable[2]
    subscriptions.close()

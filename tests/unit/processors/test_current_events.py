"""The checks the engine makes on each event it takes from Faust's channel in bulk (processors/app.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types.tuples import ConsumerMessage, Message

from meterline.processors.app import current_events

GENERATION = 7


def fake_app(active: bool = True) -> tuple[Any, list[Message]]:
    """An app with Faust's flow control, the consumer's generation and its tracking; what it tracked."""
    tracked: list[Message] = []
    app = SimpleNamespace(flow_control=SimpleNamespace(is_active=lambda: active), consumer_generation_id=GENERATION,
                          consumer=SimpleNamespace(track_message=tracked.append))
    return app, tracked


def event(offset: int, generation: int = GENERATION) -> Any:
    """An event around a message as the Kafka consumer makes it (Faust tracks those), as the conductor puts it on the channel."""
    message = ConsumerMessage("usage", 0, offset, 0.0, 0, None, b"org/user", b"{}", None, generation_id=generation)
    return SimpleNamespace(message=message)


def test_events_of_this_generation_are_applied_in_order_and_tracked_once() -> None:
    app, tracked = fake_app()
    events = [event(offset) for offset in range(5)]
    current, stale = current_events(events, app)
    assert current == events and stale == []
    assert tracked == [e.message for e in events]
    again, _ = current_events(events[:2], app)  # taken again (never by Faust): applied, not tracked twice
    assert again == events[:2] and len(tracked) == 5


def test_events_fetched_before_a_rebalance_are_acknowledged_unapplied_and_untracked() -> None:
    app, tracked = fake_app()
    old, new = [event(0, GENERATION - 1), event(1, GENERATION - 1)], [event(2), event(3)]
    current, stale = current_events([old[0], new[0], old[1], new[1]], app)
    assert current == new and stale == old
    assert tracked == [e.message for e in new]


def test_nothing_is_applied_while_flow_control_is_suspended_for_a_rebalance() -> None:
    app, tracked = fake_app(active=False)
    events = [event(0), event(1)]
    assert current_events(events, app) == ([], events)
    assert tracked == [] and not any(e.message.tracked for e in events)

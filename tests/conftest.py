"""Shared fixtures: one real Kafka broker and one chDB directory per test session.

Each test that needs the pipeline gets its own topics, consumer groups and worker
port (factory fixtures), so tests never see each other's events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meterline.settings import Settings
from meterline.stack import free_port, stack_down, stack_up

__all__ = ["free_port"]  # tests import it from here


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("meterline-home")


@pytest.fixture(scope="session")
def broker_settings(session_home: Path) -> Iterator[Settings]:
    """A real single-node KRaft broker on free loopback ports, for the whole session."""
    settings = Settings(
        home=session_home,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        partitions=4,
        # Most tests start one consumer per new group: none waits for others to join.
        kafka_initial_rebalance_delay_ms=0,
        chdb_path=session_home / "chdb",  # chDB opens one data directory per process: keep it fixed
        api_secret="test-secret-not-for-production",  # type: ignore[arg-type]
    )
    stack_up(settings)
    yield settings
    stack_down(settings)


@pytest.fixture
def make_settings(broker_settings: Settings) -> Callable[..., Settings]:
    """Settings with unique topics, groups and worker port; chDB shared by the session."""

    def build(**overrides: object) -> Settings:
        run = uuid.uuid4().hex[:10]
        values: dict[str, object] = {
            "usage_topic": f"usage-{run}",
            "dead_letter_topic": f"dlq-{run}",
            "subscriptions_topic": f"subscriptions-{run}",
            "key_revocations_topic": f"revocations-{run}",
            "alerts_topic": f"alerts-{run}",
            "pool_usage_topic": f"pool-usage-{run}",
            "price_books_topic": f"price-books-{run}",
            "decisions_topic": f"decisions-{run}",
            "app_id": f"processor-{run}",
            "sink_group": f"sink-{run}",
            "worker_port": free_port(),
            "home": broker_settings.home / run,
            "sink_batch_seconds": 0.2,
            # Faust's recovery and rebalance steps are logged at info: what a failure's message needs.
            "worker_log_level": "info",
        }
        values.update(overrides)
        settings = broker_settings.model_copy(update=values)
        settings.home.mkdir(parents=True, exist_ok=True)
        return settings

    return build

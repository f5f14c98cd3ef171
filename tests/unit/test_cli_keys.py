"""`meterline keys` accepts exactly the org and user ids that events accept."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.cli import _keys
from meterline.exceptions import MeterlineError
from meterline.producers import build_event
from meterline.schemas import InvalidEventError
from meterline.settings import Settings

ids = st.one_of(st.text(max_size=8), st.sampled_from(["u-1", "   ", "u\x01", "a/b", "u\n", "\x85", "é", "u" * 257]))


def keys_accept(tmp: Path, org: str, user: str) -> bool:
    config = Settings(home=tmp, api_secret="unit-test-secret")  # type: ignore[arg-type]
    try:
        _keys(config, argparse.Namespace(org=org, user=user, operator=False, webhook=False, ttl=None, revoke=False, reason=None))
    except MeterlineError:
        return False
    return True


def events_accept(org: str, user: str) -> bool:
    try:
        build_event(org, user, "gpt-4o", 1, 1)
    except InvalidEventError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(org=ids, user=ids)
def test_keys_and_events_accept_the_same_ids(tmp_path_factory: pytest.TempPathFactory, org: str, user: str) -> None:
    assert keys_accept(tmp_path_factory.getbasetemp(), org, user) == events_accept(org, user)

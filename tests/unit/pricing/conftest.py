"""Fixtures for the pricing tests: the shipped catalogue, small YAML files, usage events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterline.pricing.catalogue import Catalogue, default_catalogue
from meterline.schemas import UsageEvent

SMALL_PRICES = """
version: 1
models:
  cheap:
    input_per_1k: 0.001
    output_per_1k: 0.002
  dear:
    input_per_1k: 0.01
    output_per_1k: 0.03
    cached_input_per_1k: 0.005
    aliases: [dear-2025]
"""

SMALL_PLANS = """
version: 1
credits:
  per_1k_tokens: 1
  actions:
    simple: {credits: 1, typical: {input_tokens: 1000, output_tokens: 0}}
plans:
  basic:
    name: Basic
    price: 10
    included_credits: 50
    overage: {mode: charge, price_per_credit: 0.25}
    limits: {concurrent_requests: 3, requests_per_minute: 30}
    degradation: {dear: cheap}
"""


@pytest.fixture
def catalogue() -> Catalogue:
    return default_catalogue()


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write `text` to a file called `name` in the test's directory and return its path."""

    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write_file


def edit(text: str, change: Callable[[dict[str, Any]], None]) -> str:
    """Load YAML, apply `change` to it, dump it back (floats stay as text via str values)."""
    data = yaml.safe_load(text)
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def make_event(model: str = "gpt-4o", input_tokens: int = 1000, output_tokens: int = 0, *, cached: int = 0,
               action: str | None = None, cost_usd: Decimal | None = None) -> UsageEvent:
    data: dict[str, Any] = {"org_id": "acme", "user_id": "u1", "model": model, "input_tokens": input_tokens,
                            "output_tokens": output_tokens, "cached_input_tokens": cached}
    if action is not None:
        data["action"] = action
    if cost_usd is not None:
        data["cost_usd"] = cost_usd
    return UsageEvent(id="req-1", source="test", subject="u1", time=datetime(2025, 1, 1, tzinfo=timezone.utc), data=data)

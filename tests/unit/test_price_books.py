"""The price books feed: a published catalogue reads back as the rater it was, and nothing else reads as one."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from meterline.feeds import UnusableRecord
from meterline.price_books import PRICE_BOOK_TYPE, PriceBookFeed, price_book_record
from meterline.pricing.catalogue import catalogue_version
from meterline.pricing.config import default_path
from meterline.producers import build_event
from meterline.settings import Settings


def feed() -> PriceBookFeed:
    return PriceBookFeed(Settings(bootstrap="127.0.0.1:1"))


def test_a_published_price_book_rates_as_the_files_it_came_from(tmp_path: Path) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(default_path("plans.yaml").read_text().replace("per_1k_tokens: 1\n", "per_1k_tokens: 4\n"))
    settings = Settings(bootstrap="127.0.0.1:1", plans=plans)
    version, record = price_book_record(settings)
    assert version == catalogue_version(None, plans)  # the version every rated row names
    rater = feed().parse(version, record)
    event = build_event("acme", "u", "gpt-4o-mini", 1500, 500)
    assert rater.rate(event).credits == Decimal(8)  # 2,000 tokens at 4 credits per 1,000


@pytest.mark.parametrize("value", [
    b"", b"\xff", b"[]", b"{}",
    orjson.dumps({"type": "dev.meterline.grant.v1", "prices": "", "plans": ""}),
    orjson.dumps({"type": PRICE_BOOK_TYPE, "prices": 1, "plans": 2}),
])
def test_a_record_that_is_not_a_price_book_is_unusable(value: bytes) -> None:
    with pytest.raises(UnusableRecord):
        feed().parse("0123456789ab", value)


def test_a_price_book_under_another_versions_key_is_unusable() -> None:
    _version, record = price_book_record(Settings(bootstrap="127.0.0.1:1"))
    with pytest.raises(UnusableRecord, match="not the price book version"):
        feed().parse("0123456789ab", record)


def test_a_price_book_that_does_not_load_is_unusable_and_says_why() -> None:
    from meterline.pricing.catalogue import version_of

    prices, plans = b"version: 1\nmodels: {}\n", b"not: [valid"
    record = orjson.dumps({"type": PRICE_BOOK_TYPE, "prices": prices.decode(), "plans": plans.decode()})
    with pytest.raises(UnusableRecord, match="does not load here"):
        feed().parse(version_of(prices, plans), record)

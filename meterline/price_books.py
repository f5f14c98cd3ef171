"""Every price book a worker has rated with, on a compacted topic keyed by its version.

A worker publishes its own catalogue (the price book and plans files, as text) when it starts.
A correction of an event rated under an earlier version rates that version with the catalogue it
names, read back from here, so a price-book change between an event and its correction cannot
make the correction take back another amount than the one charged (processors/README.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson

from meterline.feeds import CompactedFeed, UnusableRecord
from meterline.pricing import ConfigError, Rater
from meterline.pricing.catalogue import load_catalogue, version_of
from meterline.pricing.config import default_path
from meterline.settings import Settings

PRICE_BOOK_TYPE = "dev.meterline.price_book.v1"


def price_book_record(settings: Settings) -> tuple[str, bytes]:
    """This configuration's version, and its record."""
    prices = (settings.prices or default_path("prices.yaml")).read_bytes()
    plans = (settings.plans or default_path("plans.yaml")).read_bytes()
    version = version_of(prices, plans)
    return version, orjson.dumps({"type": PRICE_BOOK_TYPE, "version": version, "prices": prices.decode(), "plans": plans.decode()})


def publish(settings: Settings, version: str, record: bytes) -> None:
    """Publish a price book record from `price_book_record` (the same version again is the same record)."""
    from meterline.stack import produce_and_wait

    produce_and_wait(settings, settings.price_books_topic, [(version.encode(), record)])


class PriceBookFeed(CompactedFeed[Rater]):
    """A rater for each price book version published."""

    def __init__(self, settings: Settings):
        super().__init__(settings.kafka_bootstrap, settings.price_books_topic)

    def parse(self, key: str, value: bytes) -> Rater:
        try:
            record = orjson.loads(value)
            prices, plans = record["prices"].encode(), record["plans"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UnusableRecord("not a price book") from None
        if record.get("type") != PRICE_BOOK_TYPE or version_of(prices, plans) != key:
            raise UnusableRecord(f"not the price book version {key!r}")
        with tempfile.TemporaryDirectory(prefix="meterline-price-book-") as directory:
            (Path(directory) / "prices.yaml").write_bytes(prices)
            (Path(directory) / "plans.yaml").write_bytes(plans)
            try:
                return Rater.from_catalogue(load_catalogue(Path(directory) / "prices.yaml", Path(directory) / "plans.yaml"))
            except ConfigError as error:  # valid for the worker that published it, not for this code
                raise UnusableRecord(f"price book {key} does not load here: {error}") from None

"""The price book and the plan catalogue, loaded and checked against each other."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from meterline.pricing.config import default_path, load_cached, read_yaml, validate
from meterline.pricing.exceptions import ConfigError
from meterline.pricing.plans import CreditRules, Plan, PlanFile
from meterline.pricing.price_book import PriceBook, load_price_book


@dataclass(frozen=True)
class Catalogue:
    """Everything priced: provider costs (`prices`) and what we charge (`plan_file`)."""

    prices: PriceBook
    plan_file: PlanFile

    @property
    def credits(self) -> CreditRules:
        return self.plan_file.credits

    @property
    def plans(self) -> dict[str, Plan]:
        return self.plan_file.plans

    def plan(self, plan_id: str) -> Plan:
        """The plan called `plan_id`, or `UnknownPlanError`."""
        return self.plan_file.plan(plan_id)


def parse_plans(data: object, source: str, prices: PriceBook) -> PlanFile:
    """Validate parsed YAML as a plans file against `prices`; every problem is reported at once."""
    plan_file = validate(PlanFile, data, source)
    if problems := plan_file.problems(prices):
        raise ConfigError(source, problems)
    return plan_file


def load_catalogue(prices: Path | None = None, plans: Path | None = None, cache_dir: Path | None = None) -> Catalogue:
    """Load both files; `None` means the shipped default for that file (`cache_dir`: see `config.load_cached`)."""
    book = load_price_book(prices, cache_dir)
    plans_path = plans or default_path("plans.yaml")
    # The plans are checked against the book: a cached plan file holds for that book file only.
    plan_file = load_cached(plans_path, PlanFile, cache_dir, lambda: parse_plans(read_yaml(plans_path), str(plans_path), book),
                            inputs=(prices or default_path("prices.yaml"),))
    return Catalogue(book, plan_file)


@lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The shipped defaults, loaded once per process."""
    return load_catalogue()


def catalogue_version(prices: Path | None = None, plans: Path | None = None) -> str:
    """A short digest of both files' bytes: every rated event names the price book that rated it."""
    return version_of((prices or default_path("prices.yaml")).read_bytes(), (plans or default_path("plans.yaml")).read_bytes())


def version_of(prices: bytes, plans: bytes) -> str:
    """The version of a price book file and a plans file with these bytes."""
    return hashlib.sha256(prices + plans).hexdigest()[:12]

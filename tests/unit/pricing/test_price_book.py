"""Price book: exact costs per call, aliases, the default model, and file errors with paths."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.pricing.exceptions import ConfigError, InvalidUsageError, UnknownModelError
from meterline.pricing.price_book import load_price_book, price_book_from_text
from tests.unit.pricing.conftest import SMALL_PRICES, edit

D = Decimal


@pytest.mark.parametrize(
    ("model", "input_tokens", "output_tokens", "cached", "expected"),
    [
        # dear: 0.01 in, 0.005 cached in, 0.03 out, per 1,000 tokens.
        ("dear", 1000, 0, 0, D("0.01")),
        ("dear", 0, 1000, 0, D("0.03")),
        ("dear", 1000, 1000, 1000, D("0.035")),  # all input cached: 0.005 + 0.03
        ("dear", 2000, 500, 500, D("0.0325")),  # 1500 x 0.00001 + 500 x 0.000005 + 500 x 0.00003
        ("dear", 1, 1, 0, D("0.00004")),
        ("dear-2025", 1000, 0, 0, D("0.01")),  # alias
        # cheap has no cached price: cached input costs as input.
        ("cheap", 1000, 1000, 600, D("0.003")),
        ("cheap", 0, 0, 0, D("0")),
        ("cheap", 3, 7, 0, D("0.000017")),  # 3 x 0.000001 + 7 x 0.000002
    ],
)
def test_cost_of_one_call(model: str, input_tokens: int, output_tokens: int, cached: int, expected: Decimal) -> None:
    book = price_book_from_text(SMALL_PRICES)
    assert book.price_of(model).cost(input_tokens, output_tokens, cached) == expected


def test_prices_are_exact_decimals_not_floats() -> None:
    book = price_book_from_text(SMALL_PRICES)
    assert book.models["cheap"].input_per_1k == D("0.001")
    assert str(book.models["dear"].cached_input_per_1k) == "0.005"  # not 0.005000000000000000104...


def test_unknown_model_names_the_model() -> None:
    book = price_book_from_text(SMALL_PRICES)
    with pytest.raises(UnknownModelError) as caught:
        book.price_of("gpt-9")
    assert caught.value.model == "gpt-9"
    assert "gpt-9" in str(caught.value)


def test_default_model_prices_unknown_models() -> None:
    book = price_book_from_text(SMALL_PRICES + "default_model: cheap\n")
    assert book.resolve("gpt-9") == "cheap"
    assert not book.knows("gpt-9")


def test_more_cached_than_input_is_refused() -> None:
    book = price_book_from_text(SMALL_PRICES)
    with pytest.raises(InvalidUsageError) as caught:
        book.price_of("dear").cost(100, 0, 101)
    assert caught.value.field == "cached_input_tokens"


def test_shipped_defaults_load_with_common_models() -> None:
    book = load_price_book()
    for model in ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4", "claude-opus-4", "gemini-2.5-flash"):
        assert book.knows(model)
    assert book.default_model is None  # unknown models are an error out of the box
    assert book.price_of("claude-sonnet-4").cost(1000, 0) == D("0.003")
    assert book.price_of("gpt-4o").cost(1_000_000, 1_000_000) == D("12.5")  # $2.50 + $10 per million


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["models"]["cheap"].update(input_per_1k="-0.1"), "models.cheap.input_per_1k: must be >= 0"),
        (lambda d: d["models"]["cheap"].update(output_per_1k="lots"), "models.cheap.output_per_1k: must be a number"),
        (lambda d: d["models"]["cheap"].pop("input_per_1k"), "models.cheap.input_per_1k: is required"),
        (lambda d: d["models"]["cheap"].update(input_per_1K="0.1"), "models.cheap.input_per_1K: unknown key"),
        (lambda d: d.update(default_model="nope"), "default_model: 'nope' is not in models"),
        (lambda d: d["models"]["cheap"].update(aliases=["dear"]), "models.cheap.aliases[0]: 'dear' is already a model name"),
        (lambda d: d["models"]["cheap"].update(aliases=["dear-2025"]), "models.dear.aliases[0]: 'dear-2025' is already an alias of 'cheap'"),
        (lambda d: d.update(models={}), "models: "),
    ],
)
def test_bad_price_book_names_the_key(change: Callable[[dict], None], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        price_book_from_text(edit(SMALL_PRICES, change), "prices.yaml")
    assert any(str(problem).startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    def two_mistakes(data: dict) -> None:
        data["models"]["cheap"]["input_per_1k"] = "-1"
        data["models"]["dear"]["output_per_1k"] = "-2"

    with pytest.raises(ConfigError) as caught:
        price_book_from_text(edit(SMALL_PRICES, two_mistakes))
    assert {p.path for p in caught.value.problems} == {"models.cheap.input_per_1k", "models.dear.output_per_1k"}


@pytest.mark.parametrize("text", ["models: [unclosed", "", "models:\n  x: {input_per_1k: .inf, output_per_1k: 1}"])
def test_unreadable_files_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        price_book_from_text(text)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_price_book(tmp_path / "absent.yaml")


def test_a_cached_book_is_the_same_book_and_skips_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meterline.pricing import price_book

    source = tmp_path / "prices.yaml"
    source.write_text(SMALL_PRICES)
    cache = tmp_path / "cache"
    first = price_book.load_price_book(source, cache)
    assert len(list((cache / "pricing").iterdir())) == 1

    def no_yaml(_path: Path) -> None:
        raise AssertionError("parsed the YAML again")

    monkeypatch.setattr(price_book, "read_yaml", no_yaml)
    assert price_book.load_price_book(source, cache) == first
    monkeypatch.undo()
    # An edited file is read again; a damaged cache entry is ignored.
    source.write_text(SMALL_PRICES.replace("0.001", "0.004"))
    assert price_book.load_price_book(source, cache).price_of("cheap").input_per_1k == Decimal("0.004")
    for entry in (cache / "pricing").iterdir():
        entry.write_text("{not json")
    assert price_book.load_price_book(source, cache).price_of("cheap").input_per_1k == Decimal("0.004")


def test_an_invalid_book_is_never_cached(tmp_path: Path) -> None:
    source = tmp_path / "prices.yaml"
    source.write_text("version: 1\nmodels:\n  x: {input_per_1k: -1, output_per_1k: 0}\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="models.x.input_per_1k"):
            load_price_book(source, tmp_path / "cache")
    assert not (tmp_path / "cache" / "pricing").exists()

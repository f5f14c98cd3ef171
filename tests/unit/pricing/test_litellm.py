"""Importing LiteLLM's price map: exact per-1,000 prices, skipped entries, a loadable price book."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.pricing.exceptions import ConfigError
from meterline.pricing.catalogue import load_catalogue
from meterline.pricing.litellm import LiteLLMImport, base_name, convert_litellm, parse_litellm
from meterline.pricing.price_book import price_book_from_text

D = Decimal

# The shape of model_prices_and_context_window.json, a few entries of each kind.
SAMPLE = """{
  "sample_spec": {"max_tokens": "set to max_output_tokens", "input_cost_per_token": 0.0,
                  "output_cost_per_token": 0.0, "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
                  "mode": "one of: chat, embedding, completion, image_generation"},
  "gpt-4o": {"max_tokens": 16384, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
             "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai", "mode": "chat"},
  "claude-sonnet-4-20250514": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
             "cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07,
             "litellm_provider": "anthropic", "mode": "chat"},
  "gpt-3.5-turbo-instruct": {"input_cost_per_token": 0.0000015, "output_cost_per_token": 0.000002,
             "litellm_provider": "text-completion-openai", "mode": "completion"},
  "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
             "litellm_provider": "openai", "mode": "embedding"},
  "dall-e-3": {"input_cost_per_pixel": 1e-08, "litellm_provider": "openai", "mode": "image_generation"},
  "ollama/llama3": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "litellm_provider": "ollama", "mode": "chat"},
  "mystery-chat": {"litellm_provider": "openai", "mode": "chat"}
}"""


def test_converts_per_token_to_per_1k_exactly() -> None:
    result = convert_litellm(parse_litellm(SAMPLE))
    book = price_book_from_text(result.yaml_text)
    gpt = book.models["gpt-4o"]
    assert (gpt.input_per_1k, gpt.cached_input_per_1k, gpt.output_per_1k) == (D("0.0025"), D("0.00125"), D("0.01"))
    claude = book.models["claude-sonnet-4-20250514"]
    assert (claude.input_per_1k, claude.cached_input_per_1k, claude.output_per_1k) == (D("0.003"), D("0.0003"), D("0.015"))
    assert book.models["gpt-3.5-turbo-instruct"].cached_input_per_1k is None
    assert book.models["ollama/llama3"].input_per_1k == 0
    assert claude.provider == "anthropic"


def test_written_yaml_has_no_floats_or_exponents() -> None:
    text = convert_litellm(parse_litellm(SAMPLE)).yaml_text
    assert re.search(r"\d[eE][-+]?\d", text) is None and "0.0025" in text


def test_skips_sample_spec_and_non_token_entries() -> None:
    result = convert_litellm(parse_litellm(SAMPLE))
    assert result.models == 4
    assert result.skipped == {"text-embedding-3-small": "mode embedding", "dall-e-3": "mode image_generation",
                              "mystery-chat": "not priced per input and output token"}


def test_filters() -> None:
    result = convert_litellm(parse_litellm(SAMPLE), modes={"chat"}, providers={"openai"})
    assert list(price_book_from_text(result.yaml_text).models) == ["gpt-4o"]


def test_a_million_tokens_cost_what_litellm_says() -> None:
    data = parse_litellm(SAMPLE)
    book = price_book_from_text(convert_litellm(data).yaml_text)
    per_token = data["gpt-4o"]
    expected = 1_000_000 * per_token["input_cost_per_token"] + 1_000_000 * per_token["output_cost_per_token"]
    assert book.price_of("gpt-4o").cost(1_000_000, 1_000_000) == expected == D("12.5")


@pytest.mark.parametrize(
    ("text", "reason"),
    [("[1, 2]", "must be a JSON object"), ("{not json", "not valid JSON"),
     (json.dumps({"x": {"input_cost_per_token": -1, "output_cost_per_token": 0}}), "negative"),
     (json.dumps({"x": {"input_cost_per_token": "1", "output_cost_per_token": 0}}), "not a number"),
     (json.dumps({"sample_spec": {}}), "no model is priced")],
)
def test_bad_input(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        convert_litellm(parse_litellm(text))


@pytest.mark.parametrize(("name", "base"), [
    ("claude-opus-4-20250514", "claude-opus-4"),
    ("anthropic.claude-opus-4-20250514-v1:0", "claude-opus-4"),
    ("bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("vertex_ai/claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
    ("azure/eu/gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4.1", "gpt-4.1"),  # a version with a dot is no prefix
    ("gemini-2.5-pro", "gemini-2.5-pro"),
])
def test_base_names_drop_provider_paths_prefixes_versions_and_dates(name: str, base: str) -> None:
    assert base_name(name) == base


# LiteLLM's real map, unchanged (tests/data/litellm/README.md says where it comes from).
REAL_MAP = Path(__file__).resolve().parents[2] / "data" / "litellm" / "model_prices_and_context_window.json"


@pytest.fixture(scope="module")
def real_import() -> tuple[dict, LiteLLMImport]:
    data = parse_litellm(REAL_MAP.read_bytes(), REAL_MAP.name)
    return data, convert_litellm(data, source=REAL_MAP.name)


def test_the_shipped_plans_work_with_the_whole_real_map(real_import: tuple[dict, LiteLLMImport],
                                                        tmp_path: Path) -> None:
    data, result = real_import
    prices = tmp_path / "prices.yaml"
    prices.write_text(result.yaml_text, encoding="utf-8")
    catalogue = load_catalogue(prices)  # raised 15 errors before: the plans' undated names were unknown
    book = catalogue.prices
    for name in ("claude-opus-4", "claude-sonnet-4", "claude-3-5-haiku"):
        owner = book.resolve(name)
        assert base_name(owner) == name and owner in data
    # An undated name is priced as the entry it stands for, at LiteLLM's own prices.
    opus = data[book.resolve("claude-opus-4")]
    assert book.price_of("claude-opus-4").input_per_1k == opus["input_cost_per_token"] * 1000


def test_every_chat_model_costs_what_litellms_per_token_rule_says(real_import: tuple[dict, LiteLLMImport]) -> None:
    data, result = real_import
    book = price_book_from_text(result.yaml_text)
    chat = {name: entry for name, entry in data.items() if isinstance(entry, dict) and entry.get("mode", "chat") == "chat"
            and entry.get("input_cost_per_token") is not None and entry.get("output_cost_per_token") is not None}
    assert len(chat) > 2000
    calls = ((120_000, 30_000, 4_000), (1, 0, 0), (0, 0, 1), (777, 333, 777))  # (input, cached, output)
    rounded = 0
    for name, entry in chat.items():
        for input_tokens, cached, output_tokens in calls:
            cache_rate = entry.get("cache_read_input_token_cost")
            cache_rate = entry["input_cost_per_token"] if cache_rate is None else cache_rate
            litellm = ((input_tokens - cached) * entry["input_cost_per_token"] + cached * cache_rate
                       + output_tokens * entry["output_cost_per_token"])
            ours = book.price_of(name).cost(input_tokens, output_tokens, cached)
            # Exact, but for prices past 12 decimals per 1,000 tokens: each is rounded by at most
            # half a unit of 10^-15 per token.
            bound = Decimal("0.5e-15") * (input_tokens + output_tokens)
            assert abs(ours - litellm) <= bound, name
            rounded += ours != litellm
    assert 0 < rounded <= len(calls) * result.rounded_prices

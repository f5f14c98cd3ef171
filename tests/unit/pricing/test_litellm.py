"""Importing LiteLLM's price map: exact per-1,000 prices, skipped entries, a loadable price book."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from meterline.pricing.exceptions import ConfigError
from meterline.pricing.litellm import convert_litellm, parse_litellm
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

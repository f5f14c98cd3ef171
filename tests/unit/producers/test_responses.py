"""Token counts from OpenAI and Anthropic responses, as SDK-like objects and as dicts."""

from __future__ import annotations

from types import SimpleNamespace as Obj
from typing import Any

import pytest

from meterline.producers.responses import CACHE_WRITE_KEY, usage_from_response
from meterline.schemas import InvalidEventError

OPENAI_CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
    "usage": {"prompt_tokens": 1200, "completion_tokens": 340, "total_tokens": 1540,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}
OPENAI_RESPONSES = {
    "id": "resp_1", "object": "response", "model": "gpt-4.1",
    "usage": {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 512}, "output_tokens": 80,
              "output_tokens_details": {"reasoning_tokens": 30}, "total_tokens": 980},
}
ANTHROPIC = {
    "id": "msg_1", "type": "message", "model": "claude-sonnet-4-5",
    "usage": {"input_tokens": 50, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300,
              "output_tokens": 120},
}


def as_object(value: Any) -> Any:
    """The SDKs' response objects are attribute-access models; this mimics them without the SDKs."""
    if isinstance(value, dict):
        return Obj(**{key: as_object(item) for key, item in value.items()})
    return value


# (response, provider, model, input_tokens, cached_input_tokens, output_tokens) - worked out by hand
CASES = [
    (OPENAI_CHAT, "openai.chat", "gpt-4o-2024-08-06", 1200, 1024, 340),
    (OPENAI_RESPONSES, "openai.responses", "gpt-4.1", 900, 512, 80),
    (ANTHROPIC, "anthropic", "claude-sonnet-4-5", 50 + 2000 + 300, 2000, 120),
]


@pytest.mark.parametrize("shape", ["dict", "object"])
@pytest.mark.parametrize(("response", "provider", "model", "inp", "cached", "out"), CASES,
                         ids=[case[1] for case in CASES])
def test_usage_maps_to_our_fields(shape, response, provider, model, inp, cached, out) -> None:
    usage = usage_from_response(response if shape == "dict" else as_object(response))
    assert (usage.provider, usage.model, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (
        provider, model, inp, cached, out)


def test_anthropic_cache_writes_are_input_and_noted_in_metadata() -> None:
    usage = usage_from_response(ANTHROPIC)
    assert usage.cache_creation_input_tokens == 300
    assert usage.metadata == {CACHE_WRITE_KEY: "300"}


def test_null_cache_fields_as_the_anthropic_sdk_sends_them() -> None:
    response = as_object({"model": "claude-haiku-4-5", "usage": {
        "input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": None, "cache_creation_input_tokens": None}})
    usage = usage_from_response(response)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.metadata) == (10, 0, 3, {})


def test_openai_chat_without_details_has_no_cached_tokens() -> None:
    usage = usage_from_response({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (7, 0, 2)


def test_the_usage_part_alone_is_accepted() -> None:
    usage = usage_from_response(OPENAI_CHAT["usage"])
    assert (usage.model, usage.input_tokens) == (None, 1200)


@pytest.mark.parametrize(("response", "field"), [
    ({"model": "gpt-4o", "choices": []}, "response.usage"),
    ({"usage": {"prompt_tokens": -1, "completion_tokens": 2}}, "response.usage.prompt_tokens"),
    ({"usage": {"prompt_tokens": 3, "completion_tokens": "2"}}, "response.usage.completion_tokens"),
    ({"usage": {"input_tokens": 3}}, "response.usage.output_tokens"),
    ({"usage": {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9}}},
     "response.usage"),
])
def test_bad_usage_names_the_field(response: dict, field: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        usage_from_response(response)
    assert field in caught.value.fields

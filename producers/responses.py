"""Usage from OpenAI and Anthropic responses, objects or dicts, without importing their SDKs.

How provider counts map to our fields (`input_tokens` is ALL input the model read, cached or
not; `cached_input_tokens` is the part of it read from the provider's prompt cache, so
``cached_input_tokens <= input_tokens`` always):

| provider, API | input_tokens | cached_input_tokens | output_tokens |
| --- | --- | --- | --- |
| OpenAI Chat Completions | `prompt_tokens` | `prompt_tokens_details.cached_tokens` | `completion_tokens` |
| OpenAI Responses | `input_tokens` | `input_tokens_details.cached_tokens` | `output_tokens` |
| Anthropic Messages | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` | `cache_read_input_tokens` | `output_tokens` |

OpenAI's prompt counts already include cached tokens, and its output counts include reasoning
tokens. Anthropic's `input_tokens` counts only the uncached part after the last cache
breakpoint, so we add both cache counts back. Cache writes (`cache_creation_input_tokens`) are
uncached input to us, priced at the input rate. Anthropic prices them higher; the price book
has no cache-write price yet, so their count is kept in the event's metadata under
``anthropic.cache_creation_input_tokens`` for whoever needs it (the warehouse stores it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meterline.schemas import FieldProblem, InvalidEventError

Provider = Literal["openai.chat", "openai.responses", "anthropic"]
CACHE_WRITE_KEY = "anthropic.cache_creation_input_tokens"


@dataclass(frozen=True)
class ResponseUsage:
    """Token counts read from one provider response, already mapped to our fields."""

    provider: Provider
    model: str | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def metadata(self) -> dict[str, str]:
        """What the event's metadata should carry beyond the counts (Anthropic cache writes)."""
        if self.cache_creation_input_tokens:
            return {CACHE_WRITE_KEY: str(self.cache_creation_input_tokens)}
        return {}


def _get(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


class _Reader:
    """Reads counts, collecting every problem with its path (e.g. response.usage.prompt_tokens)."""

    def __init__(self, usage: Any):
        self.usage = usage
        self.problems: list[FieldProblem] = []

    def count(self, *path: str, required: bool = True) -> int:
        value = self.usage
        for name in path:
            value = None if value is None else _get(value, name)
        if value is None and not required:
            return 0  # an optional detail the provider left out or set to null
        if type(value) is not int or value < 0:
            rule = "is missing" if value is None else f"must be a non-negative integer, got {value!r}"
            self.problems.append(FieldProblem("response.usage." + ".".join(path), rule))
            return 0
        return value


def usage_from_response(response: Any) -> ResponseUsage:
    """Read the usage of an OpenAI (Chat Completions or Responses) or Anthropic response.

    Accepts the SDKs' response objects or their dict form (``response.model_dump()``, or the
    JSON from the HTTP API), or just the ``usage`` part. Raises InvalidEventError naming the
    missing or bad field; nothing is guessed.
    """
    usage = _get(response, "usage")
    if usage is None and any(_get(response, n) is not None for n in ("prompt_tokens", "input_tokens")):
        usage, response = response, None  # given the usage object itself
    if usage is None:
        raise InvalidEventError([FieldProblem("response.usage", "is missing: not an OpenAI or Anthropic response "
                                                                "(streams need the final chunk/message with usage)")])
    model = _get(response, "model") if response is not None else None
    reader = _Reader(usage)
    if _get(usage, "prompt_tokens") is not None:
        result = ResponseUsage(
            "openai.chat", model, reader.count("prompt_tokens"), reader.count("completion_tokens"),
            reader.count("prompt_tokens_details", "cached_tokens", required=False),
        )
    elif _get(usage, "cache_read_input_tokens") is not None or _get(usage, "cache_creation_input_tokens") is not None:
        uncached = reader.count("input_tokens")
        read = reader.count("cache_read_input_tokens", required=False)
        written = reader.count("cache_creation_input_tokens", required=False)
        result = ResponseUsage("anthropic", model, uncached + read + written, reader.count("output_tokens"), read, written)
    else:
        # OpenAI Responses, or Anthropic without cache fields: both count all input in input_tokens.
        provider: Provider = "openai.responses" if _get(usage, "input_tokens_details") is not None or \
            _get(usage, "total_tokens") is not None else "anthropic"
        result = ResponseUsage(
            provider, model, reader.count("input_tokens"), reader.count("output_tokens"),
            reader.count("input_tokens_details", "cached_tokens", required=False),
        )
    if result.cached_input_tokens > result.input_tokens:
        reader.problems.append(FieldProblem("response.usage", f"cached tokens ({result.cached_input_tokens}) exceed "
                                                              f"input tokens ({result.input_tokens})"))
    if reader.problems:
        raise InvalidEventError(reader.problems)
    if result.model is not None and not isinstance(result.model, str):
        raise InvalidEventError([FieldProblem("response.model", f"must be a string, got {result.model!r}")])
    return result

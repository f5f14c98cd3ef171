"""Credits for one event, until the pricing domain brings the price book.

Rule: an event with an action tier costs that tier's credits (simple = 1,
complex = 5); any other event costs (input + output tokens) / 1000 credits.
"""

from __future__ import annotations

from decimal import Decimal

from meterline.schemas import UsageEvent

ACTION_CREDITS: dict[str, Decimal] = {"simple": Decimal(1), "complex": Decimal(5)}
TOKENS_PER_CREDIT = Decimal(1000)


def credits_for(event: UsageEvent) -> Decimal:
    data = event.data
    if data.action in ACTION_CREDITS:
        return ACTION_CREDITS[data.action]
    return Decimal(data.input_tokens + data.output_tokens) / TOKENS_PER_CREDIT

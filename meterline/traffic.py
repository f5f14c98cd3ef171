"""Simulated traffic: a power-law population of users, some events re-sent.

Real usage per end user is heavy-tailed (p99 at 50-200x the median), so the
demo draws users with Zipf weights and token counts from a log-normal.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

MODELS = ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4")


@dataclass(frozen=True)
class SimulatedCall:
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int
    latency_ms: int
    action: str | None
    resend: bool  # re-send the previous call's request id: a client retry


def simulate(events: int, users: int, resend_ratio: float = 0.05, seed: int = 7) -> Iterator[SimulatedCall]:
    rng = random.Random(seed)
    user_ids = [f"user-{i:04d}" for i in range(users)]
    # Cumulative once: given plain weights, choices() sums all of them on every draw (100 us a call
    # with 10,000 users, which capped a load generator at ~2,500 calls/s); the draws are the same.
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** 1.1 for rank in range(users)))
    for _ in range(events):
        user = rng.choices(user_ids, cum_weights=cumulative)[0]
        resend = rng.random() < resend_ratio
        yield SimulatedCall(
            user_id=user,
            model=rng.choice(MODELS),
            input_tokens=int(rng.lognormvariate(6.5, 1.0)),
            output_tokens=int(rng.lognormvariate(5.5, 1.0)),
            latency_ms=int(rng.lognormvariate(6.0, 0.5)),
            action=rng.choice((None, None, "simple", "complex")),
            resend=resend,
        )

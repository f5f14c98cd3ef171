"""The enforcement rules (processors/holds.py) on an injected clock: no worker, no Kafka."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings as hypothesis_settings, strategies as st

from meterline.processors.holds import Holds, Limits, Request, decide

FREE = Limits("free", concurrent_requests=2, requests_per_minute=10, burst_multiplier=2.0, burst_seconds=60,
              hard_cap=True, remaining=Decimal(50), cycle_end=10_000_000.0)
PRO = Limits("pro", concurrent_requests=10, requests_per_minute=60, burst_multiplier=2.0, burst_seconds=60,
             hard_cap=False, remaining=Decimal(100), cycle_end=10_000_000.0)
T0 = 1_000_000.0


def request(reservation_id: str, estimate: Decimal | int = 1, model: str = "gpt-4o",
            chain: tuple[tuple[str, Decimal | int], ...] = (), ttl: float = 600.0) -> Request:
    return Request(reservation_id, model, ((model, Decimal(estimate)), *((m, Decimal(e)) for m, e in chain)), ttl)


def reserve_all(limits: Limits, requests: list[Request], now: float, holds: Holds = Holds()) -> tuple[list, Holds]:
    decisions = []
    for each in requests:
        decision, after = decide(each, limits, holds, now)
        holds = after or holds
        decisions.append(decision)
    return decisions, holds


def test_a_hard_cap_holds_exactly_what_remains_across_200_reserves():
    limits = FREE._replace(concurrent_requests=1000, requests_per_minute=100_000, remaining=Decimal(10))
    decisions, holds = reserve_all(limits, [request(f"r{i}") for i in range(200)], T0)
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 10 and holds.held(T0) == 10
    assert {d.reason for d in decisions if not d.allowed} == {"balance"}
    # Refused for balance: it comes back when the first hold expires (before the cycle's end).
    assert decisions[-1].retry_after == 600.0


def test_an_overage_plan_is_not_held_to_its_balance():
    limits = PRO._replace(remaining=Decimal(0), requests_per_minute=100_000)
    decisions, _ = reserve_all(limits, [request(f"r{i}", 5) for i in range(10)], T0)
    assert all(d.allowed for d in decisions)


def test_open_holds_stay_under_the_concurrency_limit_and_a_release_frees_a_slot():
    limits = PRO._replace(requests_per_minute=100_000)
    decisions, holds = reserve_all(limits, [request(f"r{i}") for i in range(50)], T0)
    assert sum(d.allowed for d in decisions) == 10 and len(holds.live(T0)) == 10
    assert {d.reason for d in decisions[10:]} == {"concurrency"} and all(d.retry_after == 1.0 for d in decisions[10:])
    holds, found = holds.close("r3", "released", T0 + 1)
    assert found.reservation_id == "r3" and len(holds.live(T0 + 1)) == 9
    decision, after = decide(request("late"), limits, holds, T0 + 1)
    assert decision.allowed and len(after.live(T0 + 1)) == 10


def test_the_same_reservation_id_gets_the_same_decision_and_holds_once():
    first, holds = decide(request("same", 3), PRO, Holds(), T0)
    again, nothing = decide(request("same", 3), PRO, holds, T0 + 5)
    assert nothing is None and (again.allowed, again.model, again.held, again.expires_at) == (True, "gpt-4o", 3, first.expires_at)
    holds, _ = holds.close("same", "committed", T0 + 6)
    after_commit, nothing = decide(request("same", 3), PRO, holds, T0 + 7)
    assert nothing is None and after_commit.allowed and after_commit.state == "committed" and holds.held(T0 + 7) == 0
    holds_twice, found = holds.close("same", "released", T0 + 8)
    assert holds_twice == holds and found.outcome == "committed"  # releasing after a commit changes nothing


def test_a_hold_expires_at_its_ttl_and_then_holds_nothing():
    limits = FREE._replace(remaining=Decimal(1), requests_per_minute=100_000)
    decision, holds = decide(request("short", 1, ttl=30), limits, Holds(), T0)
    assert decision.allowed and decision.expires_at == T0 + 30
    refused, _ = decide(request("other", 1), limits, holds, T0 + 29.9)
    assert not refused.allowed and refused.reason == "balance" and abs(refused.retry_after - 0.1) < 1e-6
    allowed, after = decide(request("other", 1), limits, holds, T0 + 30)
    assert allowed.allowed
    assert [(c.reservation_id, c.outcome) for c in after.closed] == [("short", "expired")]


def test_the_buckets_allow_twice_the_steady_rate_for_60_s_then_the_steady_rate():
    limits = PRO._replace(concurrent_requests=10**6)  # 60 a minute: 1/s steady, 2/s for 60 s
    holds, allowed_at = Holds(), []
    for tick in range(0, 180 * 10):  # 10 offered a second for 180 s
        now = T0 + tick / 10
        decision, after = decide(request(f"r{tick}"), limits, holds, now)
        if decision.allowed:
            allowed_at.append(now - T0)
            holds = after
    first_minute = sum(1 for t in allowed_at if t < 60)
    third_minute = sum(1 for t in allowed_at if 120 <= t < 180)
    # Computed here: room for (2 - 1) x 1/s x 60 s = 60 extra tokens, drained at 2/s against a refill of 1/s.
    assert 118 <= first_minute <= 122
    assert 59 <= third_minute <= 61
    # At the steady rate the bucket is empty after each request: the next at the same instant waits.
    _, holds = decide(request("next"), limits, holds, T0 + 180)
    refused, _ = decide(request("after"), limits, holds, T0 + 180)
    assert not refused.allowed and refused.reason == "rate" and 0 < refused.retry_after <= 1.0


def test_a_request_over_the_balance_is_degraded_to_the_first_cheaper_model_that_fits():
    limits = FREE._replace(remaining=Decimal(1), requests_per_minute=100_000)
    chained = request("big", 5, "claude-opus-4", chain=(("claude-sonnet-4", 3), ("claude-3-5-haiku", Decimal("0.25"))))
    decision, holds = decide(chained, limits, Holds(), T0)
    assert (decision.allowed, decision.model, decision.reason, decision.held, decision.degraded) == \
        (True, "claude-3-5-haiku", "balance", Decimal("0.25"), True)
    assert holds.held(T0) == Decimal("0.25")


def test_a_request_over_the_rate_is_degraded_without_taking_a_token():
    limits = PRO._replace(requests_per_minute=1, burst_multiplier=1.0)  # room for one request
    first, holds = decide(request("a"), limits, Holds(), T0)
    assert first.allowed and not first.degraded
    second, holds2 = decide(request("b", chain=(("gpt-4o-mini", Decimal("0.1")),)), limits, holds, T0)
    assert (second.allowed, second.model, second.reason) == (True, "gpt-4o-mini", "rate")
    assert holds2.buckets == holds.buckets  # the cheaper model took no token
    third, _ = decide(request("c"), limits, holds2, T0)
    assert not third.allowed and third.reason == "rate"


def test_concurrency_is_never_degraded():
    limits = FREE._replace(requests_per_minute=100_000)
    chained = (("gpt-4o-mini", Decimal("0.1")),)
    decisions, _ = reserve_all(limits, [request(f"r{i}", chain=chained) for i in range(3)], T0)
    assert [d.allowed for d in decisions] == [True, True, False] and decisions[2].reason == "concurrency"


def test_a_pool_whose_remaining_is_unknown_here_is_not_checked_for_balance():
    limits = FREE._replace(remaining=None, requests_per_minute=100_000, concurrent_requests=100)
    decisions, _ = reserve_all(limits, [request(f"r{i}", 10) for i in range(20)], T0)
    assert all(d.allowed for d in decisions)


def test_a_clock_that_steps_back_refills_nothing():
    limits = PRO._replace(requests_per_minute=1, burst_multiplier=1.0)
    _, holds = decide(request("a"), limits, Holds(), T0)
    refused, _ = decide(request("b"), limits, holds, T0 - 3600)
    assert not refused.allowed and refused.reason == "rate"


operations = st.lists(st.tuples(st.sampled_from(["reserve", "release", "commit", "wait"]),
                                st.integers(0, 30), st.integers(0, 5)), max_size=120)


@hypothesis_settings(max_examples=150, deadline=None)
@given(operations, st.integers(0, 20), st.integers(1, 6))
def test_no_sequence_of_calls_exceeds_the_balance_or_the_concurrency_limit(ops, remaining, concurrency):
    limits = FREE._replace(remaining=Decimal(remaining), concurrent_requests=concurrency, requests_per_minute=30)
    holds, now = Holds(), T0
    for op, number, amount in ops:
        if op == "reserve":
            _decision, after = decide(request(f"r{number}", amount, ttl=20), limits, holds, now)
            holds = after or holds
        elif op in ("release", "commit"):
            holds, _ = holds.expired(now).close(f"r{number}", "released" if op == "release" else "committed", now)
        else:
            now += amount * 3
        assert Holds.from_bytes(holds.to_bytes()) == holds  # what Kafka keeps is what was held
        live = holds.live(now)
        assert len(live) <= concurrency
        assert holds.held(now) <= remaining
        assert len({h.reservation_id for h in live}) == len(live)

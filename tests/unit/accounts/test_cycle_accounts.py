"""The live account of the current cycle (processors/accounts.py), without Kafka.

Expected figures are worked out here from the shipped plans (pricing/defaults/plans.yaml): Free
includes 50 credits a calendar month and expires them; Pro includes 100, bills overage at
$0.30 and carries unused included credits one cycle (at most 100); Enterprise includes 5,000
and carries them three cycles.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from meterline.pricing.catalogue import default_catalogue
from meterline.pricing.invoice import Grant
from meterline.processors.accounts import Accounts, CycleAccount
from meterline.processors.state import UserState
from meterline.schemas.subscription import PlanChange, Subscription


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def accounts(*subscriptions: Subscription) -> Accounts:
    return Accounts(default_catalogue(), "free", {s.subscriber_key: s for s in subscriptions})


def count(accounts: Accounts, events: list[tuple[datetime, str]], user: str = "alice",
          account: CycleAccount | None = None) -> tuple[CycleAccount | None, list[tuple[str, datetime, bool]]]:
    placed = []
    for at, credits in events:
        placement, account = accounts.place("acme", user, at, Decimal(credits), Decimal("0.001"), account)
        placed.append((placement.plan, placement.cycle_start, placement.late))
    return account, placed


def test_a_user_without_a_subscription_is_on_the_default_plan_in_calendar_months():
    account, placed = count(accounts(), [(utc(2026, 12, 3, 10), "1.5"), (utc(2026, 12, 31, 23, 59), "2")])
    assert account is not None
    assert (account.subscriber, account.start, account.end) == ("", utc(2026, 12, 1), utc(2027, 1, 1))
    assert (account.used, account.events) == (Decimal("3.5"), 2)
    assert placed == [("free", utc(2026, 12, 1), False)] * 2


def test_an_event_of_the_next_cycle_closes_the_account_and_free_credits_expire():
    account, placed = count(accounts(), [(utc(2026, 12, 3), "10"), (utc(2027, 1, 1), "4")])
    assert account is not None
    assert (account.start, account.used, account.carried) == (utc(2027, 1, 1), Decimal(4), ())
    assert placed[1] == ("free", utc(2027, 1, 1), False)  # a boundary belongs to the cycle it starts


def test_unused_pro_credits_carry_into_the_next_cycle_and_no_further():
    pro = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 11, 15))
    book = accounts(pro)
    account, _ = count(book, [(utc(2026, 11, 20), "30"), (utc(2026, 12, 20), "5")])
    assert account is not None
    assert account.start == utc(2026, 12, 15)
    assert account.carried == ((Decimal(70), 1),)  # 100 included - 30 used, usable one more cycle
    shown = book.balance("acme", "alice", account, utc(2026, 12, 21))
    assert (shown["plan"], shown["included"], shown["carried"], shown["used"]) == ("pro", "100", "70", "5")
    assert shown["remaining"] == "165"  # 100 + 70 - 5
    # December's 5 came out of the carried 70 first (burn order), whose other 65 lapse at its end;
    # all of December's 100 included carry into January.
    later, _ = count(book, [(utc(2027, 1, 16), "1")], account=account)
    assert later is not None and later.carried == ((Decimal(100), 1),)


def test_carried_credits_age_through_cycles_without_events():
    enterprise = Subscription(org_id="acme", user_id="alice", plan="enterprise", since=utc(2026, 1, 1))
    book = accounts(enterprise)
    account, _ = count(book, [(utc(2026, 1, 10), "4000")])
    # February and March have no events: January's 1,000 unused are carried into February (3
    # cycles left), March (2), April (1); February's and March's 5,000 unused hit the 5,000 cap.
    april, _ = count(book, [(utc(2026, 4, 2), "1")], account=account)
    assert april is not None
    assert sum(credits for credits, _cycles in april.carried) == Decimal(5000)
    assert (Decimal(1000), 1) in april.carried  # January's, on its last cycle


def test_an_event_of_a_closed_cycle_is_late_and_leaves_the_live_account_alone():
    account, placed = count(accounts(), [(utc(2027, 1, 5), "2"), (utc(2026, 12, 30), "7")])
    assert account is not None
    assert (account.start, account.used) == (utc(2027, 1, 1), Decimal(2))
    assert placed[1] == ("free", utc(2026, 12, 1), True)


def test_a_subscription_of_their_own_starts_a_new_account_from_its_since():
    own = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 12, 15, 12))
    account, placed = count(accounts(own), [(utc(2026, 12, 2), "3"), (utc(2026, 12, 16), "1"), (utc(2026, 12, 10), "2")])
    assert account is not None
    assert (account.subscriber, account.start, account.end) == ("acme/alice", utc(2026, 12, 15, 12), utc(2027, 1, 15, 12))
    assert (account.used, account.carried) == (Decimal(1), ())  # nothing carries from the free account
    assert placed == [("free", utc(2026, 12, 1), False), ("pro", utc(2026, 12, 15, 12), False),
                      ("free", utc(2026, 12, 1), True)]


def test_overage_and_revenue_on_an_overage_plan():
    pro = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 12, 1))
    book = accounts(pro)
    account, _ = count(book, [(utc(2026, 12, 2), "120.5")])
    shown = book.balance("acme", "alice", account, utc(2026, 12, 3))
    assert (shown["remaining"], shown["overage"], shown["hard_cap"]) == ("0", "20.5", False)
    assert Decimal(shown["revenue_usd"]) == Decimal(20) + Decimal("20.5") * Decimal("0.30")  # fee + overage


def test_a_hard_cap_plan_shows_what_ran_past_the_cap():
    book = accounts()
    account, _ = count(book, [(utc(2026, 12, 2), "60")])
    shown = book.balance("acme", "alice", account, utc(2026, 12, 3))
    assert (shown["plan"], shown["remaining"], shown["overage"], shown["hard_cap"]) == ("free", "0", "10", True)
    assert shown["revenue_usd"] == "0"


def test_a_plan_change_mid_cycle_prorates_the_included_credits():
    change = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 11, 1),
                          changes=(PlanChange(plan="enterprise", at=utc(2026, 12, 11)),))
    book = accounts(change)
    account, placed = count(book, [(utc(2026, 12, 5), "10"), (utc(2026, 12, 20), "10")])
    shown = book.balance("acme", "alice", account, utc(2026, 12, 21))
    # December has 31 days; 10 elapsed at the change: 100 x 10/31 + 5000 x 21/31 = 3419.354..., to 0.01.
    assert shown["included"] == "3419.35"
    assert shown["plan"] == "enterprise"
    assert [plan for plan, _start, _late in placed] == ["pro", "enterprise"]


def test_an_org_subscription_pools_and_does_not_guess_the_pool_remaining():
    org = Subscription(org_id="acme", plan="pro", since=utc(2026, 12, 1))
    book = accounts(org)
    account, _ = count(book, [(utc(2026, 12, 2), "5")])
    assert account is not None and account.subscriber == "acme"
    shown = book.balance("acme", "alice", account, utc(2026, 12, 3))
    assert shown["pooled"] is True and shown["used"] == "5"
    assert shown["remaining"] is None and shown["overage"] is None  # other users' share lives elsewhere


def test_a_balance_read_in_a_new_cycle_starts_from_zero_with_the_carry():
    pro = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 11, 1))
    book = accounts(pro)
    account, _ = count(book, [(utc(2026, 11, 2), "40")])
    shown = book.balance("acme", "alice", account, utc(2026, 12, 5))  # no event yet in December
    assert (shown["cycle_start"], shown["used"], shown["carried"]) == (utc(2026, 12, 1).isoformat(), "0", "60")


def test_the_account_survives_the_state_record_bytes():
    account, _ = count(accounts(Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 11, 15))),
                       [(utc(2026, 11, 20), "30.125"), (utc(2026, 12, 20), "5")])
    state = UserState().apply(Decimal("35.125"), 3, 41, account, utc(2026, 12, 20).timestamp(), 1.5e9)
    assert UserState.from_bytes(state.to_bytes()) == state


def test_a_version_1_state_record_reads_without_an_account():
    raw = b'{"v": 1, "credits_used": "2.5", "events": 3, "partition": 1, "last_offset": 9}'
    assert UserState.from_bytes(raw) == UserState(Decimal("2.5"), 3, 1, 9)


def test_an_org_subscription_starting_with_the_month_takes_over_the_default_account():
    org = Subscription(org_id="acme", plan="pro", since=utc(2026, 12, 1))
    book = accounts()
    account, _ = count(book, [(utc(2026, 12, 2), "3")])  # counted before the subscription was read
    book.subscriptions["acme"] = org  # type: ignore[index]
    account, placed = count(book, [(utc(2026, 12, 3), "4")], account=account)
    assert account is not None and (account.subscriber, account.start, account.used) == ("acme", utc(2026, 12, 1), 4)
    assert placed == [("pro", utc(2026, 12, 1), False)]


# --- grants: burned after the included credits, soonest expiry first (pricing/README.md) ------------

def grant(grant_id: str, credits: str, expires_at: datetime | None = None, kind: str = "topup") -> Grant:
    return Grant(grant_id, Decimal(credits), kind, expires_at)  # type: ignore[arg-type]


def test_a_grant_is_used_after_the_included_credits():
    book = accounts()
    account = book.grant("acme", "alice", grant("g1", "20"), utc(2026, 12, 1, 9), None)
    account, _ = count(book, [(utc(2026, 12, 2), "60")], account=account)
    shown = book.balance("acme", "alice", account, utc(2026, 12, 3))
    # Free: 50 included, then 10 of the grant's 20.
    assert (shown["grants"], shown["used"], shown["remaining"], shown["overage"]) == ("20", "60", "10", "0")


def test_an_expiring_grant_lapses_at_the_end_of_its_cycle_and_a_top_up_carries_on():
    book = accounts()
    account = book.grant("acme", "alice", grant("promo", "30", utc(2026, 12, 20), "promo"), utc(2026, 12, 1), None)
    account = book.grant("acme", "alice", grant("topup", "40"), utc(2026, 12, 1), account)
    account, _ = count(book, [(utc(2026, 12, 5), "55"), (utc(2027, 1, 3), "1")], account=account)
    assert account is not None and account.start == utc(2027, 1, 1)
    # December: 50 included, then 5 of the promo (soonest expiry first); the promo's other 25 lapse.
    assert account.grants == (grant("topup", "40"),)
    shown = book.balance("acme", "alice", account, utc(2027, 1, 4))
    assert (shown["grants"], shown["remaining"]) == ("40", "89")  # 50 + 40 - 1


def test_grants_follow_the_user_to_a_new_subscription_and_rollover_does_not():
    book = accounts()
    account = book.grant("acme", "alice", grant("g1", "25"), utc(2026, 12, 1), None)
    book.subscriptions["acme/alice"] = Subscription(  # type: ignore[index]
        org_id="acme", user_id="alice", plan="pro", since=utc(2026, 12, 10))
    account, _ = count(book, [(utc(2026, 12, 11), "2")], account=account)
    assert account is not None and account.subscriber == "acme/alice"
    assert account.grants == (grant("g1", "25"),) and account.carried == ()


def test_a_grant_dated_in_a_closed_cycle_is_usable_now():
    book = accounts()
    account, _ = count(book, [(utc(2027, 1, 2), "1")])
    account = book.grant("acme", "alice", grant("g-late", "5"), utc(2026, 12, 31), account)
    assert account.start == utc(2027, 1, 1) and account.grants == (grant("g-late", "5"),)


def test_grants_survive_the_state_record_bytes():
    book = accounts()
    account = book.grant("acme", "alice", grant("g1", "0.000000000001", utc(2027, 3, 1, 12, 30)), utc(2026, 12, 1), None)
    account = book.grant("acme", "alice", grant("g2", "1000000000", None, "promo"), utc(2026, 12, 1), account)
    state = UserState().apply(Decimal(1), 0, 1, account, 0.0, 0.0)
    assert UserState.from_bytes(state.to_bytes()) == state


def test_an_org_pool_carries_nothing_over_per_user():
    book = accounts(Subscription(org_id="acme", plan="pro", since=utc(2026, 11, 1)))
    account, _ = count(book, [(utc(2026, 11, 2), "10"), (utc(2026, 12, 2), "1")])
    assert account is not None and account.subscriber == "acme" and account.carried == ()


# --- the cases, worked out by hand --------------------------------------------------------

def test_pro_with_130_credits_used_shows_30_of_overage_and_9_dollars():
    pro = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2026, 12, 1))
    book = accounts(pro)
    account, _ = count(book, [(utc(2026, 12, 2), "100"), (utc(2026, 12, 9), "30")])
    shown = book.balance("acme", "alice", account, utc(2026, 12, 10))
    assert (shown["remaining"], shown["overage"]) == ("0", "30")
    assert Decimal(shown["revenue_usd"]) - 20 == Decimal("9.00")  # 30 x $0.30 on top of the $20 fee


def test_a_free_user_exactly_at_the_hard_cap():
    book = accounts()
    account, _ = count(book, [(utc(2026, 12, 2), "49.5"), (utc(2026, 12, 2), "0.5")])
    shown = book.balance("acme", "alice", account, utc(2026, 12, 3))
    assert (Decimal(shown["remaining"]), Decimal(shown["overage"]), shown["hard_cap"]) == (0, 0, True)


def test_rollover_is_capped_at_the_plans_maximum():
    # Enterprise keeps unused credits 3 cycles, 5,000 at most: two idle months fill the cap.
    enterprise = Subscription(org_id="acme", user_id="alice", plan="enterprise", since=utc(2026, 1, 1))
    book = accounts(enterprise)
    account, _ = count(book, [(utc(2026, 1, 2), "0.001")])
    march = book.balance("acme", "alice", account, utc(2026, 3, 2))
    assert Decimal(march["carried"]) == 5000


def test_an_anchor_on_january_31_bills_to_the_end_of_february_and_then_march_31():
    pro = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2027, 1, 31, 8))
    book = accounts(pro)
    _, placed = count(book, [(utc(2027, 2, 28, 7), "1"), (utc(2027, 2, 28, 8), "1"), (utc(2027, 3, 31, 8), "1")])
    assert [start for _plan, start, _late in placed] == [utc(2027, 1, 31, 8), utc(2027, 2, 28, 8), utc(2027, 3, 31, 8)]


def test_an_anchor_on_february_29_keeps_the_29th_when_the_month_has_it():
    pro = Subscription(org_id="acme", user_id="alice", plan="pro", since=utc(2028, 2, 29))
    book = accounts(pro)
    account, placed = count(book, [(utc(2028, 3, 28), "1"), (utc(2028, 3, 29), "1")])
    assert [start for _plan, start, _late in placed] == [utc(2028, 2, 29), utc(2028, 3, 29)]
    assert account is not None and account.end == utc(2028, 4, 29)

"""Invoice math: burn order, overage, rollover, expiry, proration; rounded once, at the end."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.pricing.catalogue import Catalogue
from meterline.pricing.cycles import BillingSchedule
from meterline.pricing.exceptions import PricingError
from meterline.pricing.invoice import CarriedCredits, Grant, Invoice, compute_invoice, cycle_charge
from meterline.pricing.plans import Limits, Overage, Plan, Rollover
from meterline.pricing.proration import CycleTerms, prorate_change

D = Decimal
UTC = timezone.utc
CYCLE = BillingSchedule(datetime(2025, 4, 1, tzinfo=UTC)).cycle(0)  # April: 30 days


def qty(invoice: Invoice, kind: str) -> Decimal:
    return sum((line.quantity for line in invoice.lines if line.kind == kind), D(0))


def amount(invoice: Invoice, kind: str) -> Decimal:
    return sum((line.amount for line in invoice.lines if line.kind == kind), D(0))


def plan(price: str = "20", included: str = "100", overage: str | None = "0.30", rollover: Rollover | None = None) -> Plan:
    return Plan(name="T", price=D(price), included_credits=D(included),
                overage=Overage(mode="charge", price_per_credit=D(overage)) if overage else Overage(mode="hard_cap"),
                rollover=rollover or Rollover(), limits=Limits(concurrent_requests=1, requests_per_minute=1))


def test_seed_hybrid_example(catalogue: Catalogue) -> None:
    """Pro with 130 credits used: $20 + 30 x $0.30 = $29.00."""
    invoice = compute_invoice("pro", catalogue.plan("pro"), D(130))
    assert invoice.total == D("29.00")
    assert [(line.kind, line.quantity, line.amount) for line in invoice.lines if line.amount] == [
        ("base_fee", D(1), D(20)), ("overage", D(30), D("9.00"))]
    assert qty(invoice, "included_used") == 100


@pytest.mark.parametrize(
    ("used", "total", "included_used", "overage"),
    [("0", "20.00", "0", "0"), ("99.5", "20.00", "99.5", "0"), ("100", "20.00", "100", "0"),
     ("100.01", "20.00", "100", "0.01"),  # 0.003 of overage rounds down to 20.00
     ("100.02", "20.01", "100", "0.02"),  # 0.006 rounds up
     ("101", "20.30", "100", "1"), ("1000", "290.00", "100", "900")],
)
def test_pro_totals(catalogue: Catalogue, used: str, total: str, included_used: str, overage: str) -> None:
    invoice = compute_invoice("pro", catalogue.plan("pro"), D(used))
    assert (invoice.total, qty(invoice, "included_used"), qty(invoice, "overage")) == (D(total), D(included_used), D(overage))


def test_rounding_is_half_up_once_at_the_end() -> None:
    # Fee 0.005 + overage 2 x 0.0025 = 0.0100 -> $0.01; rounding each line first would give $0.02.
    invoice = compute_invoice("t", plan(price="0.005", included="0", overage="0.0025"), D(2))
    assert invoice.subtotal == D("0.0100")
    assert invoice.total == D("0.01")
    half = compute_invoice("t", plan(price="0.125", included="0", overage="0"), D(0))
    assert half.total == D("0.13")  # half up, not banker's 0.12


def test_hard_cap_never_bills_past_the_cap(catalogue: Catalogue) -> None:
    invoice = compute_invoice("free", catalogue.plan("free"), D(80))
    assert invoice.total == D("0.00")
    assert qty(invoice, "over_cap") == 30 and amount(invoice, "over_cap") == 0
    assert qty(invoice, "expired") == 0


@pytest.mark.parametrize(
    ("carried", "used", "carried_used", "included_used", "carry_out", "expired", "total"),
    [
        # Pro rollover: up to 100 credits, for 1 cycle.
        ([], "30", "0", "30", [("70", 1)], "0", "20.00"),
        ([("50", 1)], "30", "30", "0", [("100", 1)], "20", "20.00"),  # old 20 lapse; 100 unused included roll
        ([("50", 1)], "170", "50", "100", [], "0", "26.00"),  # 20 overage
        ([("100", 1)], "0", "0", "0", [("100", 1)], "100", "20.00"),  # carried lapse, included roll
    ],
)
def test_pro_rollover(catalogue: Catalogue, carried: list[tuple[str, int]], used: str, carried_used: str,
                      included_used: str, carry_out: list[tuple[str, int]], expired: str, total: str) -> None:
    invoice = compute_invoice("pro", catalogue.plan("pro"), D(used), carried=[CarriedCredits(D(c), n) for c, n in carried])
    assert qty(invoice, "carried_used") == D(carried_used)
    assert qty(invoice, "included_used") == D(included_used)
    assert invoice.carry_out == tuple(CarriedCredits(D(c), n) for c, n in carry_out)
    assert qty(invoice, "expired") == D(expired)
    assert invoice.total == D(total)


def test_rollover_cap_and_ageing() -> None:
    rolling = plan(included="100", rollover=Rollover(mode="rollover", max_credits=D(120), max_cycles=2))
    invoice = compute_invoice("t", rolling, D(10), carried=[CarriedCredits(D(40), 2), CarriedCredits(D(30), 1)])
    # Burn oldest first: 10 from the batch with 1 cycle left. Then: 20 lapse (1 cycle left), 40 ages to 1,
    # 100 unused included join with 2 cycles, capped at 120 total: the newest batch is cut to 80.
    assert invoice.carry_out == (CarriedCredits(D(40), 1), CarriedCredits(D(80), 2))
    assert qty(invoice, "expired") == D(20) + D(20)
    assert qty(invoice, "carried_over") == D(120)


def test_expire_plan_expires_everything_unused(catalogue: Catalogue) -> None:
    invoice = compute_invoice("free", catalogue.plan("free"), D(10), carried=[CarriedCredits(D(5))])
    assert invoice.carry_out == () and qty(invoice, "expired") == D(45)


def test_grants_burn_after_included_soonest_expiry_first() -> None:
    promo = Grant("promo", D(20), "promo", datetime(2025, 4, 20, tzinfo=UTC))  # expires inside the cycle
    later = Grant("later", D(20), "promo", datetime(2025, 6, 1, tzinfo=UTC))
    topup = Grant("topup", D(50))
    old = Grant("old", D(99), "promo", datetime(2025, 3, 1, tzinfo=UTC))  # expired before the cycle: unusable
    invoice = compute_invoice("t", plan(included="10"), D(45), grants=[topup, later, promo, old], cycle=CYCLE)
    assert [(line.description, line.quantity) for line in invoice.lines if line.kind == "grant_used"] == [
        ("promo promo credits used", D(20)), ("promo later credits used", D(15))]
    assert invoice.grants_out == (Grant("later", D(5), "promo", datetime(2025, 6, 1, tzinfo=UTC)), Grant("topup", D(50)))
    assert invoice.total == D("20.00")


def test_unused_grant_expiring_in_the_cycle_is_expired() -> None:
    promo = Grant("promo", D(20), "promo", datetime(2025, 4, 20, tzinfo=UTC))
    invoice = compute_invoice("t", plan(included="10"), D(15), grants=[promo], cycle=CYCLE)
    assert qty(invoice, "expired") == D(15) and invoice.grants_out == ()


def test_expiring_grant_needs_a_cycle() -> None:
    with pytest.raises(PricingError):
        compute_invoice("t", plan(), D(1), grants=[Grant("g", D(1), "promo", datetime(2025, 5, 1, tzinfo=UTC))])


def test_negative_usage_is_refused() -> None:
    with pytest.raises(PricingError):
        compute_invoice("t", plan(), D(-1))


@pytest.mark.parametrize(
    ("changed_at", "fee", "included"),
    [
        (datetime(2025, 4, 1, tzinfo=UTC), D(20), D(100)),  # at the start: all new plan
        (datetime(2025, 4, 16, tzinfo=UTC), D(10), D(75)),  # half way: 0.5 x 0 + 0.5 x 20; 0.5 x 50 + 0.5 x 100
        (datetime(2025, 4, 25, tzinfo=UTC), D(4), D(60)),  # 6 of 30 days left: 0.2 x 20; 0.8 x 50 + 0.2 x 100
        (datetime(2025, 5, 1, tzinfo=UTC), D(0), D(50)),  # at the end: all old plan
    ],
)
def test_upgrade_free_to_pro_prorates_fee_and_credits(catalogue: Catalogue, changed_at: datetime, fee: Decimal, included: Decimal) -> None:
    terms = prorate_change(catalogue.plan("free"), catalogue.plan("pro"), CYCLE, changed_at)
    assert (terms.fee, terms.included_credits) == (fee, included)
    assert terms.overage == catalogue.plan("pro").overage  # the plan in force at cycle end


def test_prorated_invoice(catalogue: Catalogue) -> None:
    terms = prorate_change(catalogue.plan("free"), catalogue.plan("pro"), CYCLE, datetime(2025, 4, 11, tzinfo=UTC))
    # 20 of 30 days left: fee 20 x 2/3 = 13.333..., included 50/3 + 200/3 = 83.33 (to 0.01 credit).
    assert terms.included_credits == D("83.33")
    invoice = compute_invoice("pro", catalogue.plan("pro"), D(100), terms=terms, cycle=CYCLE)
    assert qty(invoice, "overage") == D("16.67")
    assert invoice.total == D("18.33")  # 13.3333... + 5.001 = 18.3343... -> 18.33


def test_interval_change_is_not_prorated(catalogue: Catalogue) -> None:
    with pytest.raises(PricingError, match="new schedule"):
        prorate_change(catalogue.plan("pro"), catalogue.plan("pro-annual"), CYCLE, datetime(2025, 4, 10, tzinfo=UTC))


credits = st.decimals(min_value=0, max_value=100_000, places=3, allow_nan=False, allow_infinity=False)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    rolls = draw(st.booleans())
    return Plan(
        name="P", price=draw(st.decimals(0, 1000, places=2)), included_credits=draw(credits),
        overage=Overage(mode="charge", price_per_credit=draw(st.decimals(0, 5, places=4))) if draw(st.booleans())
        else Overage(mode="hard_cap"),
        rollover=Rollover(mode="rollover", max_credits=draw(credits), max_cycles=draw(st.integers(1, 6))) if rolls else Rollover(),
        limits=Limits(concurrent_requests=1, requests_per_minute=1))


carried_batches = st.lists(st.builds(CarriedCredits, credits, st.integers(1, 6)), max_size=4)


@given(plan_=plans(), used=credits, carried=carried_batches)
def test_total_is_the_sum_of_the_lines_rounded_once(plan_: Plan, used: Decimal, carried: list[CarriedCredits]) -> None:
    invoice = compute_invoice("p", plan_, used, carried=carried)
    exact = sum((line.amount for line in invoice.lines), D(0))
    assert invoice.total == exact.quantize(D("0.01"), rounding="ROUND_HALF_UP")
    assert abs(invoice.total - exact) <= D("0.005")


@given(plan_=plans(), used=credits, more=credits, carried=carried_batches)
def test_more_usage_never_costs_less(plan_: Plan, used: Decimal, more: Decimal, carried: list[CarriedCredits]) -> None:
    assert compute_invoice("p", plan_, used + more, carried=carried).total >= compute_invoice("p", plan_, used, carried=carried).total


@given(plan_=plans(), used=credits, carried=carried_batches)
def test_credits_are_conserved(plan_: Plan, used: Decimal, carried: list[CarriedCredits]) -> None:
    invoice = compute_invoice("p", plan_, used, carried=carried)
    burnt = sum(qty(invoice, kind) for kind in ("carried_used", "included_used", "grant_used", "overage", "over_cap"))
    assert burnt == used
    available = plan_.included_credits + sum((b.credits for b in carried), D(0))
    assert qty(invoice, "carried_over") + qty(invoice, "expired") == max(available - used, D(0))
    assert qty(invoice, "carried_over") <= (plan_.rollover.max_credits or D(0))


def test_cycle_terms_of_a_plan(catalogue: Catalogue) -> None:
    assert CycleTerms.of(catalogue.plan("pro")).fee == D(20)


@given(plan_=plans(), used=credits)
def test_the_cycle_charge_is_the_invoice_without_carried_credits_or_grants(plan_: Plan, used: Decimal) -> None:
    invoice = compute_invoice("p", plan_, used)
    assert cycle_charge(CycleTerms.of(plan_), used) == (invoice.beyond_allowance, invoice.total)


def test_the_cycle_charge_of_the_seed_example(catalogue: Catalogue) -> None:
    # Pro with 130 credits used: $20 + 30 x $0.30; free, capped at 50 credits, charges nothing past them.
    assert cycle_charge(CycleTerms.of(catalogue.plan("pro")), D(130)) == (D(30), D("29.00"))
    assert cycle_charge(CycleTerms.of(catalogue.plan("free")), D(80)) == (D(30), D("0.00"))
    with pytest.raises(PricingError, match=">= 0"):
        cycle_charge(CycleTerms.of(catalogue.plan("pro")), D(-1))

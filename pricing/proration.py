"""What one cycle includes: the plan's own terms, or prorated terms after a mid-cycle change.

Proration rule: a change at instant `at` splits the cycle by elapsed time (to the
microsecond). The fee and the included credits are the old plan's times the share already
elapsed plus the new plan's times the share remaining. The fee stays exact (the invoice
rounds once, at the end); included credits are rounded half-up to 0.01 credit. Overage and
rollover follow the plan in force at the end of the cycle, the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from meterline.pricing.cycles import Cycle
from meterline.pricing.exceptions import PricingError
from meterline.pricing.plans import Overage, Plan, Rollover

CREDIT_STEP = Decimal("0.01")


@dataclass(frozen=True)
class CycleTerms:
    """The fee, included credits, overage and rollover that apply to one cycle."""

    fee: Decimal
    included_credits: Decimal
    overage: Overage
    rollover: Rollover
    note: str = ""

    @classmethod
    def of(cls, plan: Plan) -> CycleTerms:
        """A whole cycle on one plan."""
        return cls(plan.price, plan.included_credits, plan.overage, plan.rollover)


def prorate_change(old: Plan, new: Plan, cycle: Cycle, at: datetime) -> CycleTerms:
    """Terms of `cycle` when the subscription moves from `old` to `new` at `at`.

    Both plans must bill on the same interval: changing the interval starts a new schedule.
    """
    if old.interval != new.interval:
        raise PricingError(
            f"cannot prorate {old.name} ({old.interval}ly) into {new.name} ({new.interval}ly) within one cycle; "
            "end the old subscription at the change and anchor a new schedule there"
        )
    remaining = cycle.fraction_remaining(at)
    elapsed = 1 - remaining
    fee = old.price * elapsed + new.price * remaining
    included = (old.included_credits * elapsed + new.included_credits * remaining).quantize(CREDIT_STEP, ROUND_HALF_UP)
    note = f"{old.name} -> {new.name} at {at.isoformat()}, {remaining:.4%} of the cycle remaining"
    return CycleTerms(fee, included, new.overage, new.rollover, note)

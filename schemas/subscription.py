"""Who is on which plan since when: the subscription record, as published on the subscriptions topic.

A subscriber is an org (its plan pools every user of the org) or one user of an org. Its record
holds its whole history: the first plan from `since`, then each plan change at its instant. The
topic is compacted and keyed by `subscriber_key`, so the latest record of a subscriber is its
history; republishing a file is idempotent.

Which subscription applies to a user at an instant (`effective_subscription`): the user's own,
else the org's (each only from its `since`), else the configured default plan (shipped: free).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from meterline.schemas.usage import Identifier, utc_instant

STRIPE_CUSTOMER_PATTERN = r"^cus_[A-Za-z0-9]{1,255}$"
STRIPE_CUSTOMER_RULE = "must be a Stripe customer id: cus_ then 1 to 255 letters or digits"
# A default-plan user is treated as subscribed since the first instant Python has, in UTC.
BEGINNING = datetime(1, 1, 1, tzinfo=timezone.utc)


class PlanChange(BaseModel):
    """From `at` on, the subscriber is on `plan` (prorated within the cycle: pricing/proration.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: str = Field(min_length=1, max_length=100)
    at: AwareDatetime

    @field_validator("at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return utc_instant(value)


class Subscription(BaseModel):
    """One subscriber's plan history, billing anchor and optional Stripe customer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    org_id: Annotated[str, Identifier]
    user_id: Annotated[str, Identifier] | None = None  # None: the org's own subscription, pooling its users
    plan: str = Field(min_length=1, max_length=100, description="the plan from `since`")
    since: AwareDatetime
    anchor: AwareDatetime | None = Field(default=None, description="billing anchor; `since` when unset")
    stripe_customer_id: str | None = Field(default=None, pattern=STRIPE_CUSTOMER_PATTERN)
    changes: tuple[PlanChange, ...] = ()

    @field_validator("since", "anchor")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc_instant(value)

    @field_validator("changes")
    @classmethod
    def _changes_in_order(cls, changes: tuple[PlanChange, ...], info: ValidationInfo) -> tuple[PlanChange, ...]:
        previous = info.data.get("since")
        for index, change in enumerate(changes):
            if previous is not None and change.at <= previous:
                raise ValueError(f"change {index + 1} (at {change.at.isoformat()}) must come after "
                                 f"{previous.isoformat()}: a plan history is in time order")
            previous = change.at
        return changes

    @property
    def subscriber_key(self) -> str:
        """The topic's key: `org` for an org's subscription, `org/user` for one user's."""
        return self.org_id if self.user_id is None else f"{self.org_id}/{self.user_id}"

    @property
    def billing_anchor(self) -> datetime:
        return self.anchor or self.since

    def plan_at(self, instant: datetime) -> str | None:
        """The plan in force at `instant`, or None before `since`."""
        if instant < self.since:
            return None
        plan = self.plan
        for change in self.changes:
            if change.at > instant:
                break
            plan = change.plan
        return plan

    @property
    def plans(self) -> tuple[str, ...]:
        return (self.plan, *(change.plan for change in self.changes))

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def subscription_in_effect(org_id: str, user_id: str, subscriptions: Mapping[str, Subscription],
                           at: datetime) -> Subscription | None:
    """The user's own subscription, else the org's, that has started by `at`; None: the default plan applies."""
    if not subscriptions:  # no subscription at all: the worker asks once per event
        return None
    for key in (f"{org_id}/{user_id}", org_id):
        found = subscriptions.get(key)
        if found is not None and found.since <= at:
            return found
    return None


def default_subscription(org_id: str, user_id: str | None, default_plan: str) -> Subscription:
    """A user (or an org's users) with no subscription: on the default plan since BEGINNING, billed in calendar months."""
    return Subscription(org_id=org_id, user_id=user_id, plan=default_plan, since=BEGINNING)


def effective_subscription(org_id: str, user_id: str, subscriptions: Mapping[str, Subscription],
                           default_plan: str, at: datetime) -> Subscription:
    """The subscription that applies to one user at `at`: the user's own, else the org's, else the default plan.

    One that starts after `at` does not apply yet.
    """
    return subscription_in_effect(org_id, user_id, subscriptions, at) or default_subscription(org_id, user_id, default_plan)

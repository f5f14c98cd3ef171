"""reserve / commit / release from the SDK: the worker that owns the user decides (processors/holds.py).

    with meter.reserve("acme", "user-42", "gpt-4o", estimate=2) as r:
        if not r.allowed:
            return f"try again in {r.retry_after:.0f} s"
        response = client.chat.completions.create(model=r.model, ...)  # r.model: maybe a cheaper one
        r.commit(response=response)  # the usage event, with the reservation id as its request id

Leaving the block with an exception releases the hold; leaving it without commit or release
releases it too, with a warning. When no worker answers within `reserve_deadline_seconds`,
`reserve_when_unreachable` decides: "closed" refuses, "open" allows and marks the event, "plan"
(the default) refuses for a user last seen on a hard-cap plan, or never seen, and allows otherwise.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections import OrderedDict
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import httpx

from meterline.producers.request_ids import new_request_id
from meterline.schemas import FieldProblem, InvalidEventError
from meterline.settings import SdkSettings

UNREACHABLE = "owner_unreachable"
FAIL_OPEN_METADATA = "meterline_fail_open"  # the mark on an event allowed without a decision
MAX_KNOWN_PLANS = 100_000
RETRY_STATUSES = {502, 503, 504}
BACKOFF_SECONDS = (0.02, 0.05, 0.1, 0.2, 0.4)


class ReservationUnusable(InvalidEventError):
    """The worker refused the request itself (bad field, unknown model, bad key): not a quota decision."""


class ReservationWarning(UserWarning):
    """A reservation left without commit or release (released for you)."""


class _Plans:
    """Whether each user was last seen on a hard-cap plan: what "plan" applies when no worker answers."""

    def __init__(self) -> None:
        self._hard_cap: OrderedDict[tuple[str, str], bool] = OrderedDict()

    def seen(self, org_id: str, user_id: str, hard_cap: bool) -> None:
        self._hard_cap[(org_id, user_id)] = hard_cap
        self._hard_cap.move_to_end((org_id, user_id))
        if len(self._hard_cap) > MAX_KNOWN_PLANS:
            self._hard_cap.popitem(last=False)

    def fails_open(self, policy: str, org_id: str, user_id: str) -> bool:
        if policy != "plan":
            return policy == "open"
        return self._hard_cap.get((org_id, user_id)) is False  # unknown: closed, the safe side


class Endpoint:
    """The HTTP calls and the policy, shared by the sync and async reservations."""

    def __init__(self, settings: SdkSettings):
        self.settings = settings
        self.base_url = (settings.enforcement_url or "http://127.0.0.1:6066").rstrip("/")
        key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.plans = _Plans()

    @staticmethod
    def path(org_id: str, user_id: str, reservation_id: str | None = None) -> str:
        path = f"/v1/orgs/{quote(org_id, safe='')}/users/{quote(user_id, safe='')}/reservations"
        return path if reservation_id is None else f"{path}/{quote(reservation_id, safe='')}"

    @staticmethod
    def body(model: str, estimate: Decimal | int | float | str | None, input_tokens: int | None,
             output_tokens: int | None, ttl_seconds: float | None, reservation_id: str) -> dict[str, Any]:
        if estimate is None and input_tokens is None and output_tokens is None:
            raise InvalidEventError([FieldProblem("estimate", "give an estimate in credits, or input_tokens / output_tokens")])
        body: dict[str, Any] = {"reservation_id": reservation_id, "model": model}
        if estimate is not None:
            body["estimate"] = str(estimate)
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens), ("ttl_seconds", ttl_seconds)):
            if value is not None:
                body[name] = value
        return body

    def decided(self, org_id: str, user_id: str, response: httpx.Response) -> dict[str, Any] | None:
        """The decision, None to retry, or ReservationUnusable when the worker refused the request itself."""
        if response.status_code in RETRY_STATUSES:
            return None
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text[:500]}
        if response.status_code != 200:
            problems = [FieldProblem(p["field"], p["rule"]) for p in answer.get("problems", [])] or \
                [FieldProblem("request", f"{response.status_code}: {answer.get('error', '')}")]
            raise ReservationUnusable(problems)
        self.plans.seen(org_id, user_id, bool(answer.get("hard_cap")))
        return answer

    @staticmethod
    def pause(attempt: int, deadline: float) -> float | None:
        """The wait before the next attempt, or None when it would end past the deadline."""
        pause = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
        return None if time.monotonic() + pause >= deadline else pause

    def unreachable(self, org_id: str, user_id: str, model: str, reservation_id: str) -> dict[str, Any]:
        allowed = self.plans.fails_open(self.settings.reserve_when_unreachable, org_id, user_id)
        return {"reservation_id": reservation_id, "allowed": allowed, "model": model, "requested_model": model,
                "degraded": False, "reason": UNREACHABLE, "retry_after": None if allowed else 1.0, "held": "0",
                "expires_at": None, "plan": "", "state": "unreachable", "fail_open": allowed}


class _Decided:
    """The decision's fields, read-only."""

    org_id: str
    user_id: str
    _answer: dict[str, Any]

    @property
    def allowed(self) -> bool:
        return bool(self._answer["allowed"])

    @property
    def model(self) -> str:
        """The model to call: the requested one, or a cheaper one when degraded."""
        return str(self._answer["model"])

    @property
    def requested_model(self) -> str:
        return str(self._answer["requested_model"])

    @property
    def degraded(self) -> bool:
        return bool(self._answer["degraded"])

    @property
    def reason(self) -> str | None:
        """balance, concurrency, rate (refused, or why degraded), owner_unreachable; None when allowed as asked."""
        return self._answer.get("reason")

    @property
    def retry_after(self) -> float | None:
        return self._answer.get("retry_after")

    @property
    def reservation_id(self) -> str:
        return str(self._answer["reservation_id"])

    @property
    def held(self) -> Decimal:
        return Decimal(self._answer["held"])

    @property
    def fail_open(self) -> bool:
        """Allowed by the unreachable policy, with no worker's decision: the committed event says so."""
        return bool(self._answer.get("fail_open"))

    _endpoint: Endpoint
    _closed: bool

    def _release_url(self) -> str | None:
        """Closes the reservation; where to release its hold, or None when nothing is held
        (refused, or allowed without a worker's decision)."""
        self._closed = True
        if not self.allowed or self.fail_open:
            return None
        return self._endpoint.base_url + self._endpoint.path(self.org_id, self.user_id, self.reservation_id)

    def _must_release(self, kind: type[BaseException] | None) -> bool:
        """Leaving the block: release what is neither committed nor released, warning if no exception says why."""
        if self._closed:
            return False
        if kind is None and self.allowed:
            warnings.warn(f"reservation {self.reservation_id} left without commit or release: released",
                          ReservationWarning, stacklevel=3)
        return True

    def _commit_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        fields = {"request_id": self.reservation_id, **fields}
        if self.fail_open:
            fields["metadata"] = {**(fields.get("metadata") or {}), FAIL_OPEN_METADATA: "true"}
        return fields

    def __repr__(self) -> str:
        return f"<Reservation {self.reservation_id} allowed={self.allowed} model={self.model} reason={self.reason}>"


class Reservation(_Decided):
    """A decision of `Meter.reserve`; a context manager that releases what was not committed."""

    def __init__(self, endpoint: Endpoint, client: httpx.Client, meter: Any, org_id: str, user_id: str,
                 body: dict[str, Any]):
        self._endpoint, self._client, self._meter = endpoint, client, meter
        self.org_id, self.user_id = org_id, user_id
        self._closed = False
        self._answer = self._decide(body)

    def _decide(self, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self._endpoint.settings.reserve_deadline_seconds
        url = self._endpoint.base_url + self._endpoint.path(self.org_id, self.user_id)
        for attempt in range(1_000_000):
            try:
                response = self._client.post(url, json=body, headers=self._endpoint.headers,
                                             timeout=max(0.05, deadline - time.monotonic()))
                answer = self._endpoint.decided(self.org_id, self.user_id, response)
                if answer is not None:
                    return answer
            except httpx.TransportError:
                pass
            if (pause := self._endpoint.pause(attempt, deadline)) is None:
                break
            time.sleep(pause)
        return self._endpoint.unreachable(self.org_id, self.user_id, body["model"], body["reservation_id"])

    def commit(self, *args: Any, response: Any = None, **fields: Any) -> str:
        """Emit the actual usage (input_tokens, output_tokens, or a provider `response`) under the
        reservation id; the worker closes the hold when it counts it. Returns the request id."""
        fields = self._commit_fields(fields)
        self._closed = True
        model = fields.pop("model", self.model)
        if response is not None:
            return self._meter.record_response(self.org_id, self.user_id, response, model=model, **fields)
        return self._meter.emit(self.org_id, self.user_id, model, *args, **fields)

    def release(self) -> None:
        """Give the hold back (the call did not happen). Twice is harmless."""
        if (url := self._release_url()) is None:
            return
        try:
            self._client.delete(url, headers=self._endpoint.headers, timeout=self._endpoint.settings.reserve_deadline_seconds)
        except httpx.TransportError:
            pass  # the hold's TTL releases it

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_rest: object) -> Literal[False]:
        if self._must_release(kind):
            self.release()
        return False


class AsyncReservation(_Decided):
    """`AsyncMeter.reserve`: ``async with meter.reserve(...) as r`` (or ``r = await meter.reserve(...)``)."""

    def __init__(self, endpoint: Endpoint, client: httpx.AsyncClient, meter: Any, org_id: str,
                 user_id: str, body: dict[str, Any]):
        self._endpoint, self._client, self._meter = endpoint, client, meter
        self.org_id, self.user_id = org_id, user_id
        self._body = body
        self._closed = False
        self._answer: dict[str, Any] = {}

    async def _decide(self) -> AsyncReservation:
        if self._answer:  # decided already (`await`, then `async with`)
            return self
        endpoint, body = self._endpoint, self._body
        deadline = time.monotonic() + endpoint.settings.reserve_deadline_seconds
        url = endpoint.base_url + endpoint.path(self.org_id, self.user_id)
        for attempt in range(1_000_000):
            try:
                response = await self._client.post(url, json=body, headers=endpoint.headers,
                                                   timeout=max(0.05, deadline - time.monotonic()))
                answer = endpoint.decided(self.org_id, self.user_id, response)
                if answer is not None:
                    self._answer = answer
                    return self
            except httpx.TransportError:
                pass
            if (pause := endpoint.pause(attempt, deadline)) is None:
                break
            await asyncio.sleep(pause)
        self._answer = endpoint.unreachable(self.org_id, self.user_id, body["model"], body["reservation_id"])
        return self

    def __await__(self) -> Any:
        return self._decide().__await__()

    async def commit(self, *args: Any, response: Any = None, **fields: Any) -> str:
        """As `Reservation.commit`; awaits what `AsyncMeter.emit` awaits."""
        fields = self._commit_fields(fields)
        self._closed = True
        model = fields.pop("model", self.model)
        if response is not None:
            return await self._meter.record_response(self.org_id, self.user_id, response, model=model, **fields)
        return await self._meter.emit(self.org_id, self.user_id, model, *args, **fields)

    async def release(self) -> None:
        """As `Reservation.release`."""
        if (url := self._release_url()) is None:
            return
        try:
            await self._client.delete(url, headers=self._endpoint.headers, timeout=self._endpoint.settings.reserve_deadline_seconds)
        except httpx.TransportError:
            pass

    async def __aenter__(self) -> AsyncReservation:
        return await self._decide()

    async def __aexit__(self, kind: type[BaseException] | None, *_rest: object) -> Literal[False]:
        if self._must_release(kind):
            await self.release()
        return False


def reservation_body(model: str, estimate: Any, input_tokens: int | None, output_tokens: int | None,
                     ttl_seconds: float | None, reservation_id: str | None) -> dict[str, Any]:
    return Endpoint.body(model, estimate, input_tokens, output_tokens, ttl_seconds, reservation_id or new_request_id())

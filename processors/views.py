"""HTTP views on the worker: the live balance API, routed to the partition's owner."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import faust
from aiohttp import ClientError, ClientTimeout, web
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from meterline.auth import balance_refusal, operator_key, org_key_refusal, same_key
from meterline.processors.accounts import OrgShare, org_share
from meterline.processors.enforcement import check_subject, parse_reserve
from meterline.processors.pools import PoolState, pool_key
from meterline.processors.state import UserState
from meterline.schemas import InvalidEventError
from meterline.stack import broker_answers

if TYPE_CHECKING:
    from meterline.processors.app import Engine

RETRY = {"Retry-After": "1"}
OWNER_HEADER = "Meterline-Owner"  # the worker that decided: a client may ask it directly next time


def _bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


def serving(app: faust.App) -> bool:
    """Whether this worker's tables hold every partition it owns.

    Faust starts its web server before it has its partitions and recovered their tables: a
    balance read then would be a false zero, and a client enforcing a cap would let users through.
    """
    return not app.rebalancing and not app.in_recovery and app.tables.recovery.completed.is_set()


STREAM_KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream


def _base_url(url: object) -> str:
    """A worker's URL as Faust gives it (a yarl URL or text, with or without a final slash), comparable."""
    return str(url).rstrip("/")


def openapi_document() -> dict[str, Any]:
    return json.loads(resources.files("meterline.processors").joinpath("openapi.json").read_text())


def balance_body(engine: Engine, org_id: str, user_id: str) -> dict[str, Any]:
    """The balance API's answer for one user of this worker's partitions."""
    key = f"{org_id}/{user_id}".encode()
    state = engine.state_of(key)
    now = datetime.now(timezone.utc)
    return {
        "org_id": org_id, "user_id": user_id, **engine.accounts.balance(org_id, user_id, state.account, now),
        "credits_used": str(state.credits_used), "events": state.events,  # lifetime
        "reserved": str(engine.enforcer.holds_of(key).held(now.timestamp())),  # open reservations hold this much
        # How fresh the number is: the latest event time applied, and how long after it the
        # worker applied it (None: no event yet).
        "as_of": datetime.fromtimestamp(state.as_of, timezone.utc).isoformat() if state.events else None,
        "lag_ms": round((state.applied_at - state.as_of) * 1000) if state.events else None,
    }


def invalid(view: View, what: str, error: InvalidEventError) -> Response:
    return view.json({"error": f"{what}: " + "; ".join(str(p) for p in error.problems),
                      "problems": [{"field": p.field, "rule": p.rule} for p in error.problems]}, status=400)


def register_views(app: faust.App, engine: Engine, secret: str) -> None:
    def bad_subject(view: View, org_id: str, user_id: str) -> Response | None:
        """400 for an org or user id no event could carry (the account code would fail on it)."""
        try:
            check_subject(org_id, user_id)
            return None
        except InvalidEventError as error:
            return invalid(view, "invalid path", error)

    def refused(view: View, request: Request, org_id: str, user_id: str) -> Response | None:
        if (bad := bad_subject(view, org_id, user_id)) is not None:
            return bad
        refusal = balance_refusal(secret, _bearer(request), org_id, user_id, time.time(),
                                  engine.revocations.revoked_before_ms(org_id))
        return None if refusal is None else view.json({"error": refusal}, status=401)

    def here() -> str:
        return _base_url(app.conf.canonical_url)

    def owner_of(key: bytes) -> str | None:
        """The base URL of the worker that owns `key`'s partition; None while no one is known to."""
        try:
            return _base_url(app.router.key_store(engine.states.name, key))
        except (KeyError, TypeError):
            return None

    def rebalancing(view: View) -> Response:
        # No assignment yet (starting or rebalancing): the owner is unknown for a moment.
        return view.json({"error": "rebalancing, retry shortly"}, status=503, headers=RETRY)

    def unavailable(view: View) -> Response | None:
        # Before the subscriptions are read, a subscribed user would show the default plan's numbers.
        if not serving(app) or not engine.feeds_read:
            return view.json({"error": "recovering state, retry shortly"}, status=503, headers=RETRY)
        return None

    @app.page("/v1/orgs/{org_id}/users/{user_id}/balance")
    class BalanceView(View):
        async def get(self, request: Request, org_id: str, user_id: str) -> Response:
            if (refusal := refused(self, request, org_id, user_id)) is not None:
                return refusal
            try:
                return await app.router.route_req(engine.states.name, f"{org_id}/{user_id}".encode(), self.web, request)
            except SameNode:
                pass  # this worker owns the user's partition: answer from the local table
            except (KeyError, TypeError, ServiceUnavailable):
                return rebalancing(self)
            return unavailable(self) or self.json(balance_body(engine, org_id, user_id))

    @app.page("/v1/orgs/{org_id}/users/{user_id}/balance/stream")
    class BalanceStreamView(View):
        """Server-sent events: the balance now, then again after every batch that changes it.

        Served by the owner of the user's partition; another worker redirects there (307). The
        stream ends when the partition moves to another worker: reconnect, and the new owner answers.
        """

        async def get(self, request: Request, org_id: str, user_id: str) -> Any:
            if (refusal := refused(self, request, org_id, user_id)) is not None:
                return refusal
            key = f"{org_id}/{user_id}".encode()
            owner = owner_of(key)
            if owner is None:
                return rebalancing(self)
            if owner != here():
                return self.json({"owner": owner}, status=307, headers={"Location": owner + str(request.rel_url)})
            if (busy := unavailable(self)) is not None:
                return busy
            return await self._stream(request, key, org_id, user_id)

        async def _stream(self, request: Any, key: bytes, org_id: str, user_id: str) -> Any:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            changes = engine.watch(key)
            try:
                while True:
                    body = json.dumps(balance_body(engine, org_id, user_id))
                    await response.write(f"event: balance\ndata: {body}\n\n".encode())
                    while True:
                        try:
                            await asyncio.wait_for(changes.get(), STREAM_KEEPALIVE_SECONDS)
                            break
                        except asyncio.TimeoutError:
                            await response.write(b": keep-alive\n\n")
                    if owner_of(key) != here() or not serving(app):
                        await response.write(b"event: moved\ndata: {}\n\n")  # reconnect: another owner now
                        break
            except ConnectionResetError:
                pass  # the client went away
            finally:
                engine.unwatch(key, changes)
            return response

    def org_refused(view: View, request: Request, org_id: str) -> Response | None:
        refusal = org_key_refusal(secret, _bearer(request), org_id, engine.revocations.revoked_before_ms(org_id))
        return None if refusal is None else view.json({"error": refusal}, status=401)

    @app.page("/v1/orgs/{org_id}/balance")
    class OrgBalanceView(View):
        """The org's total over every worker's users, and its pool's current cycle when it has a subscription.

        Asks each worker for its share (this one included); if any cannot answer, or the shares do
        not cover every partition exactly once, the answer is 503: never a partial sum as a total.
        """

        async def get(self, request: Request, org_id: str) -> Response:
            if (refusal := org_refused(self, request, org_id)) is not None:
                return refusal
            hosts = app.router.table_metadata(engine.states.name)
            share, covered, pool = OrgShare(), [], PoolState()
            for host in hosts:
                url = _base_url(host)
                if url == here():
                    if (busy := unavailable(self)) is not None:
                        return busy
                    answer = local_share(org_id)
                else:
                    answer = await remote_share(url, org_id, request)
                    if answer is None:
                        return self.json({"error": f"worker {url} did not answer, retry shortly"}, status=503, headers=RETRY)
                share += OrgShare.from_json(answer["share"])
                covered += answer["partitions"]
                if answer.get("pool"):  # from the owner of the org's partition, the pool's single writer
                    pool = PoolState.from_bytes(answer["pool"].encode())
            if sorted(covered) != list(range(engine.settings.partitions)):
                return rebalancing(self)
            now = datetime.now(timezone.utc)
            return self.json({"org_id": org_id, **share.to_json(), "pool": engine.accounts.pool_view(org_id, pool.account, now)})

    @app.page("/v1/internal/orgs/{org_id}/share")
    class OrgShareView(View):
        """This worker's share of an org (OrgBalanceView asks every worker for it)."""

        async def get(self, request: Request, org_id: str) -> Response:
            if (refusal := org_refused(self, request, org_id)) is not None:
                return refusal
            return unavailable(self) or self.json(local_share(org_id))

    def local_share(org_id: str) -> dict[str, Any]:
        assigned = [found for host, found in app.router.table_metadata(engine.states.name).items()
                    if _base_url(host) == here()]
        partitions = sorted({p for found in assigned for topic_partitions in found.values() for p in topic_partitions})
        prefix = f"{org_id}/".encode()
        # A scan of this worker's users: an org's balance is asked far less often than a user's.
        states = (UserState.from_bytes(raw) for key, raw in list(engine.states.data.data.items()) if key.startswith(prefix))
        pool = engine.states.data.data.get(pool_key(org_id))
        return {"partitions": partitions, "pool": pool.decode() if pool else None,
                "share": org_share(engine.accounts, org_id, states, datetime.now(timezone.utc)).to_json()}

    async def remote_share(url: str, org_id: str, request: Request) -> dict[str, Any] | None:
        try:
            async with app.http_client.get(f"{url}/v1/internal/orgs/{quote(org_id, safe='')}/share",
                                           headers={"Authorization": request.headers.get("Authorization", "")},
                                           timeout=ClientTimeout(total=5)) as response:
                return await response.json() if response.status == 200 else None
        except (OSError, asyncio.TimeoutError, ClientError):
            return None

    async def forwarded(view: View, request: Request, key: bytes) -> Response | None:
        """None when this worker owns `key`'s partition; else the owner's answer to the same request.

        Faust's own routing forwards no request body, so a reservation is forwarded here.
        """
        owner = owner_of(key)
        if owner is None:
            return rebalancing(view)
        if owner == here():
            return unavailable(view)
        body = await request.read()
        try:
            async with app.http_client.request(request.method, owner + str(request.rel_url), data=body,
                                               headers={"Authorization": request.headers.get("Authorization", ""),
                                                        "Content-Type": "application/json"},
                                               timeout=ClientTimeout(total=5)) as response:
                return view.text(await response.text(), content_type=response.content_type, status=response.status,
                                 headers={OWNER_HEADER: owner})
        except (OSError, asyncio.TimeoutError, ClientError):
            return view.json({"error": f"the owner {owner} did not answer, retry shortly"}, status=503, headers=RETRY)

    async def refused_or_elsewhere(view: View, request: Request, org_id: str, user_id: str) -> tuple[Response | None, bytes]:
        """A refusal (bad path, not the org's key) or the owner's answer; else None and the key of
        the holds this worker decides on (the user's, or the org pool's)."""
        if (refusal := bad_subject(view, org_id, user_id) or org_refused(view, request, org_id)) is not None:
            return refusal, b""
        key = engine.enforcer.holds_key(org_id, user_id)
        return await forwarded(view, request, key), key

    @app.page("/v1/orgs/{org_id}/users/{user_id}/reservations")
    class ReservationsView(View):
        """POST: reserve (decide and hold, processors/holds.py); GET: the user's open holds. The org key only."""

        async def post(self, request: Request, org_id: str, user_id: str) -> Response:
            answer, key = await refused_or_elsewhere(self, request, org_id, user_id)
            if answer is not None:
                return answer
            try:
                body = parse_reserve(await request.read())
                decision = await engine.enforcer.reserve(org_id, user_id, key, body)
            except InvalidEventError as error:
                return invalid(self, "invalid reservation", error)
            return self.json(decision.to_json(), headers={OWNER_HEADER: here()})

        async def get(self, request: Request, org_id: str, user_id: str) -> Response:
            answer, key = await refused_or_elsewhere(self, request, org_id, user_id)
            return answer or self.json(engine.enforcer.view(org_id, user_id, key))

    @app.page("/v1/orgs/{org_id}/users/{user_id}/reservations/{reservation_id}")
    class ReservationView(View):
        """DELETE: release the hold (twice, or after its commit, is harmless)."""

        async def delete(self, request: Request, org_id: str, user_id: str, reservation_id: str) -> Response:
            answer, key = await refused_or_elsewhere(self, request, org_id, user_id)
            return answer or self.json(await engine.enforcer.release(key, reservation_id))

    @app.page("/v1/worker/stats")
    class WorkerStatsView(View):
        """This worker's counters (applied, duplicates, conflicts, replayed, dead-lettered, ids), for operators."""

        async def get(self, request: Request) -> Response:
            if not same_key(_bearer(request), operator_key(secret)):
                return self.json({"error": "the operator key is required"}, status=401)
            return self.json(engine.stats())

    @app.page("/openapi.json")
    class OpenApiView(View):
        """The API's OpenAPI document (processors/openapi.json, committed beside this file)."""

        async def get(self, request: Request) -> Response:
            return self.json(openapi_document())

    @app.page("/healthz")
    class HealthView(View):
        """Anyone may ask: whether this worker serves balances, and whether it reaches its broker."""

        async def get(self, request: Request) -> Response:
            broker = await asyncio.to_thread(broker_answers, engine.settings, 1.0)  # a blocking metadata request
            return self.json({"ok": True, "serving": serving(app), "state_restored": app.tables.recovery.completed.is_set(),
                              "broker_reachable": broker})

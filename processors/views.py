"""HTTP views on the worker: the live balance API, routed to the partition's owner."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from meterline.auth import balance_refusal, operator_key, same_key
from meterline.stack import broker_answers

if TYPE_CHECKING:
    from meterline.processors.app import Engine

RETRY = {"Retry-After": "1"}


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


def balance_body(engine: Engine, org_id: str, user_id: str) -> dict[str, Any]:
    """The balance API's answer for one user of this worker's partitions."""
    state = engine.state_of(f"{org_id}/{user_id}".encode())
    now = datetime.now(timezone.utc)
    return {
        "org_id": org_id, "user_id": user_id, **engine.accounts.balance(org_id, user_id, state.account, now),
        "credits_used": str(state.credits_used), "events": state.events,  # lifetime
        # How fresh the number is: the latest event time applied, and how long after it the
        # worker applied it (None: no event yet).
        "as_of": datetime.fromtimestamp(state.as_of, timezone.utc).isoformat() if state.events else None,
        "lag_ms": round((state.applied_at - state.as_of) * 1000) if state.events else None,
    }


def register_views(app: faust.App, engine: Engine, secret: str) -> None:
    def refused(view: View, request: Request, org_id: str, user_id: str) -> Response | None:
        refusal = balance_refusal(secret, _bearer(request), org_id, user_id, time.time())
        return None if refusal is None else view.json({"error": refusal}, status=401)

    def here() -> str:
        return str(app.conf.canonical_url).rstrip("/")

    def owner_of(key: bytes) -> str | None:
        """The base URL of the worker that owns `key`'s partition; None while no one is known to."""
        try:
            return str(app.router.key_store(engine.states.name, key)).rstrip("/")
        except (KeyError, TypeError):
            return None

    def unavailable(view: View) -> Response | None:
        if not serving(app):
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
                # No assignment yet (starting or rebalancing): the owner is unknown for a moment.
                return self.json({"error": "rebalancing, retry shortly"}, status=503, headers=RETRY)
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
                return self.json({"error": "rebalancing, retry shortly"}, status=503, headers=RETRY)
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

    @app.page("/v1/worker/stats")
    class WorkerStatsView(View):
        """This worker's counters (applied, duplicates, conflicts, replayed, dead-lettered, ids), for operators."""

        async def get(self, request: Request) -> Response:
            if not same_key(_bearer(request), operator_key(secret)):
                return self.json({"error": "the operator key is required"}, status=401)
            return self.json(engine.stats())

    @app.page("/healthz")
    class HealthView(View):
        """Anyone may ask: whether this worker serves balances, and whether it reaches its broker."""

        async def get(self, request: Request) -> Response:
            broker = await asyncio.to_thread(broker_answers, engine.settings, 1.0)  # a blocking metadata request
            return self.json({"ok": True, "serving": serving(app), "state_restored": app.tables.recovery.completed.is_set(),
                              "broker_reachable": broker})

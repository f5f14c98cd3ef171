"""HTTP views on the worker: the live balance API, routed to the partition's owner."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import faust
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


def register_views(app: faust.App, engine: Engine, secret: str) -> None:
    @app.page("/v1/orgs/{org_id}/users/{user_id}/balance")
    class BalanceView(View):
        async def get(self, request: Request, org_id: str, user_id: str) -> Response:
            refusal = balance_refusal(secret, _bearer(request), org_id, user_id, time.time())
            if refusal is not None:
                return self.json({"error": refusal}, status=401)
            key = f"{org_id}/{user_id}".encode()
            try:
                return await app.router.route_req(engine.states.name, key, self.web, request)
            except SameNode:
                pass  # this worker owns the user's partition: answer from the local table
            except (KeyError, TypeError, ServiceUnavailable):
                # No assignment yet (starting or rebalancing): the owner is unknown for a moment.
                return self.json({"error": "rebalancing, retry shortly"}, status=503, headers=RETRY)
            if not serving(app):
                return self.json({"error": "recovering state, retry shortly"}, status=503, headers=RETRY)
            state = engine.state_of(key)
            now = time.time()
            account = engine.accounts.balance(org_id, user_id, state.account, datetime.fromtimestamp(now, timezone.utc))
            return self.json({
                "org_id": org_id, "user_id": user_id, **account,
                "credits_used": str(state.credits_used), "events": state.events,  # lifetime
                # How fresh the number is: the latest event time applied, and how long after it the
                # worker applied it (None: no event yet).
                "as_of": datetime.fromtimestamp(state.as_of, timezone.utc).isoformat() if state.events else None,
                "lag_ms": round((state.applied_at - state.as_of) * 1000) if state.events else None,
            })

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

"""HTTP views on the worker: the live balance API, routed to the partition's owner."""

from __future__ import annotations

from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from meterline.auth import may_read_balance, operator_key, resolve_secret, same_key
from meterline.processors.agents import counters
from meterline.processors.app import app, balances, settings
from meterline.processors.ledger import Balance

_secret = resolve_secret(settings)


def _bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


@app.page("/v1/orgs/{org_id}/users/{user_id}/balance")
class BalanceView(View):
    async def get(self, request: Request, org_id: str, user_id: str) -> Response:
        if not may_read_balance(_secret, _bearer(request), org_id, user_id):
            return self.json({"error": "an org API key or this user's token is required"}, status=401)
        key = f"{org_id}/{user_id}".encode()
        try:
            return await app.router.route_req(balances.name, key, self.web, request)
        except SameNode:
            pass  # this worker owns the user's partition: answer from the local table
        except (KeyError, TypeError, ServiceUnavailable):
            # No assignment yet (starting or rebalancing): the owner is unknown for a moment.
            return self.json({"error": "rebalancing, retry shortly"}, status=503, headers={"Retry-After": "1"})
        balance = Balance.from_json(balances.get(key))
        return self.json(
            {
                "org_id": org_id,
                "user_id": user_id,
                "credits_used": str(balance.credits_used),
                "events": balance.events,
            }
        )


@app.page("/v1/worker/stats")
class WorkerStatsView(View):
    """This worker's event counters (counted, duplicates, replayed, dead-lettered), for operators."""

    async def get(self, request: Request) -> Response:
        if not same_key(_bearer(request), operator_key(_secret)):
            return self.json({"error": "the operator key is required"}, status=401)
        return self.json(counters)


@app.page("/healthz")
class HealthView(View):
    async def get(self, request: Request) -> Response:
        return self.json({"ok": True})

"""A household's own ledger entries over HTTP (``kyojo ledger serve-http``), for its gateway's home page.

``GET /ledger/v1/accounts/<account>`` answers the account's entries (its join and leave, its orders and meter
reports, the clearings and settlements that name it), its token balance, the ledger's head and its key entries
(``ledger_keys``: the genesis and every ``key`` entry, whose certificates the city CA issued, so the gateway can
check the city's signatures on the household's entries; :mod:`edge_agent.ledger_check`), as JSON. Only the
account's holder may ask: the request carries ``X-Kyojo-At`` (epoch seconds, within :data:`SKEW_S` of the server's
clock) and ``X-Kyojo-Sig``, the account's trading key's Ed25519 signature over :func:`read_challenge` (the gateway
makes both with :func:`edge_agent.trading.read_headers`). Anything else is 401, the same answer for an unknown
account as for a bad signature. Run it behind the city's TLS proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_ingest.ledger.chain import ed25519_ok
from cloud_ingest.ledger.store import LedgerStore
from kyojo.contract.wire import read_challenge

__all__ = ["SKEW_S", "create_app"]

SKEW_S = 300


def create_app(store: LedgerStore, clock: Callable[[], float] = time.time) -> Starlette:
    """The read API over ``store`` (its queries run in the thread pool)."""

    def _answer(account: str, at: str, sig: str) -> tuple[int, dict[str, object]]:
        key = store.account_key(account)
        if key is None or not at.isdigit() or abs(int(at) - clock()) > SKEW_S:
            return 401, {"error": "unauthorized"}
        if not ed25519_ok(key, read_challenge(account, int(at)), sig):
            return 401, {"error": "unauthorized"}
        seq, digest = store.head()
        entries = [e.to_json() for e in store.entries_for(account)]
        keys = [e.to_json() for e in store.key_entries()]
        return 200, {"account": account, "balance_wh": store.balances().get(account, 0), "head": f"{seq}:{digest}",
                     "entries": entries, "ledger_keys": keys}  # fmt: skip

    async def account(request: Request) -> Response:
        name = request.path_params["account"]
        at = request.headers.get("x-kyojo-at", "")
        sig = request.headers.get("x-kyojo-sig", "")
        status, doc = await run_in_threadpool(_answer, name, at, sig)
        return JSONResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        seq, _ = await run_in_threadpool(store.head)
        return JSONResponse({"ok": True, "entries": seq})

    return Starlette(routes=[Route("/ledger/v1/accounts/{account}", account), Route("/healthz", health)])

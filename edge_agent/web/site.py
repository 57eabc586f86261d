"""What every page needs: the gateway's config, its database, the web database, and who is asking.

``request.app.state.site`` is the :class:`Site`; pages use :func:`site_of`, :func:`session_of`,
:func:`agent_db` and :func:`lang_of` rather than reaching into the scope.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from edge_agent.config import AgentConfig, load_config
from edge_agent.consent import Catalog, ConsentStore, default_catalog, open_store
from edge_agent.db import connect
from edge_agent.web import auth
from edge_agent.web.auth import AuthStore, Session


@dataclass
class Site:
    """One gateway's household page."""

    config_path: Path
    config: AgentConfig
    web_db: sqlite3.Connection
    auth: AuthStore
    now: Callable[[], float] = time.time
    #: the purpose catalog the household is shown (the agent's: the one shipped with it; tests swap in others)
    catalog: Catalog = field(default_factory=default_catalog)
    #: what went wrong with the city's services the page reads (``ledger:unreachable`` ...), for the logs and tests
    counts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def open(cls, config_path: Path, *, now: Callable[[], float] = time.time) -> Site:
        cfg = load_config(config_path)
        web_db = auth.connect(cfg.gateway.data_dir)
        store = AuthStore(
            web_db,
            code_ttl=cfg.web.code_ttl,
            session_idle=cfg.web.session_idle,
            max_failures=cfg.web.max_failures,
            lockout=cfg.web.lockout,
            now=now,
        )
        return cls(config_path, cfg, web_db, store, now)

    @contextlib.contextmanager
    def agent_db(self) -> Iterator[sqlite3.Connection]:
        """A connection to the agent's database (the same file and code paths as the ``kyojo`` commands)."""
        conn = connect(self.config.db_path)
        try:
            yield conn
        finally:
            conn.close()

    def gateway_now(self) -> float:
        """The agent's clock (:func:`edge_agent.config.gateway_now`): a consent given here starts when the agent's
        windows do, also under a simulated ``[clock]``."""
        from edge_agent.config import gateway_now

        return gateway_now(self.config, self.now())

    def consent_store(self, conn: sqlite3.Connection) -> ConsentStore:
        """The same store ``kyojo consent`` uses (:func:`edge_agent.consent.open_store`), on this site's catalog."""
        store = open_store(self.config, conn)
        store.catalog = self.catalog
        return store

    def close(self) -> None:
        self.web_db.close()


def site_of(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


def session_of(request: Request) -> Session:
    """The signed-in session (the guard lets no request without one reach a page that is not public)."""
    session: Session | None = request.state.session
    if session is None:  # pragma: no cover - the guard answered already
        raise PermissionError("no session")
    return session


def lang_of(request: Request) -> str:
    return str(getattr(request.state, "lang", "ja"))

"""The household web app: ``create_app(config_path)`` -> a Starlette app served by ``kyojo web serve``.

Server-rendered pages (Jinja2 + gettext), htmx where it helps, every asset served from the package. Each module
in :mod:`edge_agent.web.pages` exposes ``routes``; they are collected here in name order, so a new page is a new
module and nothing else. :class:`~edge_agent.web.guard.Guard` wraps them all (session, CSRF, headers).

The web process never releases data: it reads the agent's database and acts through the same functions as the
``kyojo`` commands (consent store, audit log, alerts); releases stay in the agent's pipeline.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from edge_agent.web import pages
from edge_agent.web.guard import Guard
from edge_agent.web.site import Site
from edge_agent.web.templating import STATIC, render
from kyojo.style import PACKAGE_STATIC

log = logging.getLogger(__name__)


def page_routes() -> list[BaseRoute]:
    """The routes of every module in :mod:`edge_agent.web.pages`."""
    routes: list[BaseRoute] = []
    for info in sorted(pkgutil.iter_modules(pages.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pages.__name__}.{info.name}")
        routes += list(getattr(module, "routes", []))
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else ""
    return render(request, "error.html", {"status": status, "detail": detail}, status_code=status)


def _lifespan(site: Site) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            site.close()

    return lifespan


def create_app(config_path: Path, *, now: Callable[[], float] = time.time) -> Starlette:
    """The household page of the gateway that ``config_path`` (the agent's TOML) describes."""
    site = Site.open(config_path, now=now)
    # /static/: this app's own files, and the stylesheet it shares with the city's public pages (kyojo.style)
    static = StaticFiles(directory=STATIC, packages=[PACKAGE_STATIC])
    routes = [*page_routes(), Mount("/static", app=static, name="static")]
    guard = Middleware(Guard, auth=lambda: site.auth, secure=site.config.web.tls is not None)
    app = Starlette(
        routes=routes,
        middleware=[guard],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=_lifespan(site),
    )
    app.state.site = site
    return app


__all__ = ["create_app", "page_routes"]

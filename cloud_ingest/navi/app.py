"""The navigator's web app: a public, read-only page (Japanese first, English too, phone first, no script),
``/api/status`` (JSON) and ``/api/route.geojson``.

The page uses Kyojo's one stylesheet (:mod:`kyojo.style`, the household page's) and the same gettext catalogs
(:mod:`kyojo.i18n`). It does not refresh itself (a timed refresh fails WCAG 2.2.1): its Update button reloads it.
``?point=<id>`` puts a resident's own collection point on top, ``?lang=en`` switches to English. The route is drawn
as an outline of its points (server-side SVG, no map tiles: it works offline).
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette import routing
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_ingest.influx import InfluxError
from cloud_ingest.navi.routes import Route, geojson
from cloud_ingest.navi.service import Navigator, Snapshot
from kyojo.i18n import LANGS, translations
from kyojo.style import PACKAGE_STATIC

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
#: no script, no frame, nothing from elsewhere
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def environment(lang: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "xml"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


def outline(route: Route, statuses: dict[str, str], size: float = 320.0, margin: float = 20.0) -> dict[str, Any]:
    """The route's points projected into an SVG square (equirectangular around the route's centre; north up)."""
    lat0 = sum(p.lat for p in route.points) / len(route.points)
    k = math.cos(math.radians(lat0))
    xs = [p.lon * k for p in route.points]
    ys = [p.lat for p in route.points]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1e-6
    scale = (size - 2 * margin) / span
    x0 = min(xs) - ((size - 2 * margin) / scale - (max(xs) - min(xs))) / 2
    y1 = max(ys) + ((size - 2 * margin) / scale - (max(ys) - min(ys))) / 2
    dots = [
        {
            "id": p.id,
            "name": p.name,
            "order": i + 1,
            "x": round(margin + (x - x0) * scale, 1),
            "y": round(margin + (y1 - y) * scale, 1),
            "status": statuses.get(p.id, "not_yet"),
        }
        for i, (p, x, y) in enumerate(zip(route.points, xs, ys, strict=True))
    ]
    path = " ".join(f"{d['x']},{d['y']}" for d in dots)
    return {"size": size, "dots": dots, "path": path}


def _lang(request: Request) -> str:
    lang = request.query_params.get("lang", "ja")
    return lang if lang in LANGS else "ja"


class _Headers:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    *((k.lower().encode(), v.encode()) for k, v in HEADERS.items()),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(navigator: Navigator) -> ASGIApp:
    """The navigator's ASGI app over ``navigator`` (whose InfluxDB queries run in the thread pool)."""

    async def snapshot() -> Snapshot | None:
        try:
            snap: Snapshot = await run_in_threadpool(navigator.snapshot)
        except InfluxError:
            return None
        return snap

    async def page(request: Request) -> Response:
        lang = _lang(request)
        env = environment(lang)
        snap = await snapshot()
        if snap is None:
            other = "en" if lang == "ja" else "ja"
            html = env.get_template("unavailable.html").render(lang=lang, other_lang=other, switch=f"?lang={other}")
            return HTMLResponse(html, status_code=503, headers={"Retry-After": "60"})
        doc = navigator.status_json(snap)
        chosen = request.query_params.get("point")
        mine = None
        routes = []
        for r in doc["routes"]:
            route = navigator.routes[r["route"]]
            statuses = {p["id"]: p["status"] for p in r["points"]}
            for p in r["points"]:
                if p["id"] == chosen:
                    mine = p
            routes.append({**r, "outline": outline(route, statuses)})
        other = "en" if lang == "ja" else "ja"
        keep = {"point": chosen} if mine else {}
        switch = "?" + urlencode({"lang": other, **keep})
        html = env.get_template("navi.html").render(
            lang=lang,
            doc=doc,
            routes=routes,
            mine=mine,
            chosen=chosen if mine else None,
            switch=switch,
            other_lang=other,
            here=urlencode({"lang": lang, **keep}),
        )
        return HTMLResponse(html)

    async def status(request: Request) -> Response:
        snap = await snapshot()
        if snap is None:
            return JSONResponse({"error": "unavailable"}, status_code=503, headers={"Retry-After": "60"})
        return JSONResponse(navigator.status_json(snap), headers={"Cache-Control": "public, max-age=15"})

    async def route_geojson(request: Request) -> Response:
        return JSONResponse(geojson(navigator.routes), media_type="application/geo+json")

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "errors": navigator.errors, "rounds": navigator.model.rounds})

    app = Starlette(
        routes=[
            routing.Route("/", page),
            routing.Route("/api/status", status),
            routing.Route("/api/route.geojson", route_geojson),
            # navi.css, and kyojo.css: the household page's stylesheet (kyojo.style)
            routing.Mount("/static", app=StaticFiles(directory=STATIC, packages=[PACKAGE_STATIC])),
            routing.Route("/healthz", health),
        ]
    )
    app.state.navigator = navigator
    return _Headers(app)

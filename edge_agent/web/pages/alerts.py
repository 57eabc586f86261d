"""``/alerts``: each health alert with its guideline, the measured values, what to do, and an acknowledge button;
per person, a small chart of the measurements behind their alerts.

The alerts are the health processor's events (kind ``alert.<kind>``, one row per update, folded by ``alert_id`` as
``kyojo alerts list`` does); acknowledging writes ``alert_acks`` as ``kyojo alerts ack`` does. The chart's values
come from the raw store and are rendered into the page by the gateway itself: raw values never leave the home
to draw it (no third party, no cloud call; the page is served on the home LAN). Nothing here logs a value.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent.web import household
from edge_agent.web.alerting import acknowledge, advice, list_alerts, metric_label
from edge_agent.web.pages.energy import read_range, tz_offset_s
from edge_agent.web.site import site_of
from edge_agent.web.templating import gettext, render
from kyojo.contract.vocab import METRICS

#: how far back the per-person chart reaches (the raw store keeps 14 days by default)
HISTORY_DAYS = 14
#: metrics drawn together with an alert's metric (blood pressure: both numbers)
COMPANIONS = {"systolic": ("systolic", "diastolic"), "diastolic": ("systolic", "diastolic")}


def measurements(
    conn: sqlite3.Connection,
    key_db: str,
    person: str,
    metrics: list[str],
    since_ms: int,
    now_ms: int,
    label: Callable[[str], str] = str,
) -> dict[str, Any]:
    """The person's raw values of ``metrics`` since ``since_ms`` as hourly means (at most 24 x HISTORY_DAYS points
    per metric), as one uPlot document (x in epoch s). Settled hours are cached (see the energy page)."""
    marks = ",".join("?" * len(metrics))
    series = {
        int(i): str(m)
        for i, m in conn.execute(
            f"SELECT id, metric FROM series WHERE subject = ? AND metric IN ({marks})",  # noqa: S608
            (person, *metrics),
        )
    }
    doc = read_range(conn, key_db, frozenset(series), since_ms, now_ms, 3600, now_ms) if series else {}
    lines = {series[sid]: dict(pts) for sid, (pts, _, _) in doc.items() if pts}
    xs = sorted({t for pts in lines.values() for t in pts})
    return {
        "x": [t // 1000 for t in xs],
        "series": [
            {"label": label(m), "values": [None if t not in pts else round(pts[t], 1) for t in xs]}
            for m, pts in sorted(lines.items())
        ],
        "unit": METRICS[metrics[0]].unit if metrics and metrics[0] in METRICS else "",
        "bucket_s": 3600,
        "tz_offset_s": tz_offset_s(),
    }


async def alerts_page(request: Request) -> Response:
    site = site_of(request)
    _ = gettext(request)
    person = request.query_params.get("person") or None
    now = site.now()
    with site.agent_db() as conn:
        views = list_alerts(conn, person)
        people = {p.id: p.label for p in household.people(site.web_db, site.config, conn)}
        persons = sorted({v.person for v in views}, key=lambda p: (p not in people, p))
        since = int((now - HISTORY_DAYS * 86_400) * 1000)
        groups = []
        for p in persons:
            mine = [v for v in views if v.person == p]
            metrics: list[str] = []
            for v in mine:
                for m in COMPANIONS.get(v.metric, (v.metric,)):
                    if m and m not in metrics:
                        metrics.append(m)
            chart = None
            if metrics:
                key_db = str(site.config.db_path)
                chart = measurements(conn, key_db, p, metrics, since, int(now * 1000), lambda m: metric_label(_, m))
            if chart is not None:
                chart["title"] = _("Measurements of the last %(days)d days") % {"days": HISTORY_DAYS}
                chart["markers"] = [v.started_ms // 1000 for v in mine if v.started_ms >= since]
            groups.append(
                {
                    "person": p,
                    "name": people.get(p, p),
                    "chart": chart if chart and chart["x"] else None,
                    "alerts": [{"v": v, **advice(_, v)} for v in mine],
                }
            )
    return render(
        request,
        "alerts.html",
        {
            "groups": groups,
            "person": person,
            "people": people,
            "open": sum(1 for v in views if v.state == "open"),
        },
    )


async def ack(request: Request) -> Response:
    site = site_of(request)
    alert_id = request.path_params["alert_id"]
    with site.agent_db() as conn:
        ok = acknowledge(conn, alert_id, int(datetime.now(UTC).timestamp() * 1000))
    if not ok:
        raise HTTPException(404, "no such alert")
    form = await request.form()
    back = str(form.get("next") or "/alerts")
    if not back.startswith("/alerts"):
        back = "/alerts"
    return RedirectResponse(f"{back}#alert-{alert_id}", status_code=303)


routes: list[BaseRoute] = [
    Route("/alerts", alerts_page, methods=["GET"]),
    Route("/alerts/{alert_id:str}/ack", ack, methods=["POST"]),
]

"""``/alerts``: each health alert with its guideline, the measured values, what to do, and an acknowledge button;
per person, a small chart of the measurements behind their alerts.

The alerts are the health processor's events (kind ``alert.<kind>``, one row per update, folded by ``alert_id`` as
``kyojo alerts list`` does); acknowledging writes ``alert_acks`` as ``kyojo alerts ack`` does. The chart's values
come from the raw store and are rendered into the page by the gateway itself: raw values never leave the home
to draw it (no third party, no cloud call; the page is served on the home LAN). Nothing here logs a value.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent.db import tx
from edge_agent.web import household
from edge_agent.web.pages.energy import read_range, tz_offset_s
from edge_agent.web.site import site_of
from edge_agent.web.templating import gettext, render
from kyojo.contract.vocab import METRICS

#: how far back the per-person chart reaches (the raw store keeps 14 days by default)
HISTORY_DAYS = 14
#: metrics drawn together with an alert's metric (blood pressure: both numbers)
COMPANIONS = {"systolic": ("systolic", "diastolic"), "diastolic": ("systolic", "diastolic")}
LEVELS = ("urgent", "warning", "advisory", "info")


@dataclass
class AlertView:
    alert_id: str
    person: str
    kind: str
    level: str
    severity: str
    state: str
    started_ms: int
    updated_ms: int
    ended_ms: int | None
    metric: str
    n: int
    min: float | None
    max: float | None
    mean: float | None
    source: str
    message: str
    shared: bool
    acknowledged: bool
    model_version: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unit(self) -> str:
        spec = METRICS.get(self.metric)
        return spec.unit if spec is not None else ""


def list_alerts(conn: sqlite3.Connection, person: str | None = None) -> list[AlertView]:
    """Every alert, latest state first (the same folding as ``kyojo alerts list``), with its update history."""
    sql = "SELECT kind, subject, ts, severity, attrs, state FROM events WHERE kind LIKE 'alert.%'"
    args: tuple[Any, ...] = ()
    if person is not None:
        sql += " AND subject = ?"
        args = (person,)
    acks = {str(a) for (a,) in conn.execute("SELECT alert_id FROM alert_acks")}
    latest: dict[str, AlertView] = {}
    for kind, subject, ts, severity, attrs, state in conn.execute(sql + " ORDER BY ts", args):
        a = json.loads(attrs)
        aid = str(a.get("alert_id"))
        prev = latest.get(aid)
        view = AlertView(
            alert_id=aid,
            person=str(subject),
            kind=str(kind).removeprefix("alert."),
            level=str(a.get("level", "")),
            severity=str(severity),
            state=str(a.get("state", "")),
            started_ms=int(a.get("started_ms", ts)),
            updated_ms=int(ts),
            ended_ms=None if a.get("ended_ms") is None else int(a["ended_ms"]),
            metric=str(a.get("metric", "")),
            n=int(a.get("n", 0)),
            min=_num(a.get("min")),
            max=_num(a.get("max")),
            mean=_num(a.get("mean")),
            source=str(a.get("source", "")),
            message=str(a.get("message", "")),
            shared=state == "released" or bool(prev and prev.shared),
            acknowledged=aid in acks,
            model_version=None if a.get("model_version") is None else str(a["model_version"]),
        )
        view.history = [*(prev.history if prev else []), {"at_ms": int(ts), "level": view.level, "state": view.state}]
        latest[aid] = view
    # open before closed; among the open ones an urgent one (the 119 rule) first, whatever came after it
    return sorted(latest.values(), key=lambda v: (v.state != "open", not _urgent(v), -v.updated_ms))


def _urgent(view: Any) -> bool:
    """The crisis rule's alerts and any alert at level ``urgent``: the ones that can need a 119 call."""
    return bool(view.kind == "bp_crisis" or view.level == "urgent")


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def acknowledge(conn: sqlite3.Connection, alert_id: str, now_ms: int) -> bool:
    """Mark an alert as seen (as ``kyojo alerts ack``); False if the gateway has no such alert."""
    with tx(conn):
        known = conn.execute(
            "SELECT 1 FROM events WHERE kind LIKE 'alert.%' AND json_extract(attrs, '$.alert_id') = ? LIMIT 1",
            (alert_id,),
        ).fetchone()
        if known is None:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO alert_acks(alert_id, at, by) VALUES(?, ?, 'household')", (alert_id, now_ms)
        )
    return True


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


def metric_label(_: Callable[[str], str], metric: str) -> str:
    labels = {
        "systolic": _("Systolic (upper)"),
        "diastolic": _("Diastolic (lower)"),
        "heart_rate": _("Heart rate"),
        "spo2": _("Blood oxygen (SpO2)"),
        "body_temperature": _("Body temperature"),
        "glucose": _("Blood sugar"),
        "rr_interval": _("Beat-to-beat interval"),
    }
    return labels.get(metric, metric)


def advice(_: Callable[[str], str], view: AlertView) -> dict[str, Any]:
    """Title, what to do, and whether to call 119 — 受診勧奨 wording by urgency, never a diagnosis."""
    titles = {
        "bp_crisis": _("Very high blood pressure (hypertensive crisis range)"),
        "bp_category": _("Home blood pressure has been high"),
        "spo2_low": _("Low blood oxygen"),
        "tachycardia": _("Fast heart rate at rest"),
        "bradycardia": _("Slow heart rate while awake"),
        "fever": _("Fever"),
        "glucose": _("High blood sugar"),
        "af": _("Irregular heart rhythm (possible atrial fibrillation)"),
    }
    urgent = _urgent(view)
    call_119 = urgent and view.state == "open"
    if urgent:
        todo = _(
            "Sit down, rest for a few minutes and measure again. If it stays this high, see a doctor today. "
            "If there is chest pain, shortness of breath, a severe headache, numbness, weakness or trouble "
            "speaking, call 119 for an ambulance now."
        )
    elif view.level == "warning":
        todo = _("Please see a doctor soon (within a few days), and bring these measurements.")
    elif view.level == "advisory":
        todo = _("We recommend seeing your doctor when convenient and showing them these measurements.")
    else:
        todo = _("Keep measuring. If you are worried, talk to your family doctor.")
    if view.state == "closed":
        todo = _("This has passed: the latest measurements are back in range.") + " "
        if urgent:
            todo += _(
                "If it happens again with chest pain, shortness of breath, a severe headache, numbness or "
                "trouble speaking, call 119 at once; otherwise tell your doctor about it."
            )
        else:
            todo += _("Tell your doctor about it at your next visit.")
    return {"title": titles.get(view.kind, view.kind), "todo": todo, "call_119": call_119}


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

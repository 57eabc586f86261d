"""The household's health alerts, read the one way the home page and ``kyojo alerts`` read them.

The health processor writes one event per alert update (kind ``alert.<kind>``); :func:`list_alerts` folds them by
``alert_id`` into the latest state with its history, :func:`advice` words an alert for people (title, what to do,
whether to call 119: 受診勧奨 wording by urgency, never a diagnosis), :func:`acknowledge` records that the
household saw it. No web framework here, so the CLI uses it too; strings are the catalogs' (``_`` is the caller's
gettext).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.db import tx
from kyojo.contract.vocab import METRICS

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
    #: an AF episode's evidence (the health processor's AF monitor): start and end estimates, share of AF windows
    episode_start_ms: int | None = None
    episode_end_ms: int | None = None
    burden: float | None = None
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
            episode_start_ms=_int(a.get("episode_start_ms")),
            episode_end_ms=_int(a.get("episode_end_ms")),
            burden=_num(a.get("burden")),
        )
        view.history = [*(prev.history if prev else []), {"at_ms": int(ts), "level": view.level, "state": view.state}]
        latest[aid] = view
    # open before closed; among the open ones an urgent one (the 119 rule) first, whatever came after it
    return sorted(latest.values(), key=lambda v: (v.state != "open", not _urgent(v), -v.updated_ms))


def _urgent(view: Any) -> bool:
    """The crisis rule's alerts and any alert at level ``urgent``: the ones that can need a 119 call."""
    return bool(view.kind == "bp_crisis" or view.level == "urgent")


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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

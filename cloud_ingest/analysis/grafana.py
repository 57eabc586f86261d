"""Dashboards as data: :data:`DASHBOARDS` and their Grafana JSON (:func:`dashboard_json`, :func:`generate`).

Every panel's target is a query of :mod:`cloud_ingest.analysis.registry`; ``dashboards/json/`` is this module's
output (``python -m cloud_ingest.analyst generate``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_ingest.analysis.registry import MIN_INTERVAL, QUERIES, CannedQuery

#: The data source every panel refers to (dashboards/provisioning/datasources/kyojo.yaml).
DATASOURCE_UID = "kyojo-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
#: Grafana dashboard JSON schema version the generated files follow (Grafana 10/11).
SCHEMA_VERSION = 39


@dataclass(frozen=True)
class Panel:
    """A panel showing one canned query (one target per statement)."""

    query: str
    type: str = "timeseries"
    w: int = 12
    h: int = 8
    options: Mapping[str, Any] = field(default_factory=dict)
    custom: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Variable:
    """A dashboard variable: tag values of ``measurement`` under ``purpose`` (or of any purpose)."""

    name: str
    label: str
    measurement: str
    key: str
    purpose: str | None = None


@dataclass(frozen=True)
class Dashboard:
    """One dashboard file: ``dashboards/json/<slug>.json``."""

    slug: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...] = ()
    time_from: str = "now-24h"


_BARS = {"drawStyle": "bars", "fillOpacity": 60, "lineWidth": 1}
_RIGHT_AXIS = (
    {
        "matcher": {"id": "byName", "options": "households"},
        "properties": [{"id": "unit", "value": "none"}, {"id": "custom.axisPlacement", "value": "right"}],
    },
)

_COUNTS = tuple(
    {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": "none"}]}
    for name in ("served", "points")
)

DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        "home-energy",
        "Kyojo · Home energy",
        "Opted-in households' electricity (purpose community-energy): whole home vs appliances, hourly energy, "
        "and the k-anonymous community rollups.",
        (
            Panel("energy.whole_vs_appliances", w=24),
            Panel("energy.by_hour", custom=_BARS),
            Panel("energy.by_device", type="bargauge", options={"orientation": "horizontal"}),
            Panel("energy.community", w=24, custom=_BARS, overrides=_RIGHT_AXIS),
        ),
        (Variable("subject", "Household (pseudonym)", "energy", "subject", "community-energy"),),
    ),
    Dashboard(
        "ev-charging",
        "Kyojo · EV charging",
        "Home chargers shared for purpose ev-energy-sharing: energy by hour, sessions, availability.",
        (
            Panel("ev.energy_by_hour", custom=_BARS),
            Panel("ev.power"),
            Panel("ev.sessions", w=8, custom=_BARS),
            Panel("ev.availability", w=8, custom=_BARS),
            Panel("ev.soc", w=8),
        ),
        (Variable("subject", "Household (pseudonym)", "ev_energy", "subject", "ev-energy-sharing"),),
    ),
    Dashboard(
        "waste-collection",
        "Kyojo · Waste collection",
        "Collection trucks (purpose waste-collection): positions, pickups per truck and hour, route progress "
        "(from the pickup events the trucks' gateways release).",
        (
            Panel(
                "waste.positions",
                type="geomap",
                w=24,
                h=12,
                options={
                    "view": {"id": "coords", "lat": 35.686, "lon": 139.769, "zoom": 14},
                    "controls": {"showZoom": True, "mouseWheelZoom": True},
                    "basemap": {"type": "default", "name": "Basemap"},
                    "layers": [
                        {
                            "type": "markers",
                            "name": "Trucks",
                            "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
                            "config": {"showLegend": True, "style": {"size": {"fixed": 5}}},
                        }
                    ],
                },
            ),
            Panel("waste.pickups", custom=_BARS),
            Panel("waste.progress", type="table", overrides=_COUNTS),
        ),
        (Variable("subject", "Truck / route (pseudonym)", "speed", "subject", "waste-collection"),),
        time_from="now-12h",
    ),
    Dashboard(
        "preventive-care",
        "Kyojo · Preventive care (k-anonymous)",
        "Only community rollups released under the k-threshold and dominance rules: alert counts by kind and "
        "week. No per-person vital signs are shown anywhere.",
        (
            Panel("care.alerts_by_week", w=16, custom=_BARS),
            Panel("care.households_by_week", w=8, custom=_BARS),
        ),
        time_from="now-90d",
    ),
    Dashboard(
        "platform-health",
        "Kyojo · Platform health",
        "Operators: gateways online, ingest rate, rejects by cause, lag (from the ingesters' stats).",
        (
            Panel("platform.gateways_online", type="stat", w=6, options={"reduceOptions": {"calcs": ["lastNotNull"]}}),
            Panel("platform.ingest_rate", w=18),
            Panel("platform.rejects_by_cause", custom=_BARS),
            Panel("platform.lag"),
        ),
        (Variable("instance", "Ingester", "kyojo_ingest", "instance"),),
        time_from="now-6h",
    ),
)


def _target(q: CannedQuery, ref: str, statement: str) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": dict(DATASOURCE),
        "query": statement,
        "rawQuery": True,
        "resultFormat": q.result_format,
        "alias": q.alias,
    }


def _variable(v: Variable) -> dict[str, Any]:
    where = f" WHERE \"purpose\" = '{v.purpose}'" if v.purpose else ""
    query = f'SHOW TAG VALUES FROM "{v.measurement}" WITH KEY = "{v.key}"{where}'
    return {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": dict(DATASOURCE),
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard model of one dashboard (what the file provider loads)."""
    panels: list[dict[str, Any]] = []
    x = y = row_h = 0
    for pid, p in enumerate(d.panels, start=1):
        q = QUERIES[p.query]
        if x + p.w > 24:
            x, y, row_h = 0, y + row_h, 0
        panel: dict[str, Any] = {
            "id": pid,
            "type": p.type,
            "title": q.title,
            "description": f"{q.description} (kyojo query {q.name})",
            "datasource": dict(DATASOURCE),
            "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
            "interval": MIN_INTERVAL,
            "targets": [_target(q, chr(ord("A") + i), s) for i, s in enumerate(q.statements)],
            "fieldConfig": {"defaults": {"unit": q.unit, "custom": dict(p.custom)}, "overrides": list(p.overrides)},
            "options": dict(p.options),
        }
        if len(q.statements) > 1:
            panel["transformations"] = [{"id": "merge", "options": {}}]
        panels.append(panel)
        x, row_h = x + p.w, max(row_h, p.h)
    return {
        "uid": f"kyojo-{d.slug}",
        "title": d.title,
        "description": d.description,
        "tags": ["kyojo"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "1m",
        "time": {"from": d.time_from, "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": [_variable(v) for v in d.variables]},
        "links": [],
        "panels": panels,
    }


def dashboard_files() -> dict[str, str]:
    """File name -> JSON text of every dashboard (stable formatting, so a diff shows real changes)."""
    return {f"{d.slug}.json": json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n" for d in DASHBOARDS}


def generate(out_dir: Path) -> list[Path]:
    """Write every dashboard JSON file into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in dashboard_files().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths

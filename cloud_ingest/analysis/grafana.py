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

from cloud_ingest.analysis.registry import DEFAULT_VARS, MIN_INTERVAL, QUERIES, CannedQuery, bilingual

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
    title_ja: str
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
        "家庭のエネルギー",
        "Opted-in households' electricity (purpose community-energy): whole home vs appliances, hourly energy, "
        "the k-anonymous community rollups, and the data's sanity (spikes, gaps).",
        (
            Panel("energy.whole_vs_appliances", w=24),
            Panel("energy.by_hour", custom=_BARS),
            Panel("energy.by_device", type="bargauge", options={"orientation": "horizontal"}),
            Panel("energy.community", w=24, custom=_BARS, overrides=_RIGHT_AXIS),
            Panel("sanity.peak_power"),
            Panel("sanity.reporting_minutes", custom=_BARS),
        ),
        (Variable("subject", "Household (pseudonym)", "energy", "subject", "community-energy"),),
    ),
    Dashboard(
        "ev-charging",
        "Kyojo · EV charging",
        "EV充電",
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
        "ごみ収集",
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
        "予防医療（k匿名）",
        "Only community rollups released under the k-threshold and dominance rules: alert counts by kind and "
        "week. No per-person vital signs are shown anywhere.",
        (
            Panel("care.alerts_by_week", w=16, custom=_BARS),
            Panel("care.households_by_week", w=8, custom=_BARS),
        ),
        time_from="now-90d",
    ),
    Dashboard(
        "disaster-safety",
        "Kyojo · Disaster safety (k-anonymous)",
        "災害時の安否確認（k匿名）",
        "Households' answers to a declared disaster (purpose disaster-safety), counted per area by kyojo ingest "
        "safety --write: only counts of at least k households; the list of who asked to be checked on stays "
        "with the city's responders (kyojo ingest safety).",
        (
            Panel("safety.by_area", type="table", w=24),
            Panel("safety.answered", w=24),
        ),
        (),
        time_from="now-3d",
    ),
    Dashboard(
        "platform-health",
        "Kyojo · Platform health",
        "プラットフォームの状態",
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
            "title": bilingual(q.name),
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
        "title": f"{d.title} · {d.title_ja}",
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


def generate(out_dir: Path, alerting: Path | None = None) -> list[Path]:
    """Write every dashboard JSON file into ``out_dir`` (and the alert rules to ``alerting``); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in dashboard_files().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    if alerting is not None:
        alerting.parent.mkdir(parents=True, exist_ok=True)
        alerting.write_text(alert_rules_text(), encoding="utf-8")
        paths.append(alerting)
    return paths


# --------------------------------------------------------------------------------------------------------------
# Alert rules (Grafana unified alerting, file provisioning: dashboards/provisioning/alerting/kyojo.yaml)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    """One provisioned rule on a canned query: reduce the query over ``window_s`` with ``reducer``, then fire
    when the reduced value is ``op`` ``threshold`` (``op`` ``drop``: when the last value falls below
    ``threshold`` x the window's maximum), for ``for_`` (Grafana duration)."""

    uid: str
    title: str
    title_ja: str
    query: str
    window_s: int
    reducer: str
    op: str
    threshold: float
    for_: str
    severity: str
    summary: str
    no_data: str = "NoData"


ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "kyojo-gateways-offline",
        "Gateways went offline",
        "ゲートウェイがオフラインになりました",
        "platform.gateways_online",
        3600,
        "last",
        "drop",
        0.9,
        "10m",
        "critical",
        "More than 10 % of the gateways seen online in the last hour are offline now (broker, network or power).",
    ),
    AlertRule(
        "kyojo-ingest-lag",
        "Ingest lag above one minute",
        "取り込みの遅延が1分を超えています",
        "platform.lag",
        600,
        "max",
        "gt",
        60_000,
        "5m",
        "warning",
        "Batches take more than a minute from the gateway's queue to InfluxDB (ingester or InfluxDB too slow).",
    ),
    AlertRule(
        "kyojo-rejects",
        "Messages rejected",
        "メッセージが拒否されています",
        "platform.rejects_by_cause",
        600,
        "sum",
        "gt",
        100,
        "0m",
        "warning",
        "More than 100 messages refused in 10 minutes: a misconfigured or hostile gateway (see the cause).",
    ),
    AlertRule(
        "kyojo-ingest-stalled",
        "Nothing ingested",
        "取り込みが止まっています",
        "platform.ingest_rate",
        600,
        "max",
        "lt",
        0.001,
        "10m",
        "critical",
        "No point written for 10 minutes, or no ingester reporting its stats (NoData fires too).",
        no_data="Alerting",
    ),
    AlertRule(
        "kyojo-energy-spike",
        "Implausible energy step",
        "ありえない電力量の変化",
        "sanity.peak_power",
        3600,
        "max",
        "gt",
        50,
        "0m",
        "warning",
        "A household's one-minute energy step is above 50 kW on average: a counter glitch that got through.",
    ),
)


def _alert_query(q: CannedQuery, statement: str) -> str:
    """A canned statement with the dashboard variables at their defaults (alert rules have no variables);
    ``$timeFilter`` and ``$__interval`` are Grafana's, filled from the rule's time range."""
    for key, value in DEFAULT_VARS.items():
        statement = statement.replace(f"${key}", value)
    return statement


def _expr(ref: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasourceUid": "__expr__",
        "model": {"refId": ref, "datasource": {"type": "__expr__", "uid": "__expr__"}, **model},
    }


def alert_rule_json(rule: AlertRule) -> dict[str, Any]:
    """The provisioning form of one rule (Grafana 10/11 unified alerting)."""
    q = QUERIES[rule.query]
    data: list[dict[str, Any]] = [
        {
            "refId": "A",
            "relativeTimeRange": {"from": rule.window_s, "to": 0},
            "datasourceUid": DATASOURCE_UID,
            "model": {
                "refId": "A",
                "datasource": dict(DATASOURCE),
                "query": _alert_query(q, q.statements[0]),
                "rawQuery": True,
                "resultFormat": "time_series",
                "intervalMs": 60_000,
                "maxDataPoints": 43_200,
            },
        },
        _expr("B", {"type": "reduce", "expression": "A", "reducer": rule.reducer, "settings": {"mode": "dropNN"}}),
    ]
    if rule.op == "drop":
        data.append(_expr("C", {"type": "reduce", "expression": "A", "reducer": "max", "settings": {"mode": "dropNN"}}))
        data.append(_expr("D", {"type": "math", "expression": f"$B < {rule.threshold} * $C"}))
        condition = "D"
    else:
        data.append(
            _expr(
                "C",
                {
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": rule.op, "params": [rule.threshold]}}],
                },
            )
        )
        condition = "C"
    return {
        "uid": rule.uid,
        "title": f"{rule.title} · {rule.title_ja}",
        "condition": condition,
        "data": data,
        "noDataState": rule.no_data,
        "execErrState": "Error",
        "for": rule.for_,
        "annotations": {
            "summary": rule.summary,
            "description": f"{q.description} (kyojo query {q.name})",
            "__dashboardUid__": _DASHBOARD_OF[rule.query],
        },
        "labels": {"severity": rule.severity, "team": "kyojo-operators"},
        "isPaused": False,
    }


_DASHBOARD_OF = {p.query: f"kyojo-{d.slug}" for d in DASHBOARDS for p in d.panels}


def alert_rules_json() -> dict[str, Any]:
    """The whole provisioning file: one rule group in the dashboards' folder."""
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": "kyojo-platform",
                "folder": "Kyojo",
                "interval": "1m",
                "rules": [alert_rule_json(r) for r in ALERT_RULES],
            }
        ],
    }


def alert_rules_text() -> str:
    """``dashboards/provisioning/alerting/kyojo.yaml``: JSON, which is YAML, so no YAML library is needed."""
    header = (
        "# Grafana alert rules (unified alerting file provisioning), generated by\n"
        "# python -m cloud_ingest.analyst generate; edit cloud_ingest/analysis/grafana.py, not this file.\n"
    )
    return header + json.dumps(alert_rules_json(), indent=2, ensure_ascii=False) + "\n"

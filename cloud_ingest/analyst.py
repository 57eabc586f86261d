"""Analyst queries: ONE registry of canned InfluxQL shared by the Grafana dashboards and ``kyojo query``.

Every panel of every dashboard in ``dashboards/json/`` is generated from this module (``python -m
cloud_ingest.analyst generate``; a test checks that the committed JSON equals what this module produces), so a
query that an analyst runs on the command line is byte for byte the query behind the panel.

Query text uses Grafana's macros, which :func:`render` substitutes outside Grafana:

- ``$timeFilter`` -> ``time >= <since>ms AND time <= <until>ms``;
- ``$__interval`` -> the GROUP BY interval (Grafana: range / panel width, never below the panel's 1m minimum);
- ``$subject``, ``$instance`` -> dashboard variables, a regex (``.*`` = all) used as ``=~ /^$subject$/``.

Point schema the queries rely on (README, Analysts): measurement = metric, tags ``subject`` (per-purpose
pseudonym), ``device`` (per-purpose pseudonym), ``purpose``, ``category``; fields ``count``/``mean``/``min``/
``max``/``last`` (gauges) or ``delta``/``last`` (counters), ``window_s``; time = window start. No query uses the
``gateway`` tag (it is being removed: it would let an analyst join a household's purposes). Health data is
shown only as k-anonymous community rollups (``community_alert_<kind>``), never per subject.

Dashboards: home energy, EV charging, waste collection, preventive care, platform health. The platform panels
read ``kyojo_ingest``/``kyojo_ingest_rejects``, written from the ingester's stats (see
:mod:`cloud_ingest.initdb`).

``kyojo query <name>`` (mounted by :func:`register`) prints a canned query's result as a table, CSV or JSON and
can plot it to a PNG with matplotlib (Agg, no display needed; install the ``analyst`` extra).
"""

# ruff: noqa: S608 - the InfluxQL here is constant templates; the only inputs (variables) are regex-checked

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

#: The data source every panel refers to (dashboards/provisioning/datasources/kyojo.yaml).
DATASOURCE_UID = "kyojo-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
#: Grafana dashboard JSON schema version the generated files follow (Grafana 10/11).
SCHEMA_VERSION = 39
#: Smallest GROUP BY interval: windows are one minute (30 s for mobility), finer buckets are empty.
MIN_INTERVAL = "1m"
#: Defaults of the dashboard variables outside Grafana (all pseudonyms, all ingester instances).
DEFAULT_VARS: Mapping[str, str] = {"subject": ".*", "instance": ".*"}
#: Alert kinds the preventive-care processor raises (event kind ``alert.<kind>``: models/rules/engine.py and the AF
#: model); ``kyojo ingest rollup --events 'alert.*'`` releases each as ``community_alert_<kind>``.
ALERT_KINDS = (
    "bp_crisis",
    "bp_category",
    "spo2_low",
    "tachycardia",
    "bradycardia",
    "fever",
    "fasting_glucose",
    "atrial_fibrillation",
)

_TF = "$timeFilter"


@dataclass(frozen=True)
class CannedQuery:
    """One named query: InfluxQL statements (one Grafana target each) and how to show the result.

    ``statements`` with more than one entry are merged row by row on (time, tags), like Grafana's *Merge*
    transformation (e.g. latitude and longitude into one position). ``unit`` is a Grafana unit id; ``plot`` is
    how ``--plot`` draws it: ``line``, ``bar`` or ``map`` (longitude/latitude scatter).
    """

    name: str
    title: str
    description: str
    statements: tuple[str, ...]
    unit: str = "none"
    plot: str = "line"
    alias: str = "$col $tag_subject"
    result_format: str = "time_series"


def _q(
    name: str,
    title: str,
    description: str,
    *statements: str,
    unit: str = "none",
    plot: str = "line",
    alias: str = "$col $tag_subject",
    result_format: str = "time_series",
) -> CannedQuery:
    return CannedQuery(name, title, description, tuple(statements), unit, plot, alias, result_format)


def _purpose(p: str) -> str:
    return f'"purpose" = \'{p}\' AND "subject" =~ /^$subject$/ AND {_TF}'


_ENERGY = _purpose("community-energy")
_EV = _purpose("ev-energy-sharing")
_WASTE = _purpose("waste-collection")
#: pickup events the trucks' ``truck`` processor released (one per stop matched to a collection point)
_PICKUPS = f'FROM "events" WHERE "kind" = \'pickup\' AND {_WASTE}'
_INSTANCE = f'"instance" =~ /^$instance$/ AND {_TF}'
_ALERTS = f"\"purpose\" = 'preventive-care' AND \"bucket\" = '604800s' AND {_TF}"

QUERIES: dict[str, CannedQuery] = {
    q.name: q
    for q in (
        # --- home energy -------------------------------------------------------------------------------------
        _q(
            "energy.whole_vs_appliances",
            "Whole home vs appliances",
            "Per household: the whole-home meter (the largest power series of the minute), the plugged "
            "appliances (the other series, summed) and the rest (unmetered base load).",
            'SELECT mean("whole") AS "whole_home", mean("plugs") AS "appliances", '
            'mean("whole") - mean("plugs") AS "unmetered" FROM ('
            'SELECT max("mean") AS "whole", sum("mean") - max("mean") AS "plugs" FROM "power" '
            f'WHERE {_ENERGY} GROUP BY time(1m), "subject") '
            f'WHERE {_TF} GROUP BY time($__interval), "subject"',
            unit="watt",
        ),
        _q(
            "energy.by_hour",
            "Whole-home energy by hour",
            "Per household and hour: the sum of the whole-home meter's per-minute deltas (Wh).",
            'SELECT sum("whole") AS "energy" FROM ('
            f'SELECT max("delta") AS "whole" FROM "energy" WHERE {_ENERGY} GROUP BY time(1m), "subject") '
            f"WHERE {_TF} GROUP BY time(1h), \"subject\" fill(none) tz('Asia/Tokyo')",
            unit="watth",
            plot="bar",
        ),
        _q(
            "energy.by_device",
            "Energy by device",
            "Per device pseudonym over the range: sum of deltas (Wh); the largest is the whole-home meter.",
            f'SELECT sum("delta") AS "energy" FROM "energy" WHERE {_ENERGY} GROUP BY "subject", "device"',
            unit="watth",
            plot="bar",
            alias="$tag_device",
            result_format="table",
        ),
        _q(
            "energy.community",
            "Community energy (k-anonymous)",
            "Released community rollups (at least k households, no household above the dominance share): "
            "total Wh per hour and households contributing.",
            'SELECT sum("total") AS "total", max("households") AS "households" FROM "community_energy" '
            f"WHERE \"purpose\" = 'community-energy' AND \"bucket\" = '3600s' AND {_TF} "
            "GROUP BY time(1h) fill(none) tz('Asia/Tokyo')",
            unit="watth",
            plot="bar",
            alias="$col",
        ),
        # --- EV charging -------------------------------------------------------------------------------------
        _q(
            "ev.energy_by_hour",
            "EV charging energy by hour",
            "Per charger's household and hour: sum of ev_energy deltas (Wh).",
            f'SELECT sum("delta") AS "energy" FROM "ev_energy" WHERE {_EV} '
            "GROUP BY time(1h), \"subject\" fill(0) tz('Asia/Tokyo')",
            unit="watth",
            plot="bar",
        ),
        _q(
            "ev.power",
            "EV charging power",
            "Mean charging power (W) per household.",
            f'SELECT mean("mean") AS "power" FROM "ev_power" WHERE {_EV} GROUP BY time($__interval), "subject"',
            unit="watt",
        ),
        _q(
            "ev.soc",
            "State of charge while charging",
            "Mean state of charge (%) of the connected car; no point when no car is connected.",
            f'SELECT mean("mean") AS "soc" FROM "soc" WHERE {_EV} GROUP BY time($__interval), "subject"',
            unit="percent",
        ),
        _q(
            "ev.sessions",
            "Charging sessions per day",
            "Sessions starting per local day (JST): minutes with a car connected (soc reported) that follow a "
            "minute without one.",
            'SELECT count("d") AS "sessions" FROM ('
            'SELECT difference("charging") AS "d" FROM ('
            f'SELECT count("last") AS "charging" FROM "soc" WHERE {_EV} GROUP BY time(1m), "subject" fill(0)'
            f')) WHERE "d" > 0 AND {_TF} GROUP BY time(1d), "subject" tz(\'Asia/Tokyo\')',
            plot="bar",
        ),
        _q(
            "ev.availability",
            "Charger availability",
            "Share of reported minutes in which the charger was free (no power drawn), per hour (%).",
            'SELECT 100 * (1 - mean("busy")) AS "available" FROM ('
            f'SELECT ceil("max" / 1000000) AS "busy" FROM "ev_power" WHERE {_EV}) '
            f"WHERE {_TF} GROUP BY time(1h), \"subject\" fill(none) tz('Asia/Tokyo')",
            unit="percent",
            plot="bar",
        ),
        # --- waste collection --------------------------------------------------------------------------------
        _q(
            "waste.positions",
            "Truck positions",
            "Last position of each truck per interval (latitude and longitude merged on time and truck).",
            f'SELECT last("last") AS "latitude" FROM "latitude" WHERE {_WASTE} '
            'GROUP BY time($__interval), "subject" fill(none)',
            f'SELECT last("last") AS "longitude" FROM "longitude" WHERE {_WASTE} '
            'GROUP BY time($__interval), "subject" fill(none)',
            unit="degree",
            plot="map",
            result_format="table",
        ),
        _q(
            "waste.pickups",
            "Pickups per truck and hour",
            "Pickup events per truck (pseudonym; a truck drives one route) and hour: each is a stop the gateway "
            "matched to a collection point (dwell of at least 20 s within 30 m of it).",
            f'SELECT count("event_id") AS "pickups" {_PICKUPS} GROUP BY time(1h), "subject" fill(0) tz(\'Asia/Tokyo\')',
            plot="bar",
        ),
        _q(
            "waste.progress",
            "Route progress",
            "Latest route progress per truck, from its last pickup event: the route, the collection points served "
            "so far and on the route, the share served, and the last point served.",
            'SELECT last("route") AS "route", last("served") AS "served", last("points") AS "points", '
            f'last("progress") AS "progress", last("point") AS "last_point" {_PICKUPS} GROUP BY "subject"',
            unit="percentunit",
            plot="bar",
            result_format="table",
        ),
        # --- preventive care: k-anonymous rollups only -------------------------------------------------------
        _q(
            "care.alerts_by_week",
            "Alerts by kind and week (k-anonymous)",
            "Weekly community rollups of preventive-care alerts, one series per kind; weeks with fewer than k "
            "households (or a dominant one) were suppressed by the rollup and are absent.",
            f'SELECT sum("total") AS "alerts" FROM /^community_alert_/ WHERE {_ALERTS} GROUP BY time(1w) fill(none)',
            plot="bar",
            alias="$m",
        ),
        _q(
            "care.households_by_week",
            "Households behind each weekly release",
            "Households contributing to each released weekly rollup (always at least k).",
            f'SELECT max("households") AS "households" FROM /^community_alert_/ WHERE {_ALERTS} '
            "GROUP BY time(1w) fill(none)",
            plot="bar",
            alias="$m",
        ),
        # --- platform health ---------------------------------------------------------------------------------
        _q(
            "platform.gateways_online",
            "Gateways online",
            "Gateways whose retained status says online, as the ingesters see it (they all see every status: "
            "the largest per interval).",
            'SELECT max("online") AS "gateways_online" FROM ('
            f'SELECT last("gateways_online") AS "online" FROM "kyojo_ingest" WHERE {_INSTANCE} '
            f'GROUP BY time($__interval), "instance") WHERE {_TF} GROUP BY time($__interval) fill(none)',
            alias="$col",
        ),
        _q(
            "platform.ingest_rate",
            "Ingest rate",
            "Points written to InfluxDB per second, per ingester instance.",
            'SELECT non_negative_derivative(max("written"), 1s) AS "points_per_s" FROM "kyojo_ingest" '
            f'WHERE {_INSTANCE} GROUP BY time($__interval), "instance" fill(none)',
            unit="pps",
            alias="$col $tag_instance",
        ),
        _q(
            "platform.rejects_by_cause",
            "Rejected messages by cause",
            "Messages the ingesters refused, per cause (summed over instances).",
            'SELECT sum("count") AS "rejected" FROM "kyojo_ingest_rejects" '
            f'WHERE {_INSTANCE} GROUP BY time($__interval), "cause" fill(none)',
            plot="bar",
            alias="$tag_cause",
        ),
        _q(
            "platform.lag",
            "Ingest lag",
            "Time from a batch being queued on the gateway to being written (ms), worst per interval.",
            f'SELECT max("lag_ms") AS "lag" FROM "kyojo_ingest" WHERE {_INSTANCE} '
            'GROUP BY time($__interval), "instance" fill(none)',
            unit="ms",
            alias="$col $tag_instance",
        ),
    )
}


# ------------------------------------------------------------------------------------------------------------
# Dashboards
# ------------------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------------------
# Running a canned query outside Grafana
# ------------------------------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NICE = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)


def auto_interval(since_ms: int, until_ms: int, max_points: int = 300) -> str:
    """Grafana-like ``$__interval``: a round interval giving at most ``max_points`` buckets, at least 1m."""
    want = max(60.0, (until_ms - since_ms) / 1000 / max_points)
    for s in _NICE:
        if s >= want:
            return _duration(s)
    return f"{math.ceil(want / 604800)}w"


def _duration(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


_VAR_RE = re.compile(r"^[A-Za-z0-9_.\-*|()\\^$]*$")


def render(
    statement: str,
    since_ms: int,
    until_ms: int,
    interval: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> str:
    """Substitute Grafana's macros and the dashboard variables in one statement."""
    values = {**DEFAULT_VARS, **(variables or {})}
    text = statement.replace("$timeFilter", f"time >= {since_ms}ms AND time <= {until_ms}ms")
    text = text.replace("$__interval", interval or auto_interval(since_ms, until_ms))
    for key, value in values.items():
        if not _VAR_RE.match(value):
            raise ValueError(f"variable {key}={value!r}: only a tag-value regex is allowed")
        text = text.replace(f"${key}", value)
    return text


class QueryError(RuntimeError):
    """InfluxDB refused a query or could not be reached."""


@dataclass
class Result:
    """A query result as rows: ``columns`` = time, tag keys, field names (in that order)."""

    name: str
    columns: list[str]
    rows: list[list[Any]]

    def series(self) -> dict[tuple[str, ...], list[list[Any]]]:
        """Rows grouped by their tag values (the columns between time and the fields)."""
        out: dict[tuple[str, ...], list[list[Any]]] = {}
        for row in self.rows:
            out.setdefault(tuple(str(v) for v in row[1 : 1 + len(self.tags)]), []).append(row)
        return out

    tags: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)


class InfluxQL:
    """A minimal InfluxQL client over the v1 query API (InfluxDB 1.x; 2.x/3.x through their v1 compatibility).

    ``token`` is sent as ``Authorization: Token <token>`` (2.x, 3.x, and 1.8+ as ``user:password``).
    """

    def __init__(self, url: str, db: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.url, self.db, self.token, self.timeout = url.rstrip("/"), db, token, timeout

    def query(self, statement: str) -> list[dict[str, Any]]:
        """Run one statement (POST /query, epoch ms); return its ``series`` list (empty when nothing matched)."""
        body = urllib.parse.urlencode({"db": self.db, "q": statement, "epoch": "ms"}).encode()
        req = urllib.request.Request(f"{self.url}/query", data=body, method="POST")  # noqa: S310 - http(s) URL
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - http(s) URL
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise QueryError(f"InfluxDB {err.code}: {err.read()[:300]!r}") from err
        except OSError as err:
            raise QueryError(f"InfluxDB unreachable at {self.url}: {err}") from err
        if "error" in doc:
            raise QueryError(f"InfluxQL error: {doc['error']}")
        series: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise QueryError(f"InfluxQL error: {result['error']}")
            series.extend(result.get("series", []))
        return series


def run_query(
    client: InfluxQL,
    name: str,
    since_ms: int,
    until_ms: int,
    *,
    interval: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> Result:
    """Run a canned query; its statements are merged on (time, tags) like Grafana's Merge transformation."""
    q = QUERIES[name]
    tags: list[str] = []
    fields: list[str] = []
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for statement in q.statements:
        for s in client.query(render(statement, since_ms, until_ms, interval, variables)):
            stags = dict(s.get("tags") or {})
            if "$m" in q.alias:
                stags = {"measurement": s.get("name", ""), **stags}
            for key in stags:
                if key not in tags:
                    tags.append(key)
            cols = s["columns"]
            for c in cols[1:]:
                if c not in fields:
                    fields.append(c)
            for values in s.get("values", []):
                rec = dict(zip(cols, values, strict=True))
                key = (rec["time"], *sorted(stags.items()))
                merged.setdefault(key, {"time": rec["time"], **stags}).update(
                    {c: v for c, v in rec.items() if c != "time" and v is not None}
                )
    rows = [
        [rec["time"], *(rec.get(t, "") for t in tags), *(rec.get(f) for f in fields)]
        for _, rec in sorted(merged.items(), key=lambda kv: (*(str(x) for x in kv[0][1:]), kv[0][0]))
    ]
    return Result(name, ["time", *tags, *fields], rows, tags, fields)


def _iso(ms: Any) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def format_result(result: Result, fmt: str) -> str:
    """Render a result as ``table`` (aligned text), ``csv`` or ``json`` (a list of objects)."""
    if fmt == "json":
        docs = [dict(zip(result.columns, [_iso(r[0]), *r[1:]], strict=True)) for r in result.rows]
        return json.dumps(docs, indent=1)
    rows = [[_iso(r[0]), *r[1:]] for r in result.rows]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(rows)
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    cells = [result.columns] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(result.columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def plot(result: Result, path: Path, *, title: str | None = None) -> Path:
    """Draw a result to a PNG with matplotlib's Agg canvas (no display, no global pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise QueryError("plotting needs matplotlib: pip install 'kyojo[analyst]'") from err
    q = QUERIES[result.name]
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title or q.title)
    series = result.series()
    if q.plot == "map":
        for tags, rows in series.items():
            lat = [r[result.columns.index("latitude")] for r in rows]
            lon = [r[result.columns.index("longitude")] for r in rows]
            pts = [(x, y) for x, y in zip(lon, lat, strict=True) if x is not None and y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=_label(tags, ""))
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel("longitude (deg)")
        ax.set_ylabel("latitude (deg)")
    else:
        numeric = [  # text columns (e.g. a route name) are shown by the table, not drawn
            f for f in result.fields if not any(isinstance(r[result.columns.index(f)], str) for r in result.rows)
        ]
        n_bars = max(1, len(series) * len(numeric))
        step = _step_days(result)
        k = 0
        for tags, rows in series.items():
            times = [int(r[0]) / 86_400_000 for r in rows]  # matplotlib dates: days since 1970-01-01 (its epoch)
            for f in numeric:
                col = result.columns.index(f)
                vals = [float(r[col]) if r[col] is not None else math.nan for r in rows]
                label = _label(tags, f if len(numeric) > 1 else "")
                if q.plot == "bar" and step is not None:
                    width = step * 0.8 / n_bars
                    ax.bar([t + width * k - step * 0.4 for t in times], vals, width=width, align="edge", label=label)
                else:
                    ax.plot(times, vals, label=label)
                k += 1
        ax.xaxis_date()
        ax.set_xlabel("time (UTC)")
        ax.set_ylabel(_UNIT_LABELS.get(q.unit, q.unit if q.unit != "none" else ""))
        fig.autofmt_xdate()
    if series:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


_UNIT_LABELS = {"watt": "W", "watth": "Wh", "percent": "%", "pps": "points/s", "ms": "ms", "degree": "deg"}


def _step_days(result: Result) -> float | None:
    times = sorted({int(r[0]) for r in result.rows})
    if len(times) < 2:
        return 1 / 24 if times else None
    return min(b - a for a, b in itertools.pairwise(times)) / 86_400_000


def _label(tags: tuple[str, ...], name: str) -> str:
    text = " ".join(t[:12] for t in tags if t)
    return f"{name} {text}".strip() or "value"


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``now``, ``now-6h``/``-6h``/``6h`` (relative), an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(tz=UTC)
    t = text.strip()
    m = re.fullmatch(r"(?:now)?\s*-?\s*(\d+)\s*([smhdw])", t)
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if t == "now":
        return now
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as err:
        raise typer.BadParameter(f"not a time: {text!r} (use ISO 8601, 'now' or e.g. 6h, 7d)") from err
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _names_help() -> str:
    return "; ".join(sorted(QUERIES))


def register(app: typer.Typer) -> None:
    """Add ``query`` to a Typer app (the lead mounts it on the main ``kyojo`` CLI)."""

    @app.command("query")
    def query_cmd(
        name: Annotated[str, typer.Argument(help="canned query name, or 'list'")],
        since: Annotated[str, typer.Option(help="start: ISO time, 'now-24h' or '24h'")] = "24h",
        until: Annotated[str, typer.Option(help="end: ISO time or 'now'")] = "now",
        fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
        plot_path: Annotated[Path | None, typer.Option("--plot", help="also draw the result to this PNG")] = None,
        interval: Annotated[str | None, typer.Option(help="GROUP BY interval for $__interval (default: auto)")] = None,
        var: Annotated[list[str] | None, typer.Option("--var", help="dashboard variable, e.g. subject=s-1234")] = None,
        influx_url: Annotated[str, typer.Option(envvar="KYOJO_INFLUX_URL", help="InfluxDB URL")] = (
            "http://127.0.0.1:8086"
        ),
        influx_db: Annotated[str, typer.Option(envvar="KYOJO_INFLUX_DB", help="database")] = "kyojo",
        show: Annotated[bool, typer.Option("--show", help="print the rendered InfluxQL instead of running it")] = False,
    ) -> None:
        """Run one of the dashboards' canned queries (``kyojo query list`` shows them)."""
        if name == "list":
            for q in QUERIES.values():
                typer.echo(f"{q.name:<28} {q.title}")
            return
        if name not in QUERIES:
            typer.echo(f"unknown query {name!r}; known: {_names_help()}", err=True)
            raise typer.Exit(2)
        if fmt not in ("table", "csv", "json"):
            raise typer.BadParameter("--format must be table, csv or json")
        now = datetime.now(tz=UTC)
        start, end = parse_time(since, now), parse_time(until, now)
        if end <= start:
            raise typer.BadParameter("--until must be after --since")
        s_ms, e_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        variables = {}
        for item in var or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"--var {item!r}: expected name=value")
            variables[key] = value
        if show:
            for statement in QUERIES[name].statements:
                typer.echo(render(statement, s_ms, e_ms, interval, variables))
            return
        client = InfluxQL(influx_url, influx_db, token=os.environ.get("KYOJO_INFLUX_TOKEN"))
        try:
            result = run_query(client, name, s_ms, e_ms, interval=interval, variables=variables)
            typer.echo(format_result(result, fmt))
            if plot_path is not None:
                plot(result, plot_path)
                typer.echo(f"plot: {plot_path}", err=True)
        except (QueryError, ValueError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(1) from err


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cloud_ingest.analyst generate [DIR]``: regenerate the dashboard JSON files."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "generate":
        print("usage: python -m cloud_ingest.analyst generate [dashboards/json]", file=sys.stderr)
        return 2
    out = Path(args[1]) if len(args) > 1 else Path(__file__).resolve().parent.parent / "dashboards" / "json"
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Running a canned query outside Grafana: macro substitution (:func:`render`, :func:`auto_interval`), a small
InfluxQL HTTP client (:class:`InfluxQL`), :func:`run_query` and the table/CSV/JSON output of a :class:`Result`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloud_ingest.analysis.registry import DEFAULT_VARS, QUERIES
from cloud_ingest.influx import InfluxError, InfluxV1Connection

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


class QueryError(InfluxError, RuntimeError):
    """InfluxDB refused a query or could not be reached."""


class NoData(QueryError):
    """The window holds no data for the query: said in words, never drawn as an empty chart."""


_FROM_RE = re.compile(r'FROM\s+((?:"[^"]+"\.)?"[^"]+"|/[^/]+/)')


def measurements(name: str) -> list[str]:
    """The measurements (quoted, or a /regex/) a canned query reads, subqueries included."""
    out: list[str] = []
    for statement in QUERIES[name].statements:
        for m in _FROM_RE.findall(statement):
            if m not in out:
                out.append(m)
    return out


def newest_time(client: InfluxQL, name: str) -> int | None:
    """Epoch ms of the newest point in any measurement the query reads (None when they are all empty): where a
    default window should end when the last hours hold nothing (a demo on simulated time, a replayed month)."""
    newest: int | None = None
    for m in measurements(name):
        for s in client.query(f"SELECT * FROM {m} ORDER BY time DESC LIMIT 1"):  # noqa: S608 - registry constants
            for values in s.get("values", []):
                newest = max(newest or 0, int(values[0]))
    return newest


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
    """A minimal InfluxQL client over the v1 query API (InfluxDB 1.x; 2.x/3.x through their v1 compatibility),
    one short :class:`cloud_ingest.influx.InfluxV1Connection` per query.

    ``token`` is sent as ``Authorization: Token <token>`` (2.x, 3.x, and 1.8+ as ``user:password``).
    """

    def __init__(self, url: str, db: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.url, self.db, self.token, self.timeout = url.rstrip("/"), db, token, timeout
        self._http: InfluxV1Connection | None = None  # built on first use: a bad URL fails the query, as before

    def query(self, statement: str) -> list[dict[str, Any]]:
        """Run one statement (POST /query, epoch ms); return its ``series`` list (empty when nothing matched)."""
        if self._http is None:
            self._http = InfluxV1Connection(
                self.url, token=self.token, timeout=self.timeout, keep_alive=False, error=QueryError
            )
        results = self._http.query({"db": self.db, "q": statement, "epoch": "ms"}, form=True)
        series: list[dict[str, Any]] = []
        for result in results:
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

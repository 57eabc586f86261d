"""``kyojo ingest init-db``: the InfluxDB 1.x layout — database, retention policies, continuous queries.

Layout (names and defaults in :class:`Layout`)::

    raw        DEFAULT  per-minute aggregates as the ingester writes them (default 30 days)
    rollup_1h           hourly per-subject rollups of every released metric, filled by continuous queries;
                        still pseudonymous personal data, so kept no longer than the shortest retention any
                        purpose notice promises (purposes.json: 365 days)
    community           k-anonymous community rollups (``community_*``: no subject, no device) for years

Continuous queries (one per metric, ``kyojo_1h_<metric>``; one for ``community_*``), all ``RESAMPLE EVERY 1h
FOR 6h`` so windows that arrive up to a few hours late (a gateway catching up) are folded in:

- gauges: ``mean(mean)``, ``min(min)``, ``max(max)``, ``last(last)``, ``sum(count)``, ``sum(window_s) AS
  covered_s`` (3600 when every minute of the hour arrived). ``mean`` is the mean of the window means: windows
  have equal length, so each counts once;
- counters: ``sum(delta)``, ``last(last)``, ``sum(count)``, ``sum(window_s) AS covered_s``;
- community: ``last()`` of every field, into ``community`` (rollups are hourly or weekly already).

Every CQ keeps all tags (``GROUP BY time(1h), *``), so erasure (``DELETE WHERE subject = ... AND purpose =
...``, which InfluxDB applies to every retention policy of the database) also erases the rollups.

Idempotent: :func:`init_db` reads ``SHOW RETENTION POLICIES``/``SHOW CONTINUOUS QUERIES`` and only creates,
alters or replaces what differs; a second run changes nothing and returns an empty list of changes.
:func:`backfill` runs the same SELECT ... INTO over an explicit range (CQs only ever look at the last hours).

Existing data: a query that names no retention policy reads the database's *default* RP only. Making ``raw``
the default of a database whose current default (``autogen`` on a database someone wrote to before init-db)
holds points would hide those points from every such query (dashboards, the analyst queries), so
:func:`init_db` refuses with :class:`InitDbError`. With ``migrate=True`` (``--migrate``) it first copies them
into ``raw`` (created without DEFAULT): ``SELECT * INTO <db>.raw.:MEASUREMENT FROM <db>.<old>./.*/ WHERE
<chunk> GROUP BY *`` (``GROUP BY *`` keeps tags as tags; field types are kept) in bounded time chunks, each
verified by ``count(*)`` per measurement and field (the copy has at least as many values as the source), then
switches the default, then verifies every chunk again and copies what was written to the old default in
between. Points older than ``raw``'s duration cannot be written to it: they stay in the old RP and are reported.
The old RP keeps its copies until the operator drops it (``DROP RETENTION POLICY``) once satisfied.

Every identifier in a statement (database, retention policies, CQ names, measurements) goes through
:func:`_ident`: double-quoted with backslash and ``"`` escaped, so an operator-supplied name is a name, never
InfluxQL.

The ingester's operational stats also live here (:class:`IngestStatsPoints`): measurement ``kyojo_ingest``
(tags ``instance``; fields ``received``, ``written``, ``rejected_total`` — cumulative per process —,
``lag_ms``, ``pending_points``, ``write_errors``, and ``gateways_online`` when the ingester knows it) and
``kyojo_ingest_rejects`` (tags ``instance``, ``cause``; field ``count`` = rejections in that stats interval).
The platform-health dashboard reads them.

InfluxDB 2.x has no CQs: see dashboards/README.md for the equivalent buckets, DBRP mappings and tasks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any

import typer

from cloud_ingest.analysis.run import InfluxQL, QueryError
from cloud_ingest.influx import ident
from cloud_ingest.lineproto import line
from kyojo.contract.errors import KyojoError
from kyojo.contract.vocab import METRICS, Aggregation, Category

CQ_PREFIX = "kyojo_"


def shortest_notice_days() -> int:
    """The shortest ``retention_days`` of any purpose in the catalog (kyojo/contract/purposes.json)."""
    doc = json.loads(resources.files("kyojo.contract").joinpath("purposes.json").read_text(encoding="utf-8"))
    return min(int(p["retention_days"]) for p in doc["purposes"].values())


@dataclass(frozen=True)
class Layout:
    """What :func:`init_db` creates. Durations in days (0 = keep forever); ``metrics`` defaults to every
    releasable metric.

    Writes older than the default RP's duration are refused by InfluxDB ("points beyond retention policy"):
    a gateway that catches up after more than ``raw_days`` offline loses those windows in the cloud.
    """

    db: str = "kyojo"
    raw_rp: str = "raw"
    raw_days: int = 30
    rollup_rp: str = "rollup_1h"
    rollup_days: int = field(default_factory=shortest_notice_days)
    community_rp: str = "community"
    community_days: int = 5 * 365
    resample_for: str = "6h"
    metrics: tuple[str, ...] = tuple(m for m, s in METRICS.items() if s.category is not Category.DEVICE)

    def cq_name(self, metric: str) -> str:
        """Name of the hourly CQ of one metric (``community`` for the community rollups)."""
        return f"{CQ_PREFIX}1h_{metric}"


class InitDbError(KyojoError, RuntimeError):
    """init-db would hide existing points, or could not verify their copy; the default RP was not switched."""


_ident = ident  # the old private name


def rollup_select(layout: Layout, metric: str, where: str = "") -> str:
    """The SELECT ... INTO that rolls one metric up to hourly (``metric == "community"``: community_*)."""
    db = _ident(layout.db)
    if metric == "community":
        fields = (
            'last("households") AS "households", last("total") AS "total", last("mean") AS "mean", '
            'last("epsilon") AS "epsilon"'
        )
        into = f"{db}.{_ident(layout.community_rp)}.:MEASUREMENT"
        source = f"{db}.{_ident(layout.raw_rp)}./^community_/"
    else:
        if METRICS[metric].aggregation is Aggregation.COUNTER:
            fields = 'sum("delta") AS "delta", last("last") AS "last"'
        else:
            fields = 'mean("mean") AS "mean", min("min") AS "min", max("max") AS "max", last("last") AS "last"'
        fields += ', sum("count") AS "count", sum("window_s") AS "covered_s"'
        into = f"{db}.{_ident(layout.rollup_rp)}.{_ident(metric)}"
        source = f"{db}.{_ident(layout.raw_rp)}.{_ident(metric)}"
    where_clause = f" WHERE {where}" if where else ""
    return f"SELECT {fields} INTO {into} FROM {source}{where_clause} GROUP BY time(1h), *"  # noqa: S608 - names


def cq_statement(layout: Layout, metric: str) -> str:
    """CREATE CONTINUOUS QUERY for one metric (or ``community``)."""
    return (
        f"CREATE CONTINUOUS QUERY {_ident(layout.cq_name(metric))} ON {_ident(layout.db)} "
        f"RESAMPLE EVERY 1h FOR {layout.resample_for} BEGIN {rollup_select(layout, metric)} END"
    )


_DUR = re.compile(r"(\d+)([hms])")


def _seconds(duration: str) -> int:
    """InfluxDB's ``720h0m0s`` (``0s`` = infinite) in seconds."""
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in _DUR.findall(duration))


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        dict(zip(s["columns"], v, strict=True)) | {"_name": s.get("name")} for s in series for v in s.get("values", [])
    ]


def init_db(
    client: InfluxQL,
    layout: Layout | None = None,
    *,
    migrate: bool = False,
    chunk_hours: float = 6.0,
    now_ms: int | None = None,
) -> list[str]:
    """Create or correct the database, retention policies and CQs; return what changed (empty: nothing).

    Raises :class:`InitDbError` when making ``raw`` the default would hide points in the current default RP,
    unless ``migrate`` (then they are copied first, ``chunk_hours`` of data per statement; ``now_ms`` is the
    time that ``raw``'s duration counts back from, default now).
    """
    layout = layout or Layout()
    db = _ident(layout.db)
    changes: list[str] = []
    names = {r["name"] for r in _rows(client.query("SHOW DATABASES"))}
    if layout.db not in names:
        client.query(f"CREATE DATABASE {db}")
        changes.append(f"created database {layout.db}")
    have = {r["name"]: r for r in _rows(client.query(f"SHOW RETENTION POLICIES ON {db}"))}
    old_default = next((name for name, r in have.items() if r["default"]), None)
    moving: _Move | None = None
    if old_default is not None and old_default != layout.raw_rp and _has_points(client, layout.db, old_default):
        if not migrate:
            raise InitDbError(
                f"database {layout.db!r}: its default retention policy {old_default!r} holds points, and making "
                f"{layout.raw_rp!r} the default would hide them from every query that names no retention policy "
                f"(dashboards, analyst queries). Nothing was changed. Re-run with --migrate to copy them into "
                f"{layout.raw_rp!r} first (in time chunks, verified by count), or move them yourself."
            )
        raw_spec = f"DURATION {f'{layout.raw_days}d' if layout.raw_days else 'INF'} REPLICATION 1"
        cur = have.get(layout.raw_rp)
        if cur is None:  # created without DEFAULT: the old default keeps taking writes until the copy is verified
            client.query(f"CREATE RETENTION POLICY {_ident(layout.raw_rp)} ON {db} {raw_spec}")
            changes.append(f"created retention policy {layout.raw_rp} ({layout.raw_days}d)")
        elif _seconds(str(cur["duration"])) != layout.raw_days * 86400:
            client.query(f"ALTER RETENTION POLICY {_ident(layout.raw_rp)} ON {db} {raw_spec}")
            changes.append(f"altered retention policy {layout.raw_rp} ({layout.raw_days}d)")
        have = {r["name"]: r for r in _rows(client.query(f"SHOW RETENTION POLICIES ON {db}"))}
        moving = _Move(layout, old_default, max(1, int(chunk_hours * 3_600_000)), now_ms)
        moving.sync(client)  # everything there now, verified, before anything depends on it
    for rp, days, default in (
        (layout.raw_rp, layout.raw_days, True),
        (layout.rollup_rp, layout.rollup_days, False),
        (layout.community_rp, layout.community_days, False),
    ):
        spec = f"DURATION {f'{days}d' if days else 'INF'} REPLICATION 1" + (" DEFAULT" if default else "")
        cur = have.get(rp)
        if cur is None:
            client.query(f"CREATE RETENTION POLICY {_ident(rp)} ON {db} {spec}")
            changes.append(f"created retention policy {rp} ({days}d{', default' if default else ''})")
        elif _seconds(str(cur["duration"])) != days * 86400 or (default and not cur["default"]):
            client.query(f"ALTER RETENTION POLICY {_ident(rp)} ON {db} {spec}")
            changes.append(f"altered retention policy {rp} ({days}d{', default' if default else ''})")
    if moving is not None:
        moving.sync(client)  # points written to the old default between the copy and the switch
        changes += moving.report()
    existing = {
        r["name"]: r["query"]
        for r in _rows(client.query("SHOW CONTINUOUS QUERIES"))
        if r["_name"] == layout.db and str(r["name"]).startswith(CQ_PREFIX)
    }
    wanted = {layout.cq_name(m): m for m in (*layout.metrics, "community")}
    for name in sorted(set(existing) - set(wanted)):
        client.query(f"DROP CONTINUOUS QUERY {_ident(name)} ON {db}")
        changes.append(f"dropped continuous query {name}")
    for name, metric in wanted.items():
        statement = cq_statement(layout, metric)
        if name not in existing:
            client.query(statement)
            changes.append(f"created continuous query {name}")
            continue
        try:
            client.query(statement)  # InfluxDB: same text -> no-op; a different one -> "already exists"
        except QueryError as err:
            if "already exists" not in str(err):
                raise
            client.query(f"DROP CONTINUOUS QUERY {_ident(name)} ON {db}")
            client.query(statement)
            changes.append(f"replaced continuous query {name}")
    return changes


# ------------------------------------------------------------------------------------------------------------
# Moving the points of the old default retention policy into raw
# ------------------------------------------------------------------------------------------------------------


def _has_points(client: InfluxQL, db: str, rp: str) -> bool:
    """Whether any measurement of ``db.rp`` holds a point (one row per measurement at most)."""
    return bool(client.query(f"SELECT * FROM {_ident(db)}.{_ident(rp)}./.*/ LIMIT 1"))  # noqa: S608 - names


def _edge_ms(client: InfluxQL, db: str, rp: str, *, last: bool) -> int | None:
    """Time (ms) of the first (or last) point in ``db.rp`` over all measurements; None when empty."""
    order = " ORDER BY time DESC" if last else ""
    rows = _rows(client.query(f"SELECT * FROM {_ident(db)}.{_ident(rp)}./.*/{order} LIMIT 1"))  # noqa: S608
    times = [int(r["time"]) for r in rows]
    return (max(times) if last else min(times)) if times else None


def _counts(client: InfluxQL, db: str, rp: str, where: str) -> dict[tuple[str, str], int]:
    """Values per (measurement, field) in ``db.rp`` matching ``where``."""
    out: dict[tuple[str, str], int] = {}
    for r in _rows(client.query(f"SELECT count(*) FROM {_ident(db)}.{_ident(rp)}./.*/ WHERE {where}")):  # noqa: S608
        for col, n in r.items():
            if col.startswith("count_") and n:
                out[(str(r["_name"]), col.removeprefix("count_"))] = int(n)
    return out


def _points(counts: Mapping[tuple[str, str], int]) -> int:
    """Points behind per-field counts: per measurement, its most counted field (every point has that field)."""
    per: dict[str, int] = {}
    for (m, _), n in counts.items():
        per[m] = max(per.get(m, 0), n)
    return sum(per.values())


@dataclass
class _Move:
    """Copies ``layout.db.source`` into ``layout.db.raw`` chunk by chunk; :meth:`sync` is idempotent."""

    layout: Layout
    source: str
    chunk_ms: int
    now_ms: int | None
    copied: int = 0
    chunks: int = 0
    left: int = 0

    def sync(self, client: InfluxQL) -> None:
        """Copy each chunk whose copy has fewer values than the source; verify it, or raise InitDbError."""
        db, src, dst = self.layout.db, self.source, self.layout.raw_rp
        first, last = _edge_ms(client, db, src, last=False), _edge_ms(client, db, src, last=True)
        if first is None or last is None:
            return
        start = first
        if self.layout.raw_days:
            # raw drops writes older than its duration ("points beyond retention policy"); a minute of margin
            now = int(time.time() * 1000) if self.now_ms is None else self.now_ms
            cutoff = now - self.layout.raw_days * 86_400_000 + 60_000
            self.left = _points(_counts(client, db, src, f"time < {cutoff}ms"))
            start = max(start, cutoff)
        a = start - start % self.chunk_ms
        while a <= last:
            b = a + self.chunk_ms
            where = f"time >= {max(a, start)}ms AND time < {b}ms"
            want = _counts(client, db, src, where)
            if want and not self._enough(client, want, where):
                client.query(
                    f"SELECT * INTO {_ident(db)}.{_ident(dst)}.:MEASUREMENT FROM {_ident(db)}.{_ident(src)}./.*/ "  # noqa: S608
                    f"WHERE {where} GROUP BY *"
                )
                if not self._enough(client, want, where):
                    raise InitDbError(
                        f"copying {src!r} into {dst!r} for {where} left fewer values in {dst!r} than in {src!r} "
                        f"(source {want}); {src!r} keeps every point, re-run init-db --migrate to retry"
                    )
                self.chunks += 1
                self.copied += _points(want)
            a = b

    def _enough(self, client: InfluxQL, want: Mapping[tuple[str, str], int], where: str) -> bool:
        have = _counts(client, self.layout.db, self.layout.raw_rp, where)
        return all(have.get(k, 0) >= n for k, n in want.items())

    def report(self) -> list[str]:
        """What the move did, for the list of changes."""
        src, dst = self.source, self.layout.raw_rp
        out = [
            f"copied {self.copied} points from retention policy {src} into {dst} ({self.chunks} chunks, "
            f"verified by count); {src} keeps its copies until you drop it"
        ]
        if self.left:
            out.append(f"left {self.left} points older than {dst}'s {self.layout.raw_days}d in {src}")
        return out


def backfill(client: InfluxQL, since_ms: int, until_ms: int, layout: Layout | None = None) -> dict[str, int]:
    """Run every rollup over [since, until) now (whole hours); returns points written per CQ target."""
    layout = layout or Layout()
    start = since_ms // 3_600_000 * 3_600_000
    end = -(-until_ms // 3_600_000) * 3_600_000
    where = f"time >= {start}ms AND time < {end}ms"
    written: dict[str, int] = {}
    for metric in (*layout.metrics, "community"):
        for s in client.query(rollup_select(layout, metric, where)):
            written[metric] = written.get(metric, 0) + int(s["values"][0][1])
    return written


# ------------------------------------------------------------------------------------------------------------
# The ingester's stats as points (kyojo_ingest, kyojo_ingest_rejects)
# ------------------------------------------------------------------------------------------------------------

INGEST_MEASUREMENT = "kyojo_ingest"
REJECTS_MEASUREMENT = "kyojo_ingest_rejects"


class IngestStatsPoints:
    """Turns the ingester's JSON stats lines into ``kyojo_ingest``/``kyojo_ingest_rejects`` points.

    Counters in ``kyojo_ingest`` stay cumulative per process (the dashboard takes non-negative derivatives,
    which survive restarts); rejects are written per interval and cause (only causes that grew), so a cause
    that first appears is counted from its first rejection.
    """

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._rejected: dict[str, int] = {}

    def lines(self, stats: Mapping[str, Any], ts_ms: int, *, gateways_online: int | None = None) -> list[str]:
        """Line protocol for one stats snapshot taken at ``ts_ms``."""
        lag = stats.get("lag_ms")
        lag_ms = lag.get("last") if isinstance(lag, Mapping) else lag
        fields: dict[str, int | float | None] = {
            "received": int(stats.get("received", 0)),
            "written": int(stats.get("written", 0)),
            "rejected_total": int(stats.get("rejected_total", 0)),
            "pending_points": int(stats.get("pending_points", 0)),
            "write_errors": int(stats.get("write_errors", 0)),
            "lag_ms": float(lag_ms) if lag_ms is not None else None,
            "gateways_online": gateways_online,
        }
        out = [line(INGEST_MEASUREMENT, {"instance": self.instance}, fields, ts_ms)]
        for cause, total in sorted((stats.get("rejected") or {}).items()):
            grew = int(total) - self._rejected.get(cause, 0)
            if grew < 0:  # the process restarted: its counters started again from zero
                grew = int(total)
            if grew:
                out.append(
                    line(REJECTS_MEASUREMENT, {"instance": self.instance, "cause": cause}, {"count": grew}, ts_ms)
                )
            self._rejected[cause] = int(total)
        return out


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``init-db`` to a Typer app (the lead mounts it on ``kyojo ingest``)."""

    @app.command("init-db")
    def init_db_cmd(
        influx_url: Annotated[str, typer.Option(envvar="KYOJO_INFLUX_URL", help="InfluxDB 1.x URL")] = (
            "http://127.0.0.1:8086"
        ),
        influx_db: Annotated[str, typer.Option(envvar="KYOJO_INFLUX_DB", help="database")] = "kyojo",
        raw_days: Annotated[int, typer.Option(help="keep per-minute aggregates this many days")] = 30,
        rollup_days: Annotated[
            int | None, typer.Option(help="keep hourly per-subject rollups (default: shortest notice)")
        ] = None,
        community_days: Annotated[int, typer.Option(help="keep community rollups this many days")] = 5 * 365,
        backfill_hours: Annotated[float, typer.Option(help="also roll up the last N hours now")] = 0.0,
        migrate: Annotated[
            bool,
            typer.Option(help="copy the points of the current default retention policy into raw before switching"),
        ] = False,
        migrate_chunk_hours: Annotated[
            float, typer.Option(min=0.01, help="--migrate copies this many hours of data per statement")
        ] = 6.0,
    ) -> None:
        """Create the database, retention policies and continuous queries (idempotent; prints the changes)."""
        import time

        kwargs: dict[str, Any] = {"db": influx_db, "raw_days": raw_days, "community_days": community_days}
        if rollup_days is not None:
            kwargs["rollup_days"] = rollup_days
        layout = Layout(**kwargs)
        client = InfluxQL(influx_url, influx_db)
        try:
            changes = init_db(client, layout, migrate=migrate, chunk_hours=migrate_chunk_hours)
            filled: dict[str, int] = {}
            if backfill_hours > 0:
                now = int(time.time() * 1000)
                filled = backfill(client, now - int(backfill_hours * 3_600_000), now, layout)
        except (QueryError, InitDbError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(1) from err
        typer.echo(json.dumps({"changes": changes, "backfilled": filled}))


def statements(layout: Layout | None = None) -> Sequence[str]:
    """Every CQ statement, e.g. to review them or apply them by hand."""
    layout = layout or Layout()
    return [cq_statement(layout, m) for m in (*layout.metrics, "community")]

"""Community rollups: cross-household aggregates released only where enough households contribute.

A contributor is a *household*: the ``household`` tag the ingester puts on every point (:mod:`cloud_ingest.scope`,
the cloud's keyed tag of the sending gateway under the purpose). Subjects are named by gateways, so one gateway
could invent fourteen subjects beside one real household; contributors are counted by the tag the cloud derived
from the authenticated gateway instead, so that gateway still counts once and the k-threshold and the dominance
rule hold per household (points written before the tag existed fall back to their subject).

For each time bucket the rollup sums one metric per household (``delta`` of a counter, e.g. ``energy``, or
``mean`` of a gauge; where a household has several series at the same time — a whole-home meter and its plugs —
``reduce="max"`` takes the largest, i.e. the meter, and ``reduce="sum"`` adds them), then applies, in order:

1. the k-threshold: at least ``k`` households contribute (default 15);
2. the dominance rule: no household above ``max_share`` of the total (default 0.15) — together the utilities'
   "15/15 rule";
3. optionally the Laplace mechanism: each household's contribution is clipped to ``clip`` (its sensitivity),
   and the released total gets Laplace(clip / epsilon) noise; the household count is released as is (it already
   passed the threshold). Every household that contributes to a noisy release spends ``epsilon`` from its budget
   in the ledger (sequential composition: the epsilons of all releases a household took part in add up); a
   household whose spent budget would exceed ``budget`` is left out of further noisy releases, and if that
   leaves fewer than ``k`` households the bucket is suppressed.

Suppressed buckets are reported with their reason and never written. Released buckets are written to InfluxDB as
measurement ``community_<metric>`` (tags ``purpose``, ``bucket``; fields ``households``, ``total``, ``mean``,
``epsilon``) at the bucket's start, so a rerun overwrites instead of adding.

Events instead of aggregates (``RollupConfig(events_kind="alert.bp_crisis")``, CLI ``--events 'alert.*'``): a
household's value in a bucket is the number of distinct episodes of that kind it released — the distinct
``event_key`` values (``alert_id`` for alerts: an alert's opened/escalated/closed updates share it) among the
points of measurement ``events`` with tag ``kind`` = the kind, purpose = ``purpose`` and (if ``event_state`` is set)
field ``state`` = ``open``. An episode counts once, in the bucket of its start (``started_ms``, else the time of
its first update), and only if that start lies in the rolled-up range. The same k-threshold, dominance rule and
noise apply; the release is ``community_<kind with . as _>``, e.g. ``community_alert_bp_crisis``.

Subjects are per-purpose pseudonyms: the rollup never sees who a household is.
"""

from __future__ import annotations

import fnmatch
import math
import random
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloud_ingest.erasure import InfluxV1Admin, _lit, ident
from cloud_ingest.lineproto import escape_measurement, escape_tag
from cloud_ingest.scope import HOUSEHOLD_TAG

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # an event attribute name (kyojo.contract.wire.EventItem.attrs)


@dataclass
class RollupConfig:
    metric: str = "energy"
    field: str = "delta"
    purpose: str = "community-energy"
    bucket_s: int = 3600
    k: int = 15
    max_share: float = 0.15
    epsilon: float | None = None
    clip: float | None = None
    budget: float = 10.0
    seed: int | None = None
    reduce: str = "max"
    #: count events of this kind (tag ``kind`` of measurement ``events``) instead of reading ``metric``/``field``
    events_kind: str | None = None
    #: the field whose distinct values are the episodes counted (``alert_id``; ``event_id`` for one-off events)
    event_key: str = "alert_id"
    #: only updates whose ``state`` field has this value (``None``: every update)
    event_state: str | None = "open"

    @property
    def release_measurement(self) -> str:
        """Where a released bucket is written: ``community_<metric>`` or ``community_<kind, . -> _>``."""
        name = self.events_kind.replace(".", "_") if self.events_kind is not None else self.metric
        return f"community_{name}"

    def for_events(self, kind: str) -> RollupConfig:
        """This config, counting events of ``kind``: alerts (``alert.*``) by distinct ``alert_id`` among their
        ``open`` updates, anything else (e.g. ``pickup``) by distinct ``event_id``."""
        if kind.startswith("alert."):
            return replace(self, events_kind=kind, event_key="alert_id", event_state="open")
        return replace(self, events_kind=kind, event_key="event_id", event_state=None)


@dataclass
class Bucket:
    start_ms: int
    households: int
    total: float | None = None
    mean: float | None = None
    suppressed: str | None = None
    epsilon: float | None = None
    contributors: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_ms": self.start_ms,
            "households": self.households,
            "total": self.total,
            "mean": self.mean,
            "suppressed": self.suppressed,
            "epsilon": self.epsilon,
        }


class Ledger:
    """Per-household privacy budget spent (sum of epsilons), in a small SQLite file."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS spent(subject TEXT NOT NULL, purpose TEXT NOT NULL, epsilon REAL NOT NULL, "
            "release TEXT NOT NULL)"
        )

    def spent(self, subject: str, purpose: str) -> float:
        row = self.conn.execute(
            "SELECT coalesce(sum(epsilon), 0) FROM spent WHERE subject = ? AND purpose = ?", (subject, purpose)
        ).fetchone()
        return float(row[0])

    def charge(self, subjects: list[str], purpose: str, epsilon: float, release: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO spent(subject, purpose, epsilon, release) VALUES(?, ?, ?, ?)",
            [(s, purpose, epsilon, release) for s in subjects],
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def laplace(rng: random.Random, scale: float) -> float:
    """One draw from Laplace(0, scale) by inverse transform."""
    u = rng.random() - 0.5
    return -scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u))


def decide(
    start_ms: int,
    per_household: dict[str, float],
    cfg: RollupConfig,
    *,
    ledger: Ledger | None = None,
    rng: random.Random | None = None,
) -> Bucket:
    """Apply the k-threshold, the dominance rule and (optionally) the Laplace mechanism to one bucket."""
    values = dict(per_household)
    if cfg.epsilon is not None:
        if ledger is None or cfg.clip is None:
            raise ValueError("noise needs a ledger and a clip bound")
        values = {s: v for s, v in values.items() if ledger.spent(s, cfg.purpose) + cfg.epsilon <= cfg.budget}
    n = len(values)
    if n < cfg.k:
        reason = "k_threshold" if len(per_household) < cfg.k else "budget_exhausted"
        return Bucket(start_ms, n, suppressed=reason)
    total = sum(values.values())
    if total > 0 and max(values.values()) / total > cfg.max_share:
        return Bucket(start_ms, n, suppressed="dominance")
    if cfg.epsilon is None:
        return Bucket(start_ms, n, total=total, mean=total / n, contributors=sorted(values))
    assert cfg.clip is not None
    clipped = sum(min(max(v, 0.0), cfg.clip) for v in values.values())
    noisy = clipped + laplace(rng or random.Random(cfg.seed), cfg.clip / cfg.epsilon)
    return Bucket(start_ms, n, total=noisy, mean=noisy / n, epsilon=cfg.epsilon, contributors=sorted(values))


def event_kinds(admin: InfluxV1Admin, pattern: str, purpose: str) -> list[str]:
    """Event kinds present in ``events`` under ``purpose`` that match a glob (``alert.*``), sorted."""
    q = f'SHOW TAG VALUES FROM "events" WITH KEY = "kind" WHERE "purpose" = {_lit(purpose)}'
    kinds = {
        str(row[1])
        for result in admin.query_epoch_ms(q)
        for series in result.get("series", [])
        for row in series.get("values", [])
    }
    return sorted(k for k in kinds if fnmatch.fnmatchcase(k, pattern))


def _metric_values(admin: InfluxV1Admin, cfg: RollupConfig, start_ms: int, end_ms: int) -> dict[int, dict[str, float]]:
    """Per bucket start, per household: the metric's field summed over the bucket (``reduce`` at one time)."""
    q = (
        f'SELECT {ident(cfg.field)}, "subject", "{HOUSEHOLD_TAG}" FROM {ident(cfg.metric)} '  # noqa: S608 - quoted
        f'WHERE "purpose" = {_lit(cfg.purpose)} AND time >= {start_ms}ms AND time < {end_ms}ms'
    )
    at_time: dict[tuple[int, str], float] = {}
    for result in admin.query_epoch_ms(q):
        for series in result.get("series", []):
            cols = series["columns"]
            it, iv = cols.index("time"), cols.index(cfg.field)
            who = _contributor(cols)
            for row in series["values"]:
                if row[iv] is None:
                    continue
                key, value = (int(row[it]), who(row)), float(row[iv])
                prev = at_time.get(key)
                if prev is None:
                    at_time[key] = value
                else:
                    at_time[key] = max(prev, value) if cfg.reduce == "max" else prev + value
    bucket_ms = cfg.bucket_s * 1000
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (t, subject), value in at_time.items():
        sums[t // bucket_ms * bucket_ms][subject] += value
    return sums


def _contributor(cols: list[str]) -> Any:
    """row -> the household the row counts for: its household tag, else (points from before the tag) its subject."""
    isub = cols.index("subject")
    ihh = cols.index(HOUSEHOLD_TAG) if HOUSEHOLD_TAG in cols else None

    def who(row: list[Any]) -> str:
        if ihh is not None and row[ihh]:
            return str(row[ihh])
        return f"subject:{row[isub]}"

    return who


def _event_counts(admin: InfluxV1Admin, cfg: RollupConfig, start_ms: int, end_ms: int) -> dict[int, dict[str, float]]:
    """Per bucket start, per household: distinct episodes (``event_key``) of ``events_kind`` starting in it."""
    assert cfg.events_kind is not None
    key = cfg.event_key
    if not _NAME.match(key):
        raise ValueError(f"event_key {key!r}: not a field name")
    state = f' AND "state" = {_lit(cfg.event_state)}' if cfg.event_state is not None else ""
    q = (
        f'SELECT {ident(key)}, "started_ms", "subject", "{HOUSEHOLD_TAG}" FROM "events" '  # noqa: S608 - quoted
        f'WHERE "purpose" = {_lit(cfg.purpose)} AND "kind" = {_lit(cfg.events_kind)}{state} '
        f"AND time >= {start_ms}ms AND time < {end_ms}ms"
    )
    first: dict[tuple[str, str], int] = {}  # (household, episode) -> its start
    for result in admin.query_epoch_ms(q):
        for series in result.get("series", []):
            cols = series["columns"]
            it, ik = cols.index("time"), cols.index(key)
            who = _contributor(cols)
            ist = cols.index("started_ms") if "started_ms" in cols else None
            for row in series["values"]:
                if row[ik] is None:
                    continue
                t = int(row[ist]) if ist is not None and row[ist] is not None else int(row[it])
                episode = (who(row), str(row[ik]))
                first[episode] = min(t, first.get(episode, t))
    bucket_ms = cfg.bucket_s * 1000
    counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (subject, _), t in first.items():
        if start_ms <= t < end_ms:  # an episode that started before the range was counted by an earlier run
            counts[t // bucket_ms * bucket_ms][subject] += 1.0
    return counts


def run_rollup(
    admin: InfluxV1Admin, cfg: RollupConfig, start_ms: int, end_ms: int, *, ledger: Ledger | None = None
) -> list[Bucket]:
    """Roll up [start, end) into buckets, write the released ones, charge the ledger. Returns every bucket."""
    if cfg.reduce not in ("max", "sum"):
        raise ValueError("reduce must be 'max' or 'sum'")
    if cfg.events_kind is None:
        sums = _metric_values(admin, cfg, start_ms, end_ms)
    else:
        sums = _event_counts(admin, cfg, start_ms, end_ms)
    rng = random.Random(cfg.seed)
    buckets = [decide(b, sums[b], cfg, ledger=ledger, rng=rng) for b in sorted(sums)]
    name = cfg.release_measurement
    lines = []
    for b in buckets:
        if b.suppressed is not None or b.total is None:
            continue
        fields = f"households={b.households}i,total={b.total!r},mean={b.mean!r}"
        if b.epsilon is not None:
            fields += f",epsilon={b.epsilon!r}"
        lines.append(
            f"{escape_measurement(name)},bucket={cfg.bucket_s}s,purpose={escape_tag(cfg.purpose)} {fields} {b.start_ms}"
        )
        if ledger is not None and b.epsilon is not None:
            label = cfg.events_kind if cfg.events_kind is not None else cfg.metric
            ledger.charge(b.contributors, cfg.purpose, b.epsilon, f"{label}@{b.start_ms}")
    if lines:
        admin.write("\n".join(lines))
    return buckets

"""Community rollups: cross-household aggregates released only where enough households contribute.

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

Subjects are per-purpose pseudonyms: the rollup never sees who a household is.
"""

from __future__ import annotations

import math
import random
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_ingest.erasure import InfluxV1Admin, _lit


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


def run_rollup(
    admin: InfluxV1Admin, cfg: RollupConfig, start_ms: int, end_ms: int, *, ledger: Ledger | None = None
) -> list[Bucket]:
    """Roll up [start, end) into buckets, write the released ones, charge the ledger. Returns every bucket."""
    q = (
        f'SELECT "{cfg.field}", "subject" FROM "{cfg.metric}" '  # noqa: S608 - names are settings, values quoted
        f'WHERE "purpose" = {_lit(cfg.purpose)} AND time >= {start_ms}ms AND time < {end_ms}ms'
    )
    if cfg.reduce not in ("max", "sum"):
        raise ValueError("reduce must be 'max' or 'sum'")
    at_time: dict[tuple[int, str], float] = {}
    bucket_ms = cfg.bucket_s * 1000
    for result in admin.query_epoch_ms(q):
        for series in result.get("series", []):
            cols = series["columns"]
            it, iv, isub = cols.index("time"), cols.index(cfg.field), cols.index("subject")
            for row in series["values"]:
                if row[iv] is None:
                    continue
                key, value = (int(row[it]), str(row[isub])), float(row[iv])
                prev = at_time.get(key)
                if prev is None:
                    at_time[key] = value
                else:
                    at_time[key] = max(prev, value) if cfg.reduce == "max" else prev + value
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (t, subject), value in at_time.items():
        sums[t // bucket_ms * bucket_ms][subject] += value
    rng = random.Random(cfg.seed)
    buckets = [decide(b, sums[b], cfg, ledger=ledger, rng=rng) for b in sorted(sums)]
    lines = []
    for b in buckets:
        if b.suppressed is not None or b.total is None:
            continue
        fields = f"households={b.households}i,total={b.total!r},mean={b.mean!r}"
        if b.epsilon is not None:
            fields += f",epsilon={b.epsilon!r}"
        lines.append(f"community_{cfg.metric},bucket={cfg.bucket_s}s,purpose={cfg.purpose} {fields} {b.start_ms}")
        if ledger is not None and b.epsilon is not None:
            ledger.charge(b.contributors, cfg.purpose, b.epsilon, f"{cfg.metric}@{b.start_ms}")
    if lines:
        admin.write("\n".join(lines))
    return buckets

"""Community rollups against a real InfluxDB: k-threshold, dominance, Laplace noise with a budget ledger."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from cloud_ingest.erasure import InfluxV1Admin
from cloud_ingest.rollup import Ledger, RollupConfig, decide, laplace, run_rollup
from provisioning.local import InfluxDB

pytestmark = pytest.mark.influx

H = 3_600_000
T0 = 1_717_200_000_000


def seed_points(influxdb: InfluxDB, db: str) -> None:
    lines = []

    def add(subject: str, start: int, delta: float) -> None:
        for m in range(60):  # minute windows; a meter series and a smaller plug series per household
            t = start + m * 60_000
            lines.append(
                f"energy,device=d-meter-{subject},purpose=community-energy,subject={subject} delta={delta} {t}"
            )
            lines.append(
                f"energy,device=d-plug-{subject},purpose=community-energy,subject={subject} delta={delta / 4} {t}"
            )

    for i in range(20):  # hour 0: 20 similar households -> released
        add(f"s-{i:02d}", T0, 10.0 + i % 3)
    for i in range(10):  # hour 1: 10 households -> below k
        add(f"s-{i:02d}", T0 + H, 10.0)
    for i in range(20):  # hour 2: 20 households, one of them a quarter of the total -> dominance
        add(f"s-{i:02d}", T0 + 2 * H, 80.0 if i == 0 else 12.0)
    lines.append(f"energy,device=d-x,purpose=preventive-care,subject=s-99 delta=1 {T0}")  # another purpose: ignored
    influxdb.write_lines("\n".join(lines), db)


def test_rollup_suppresses_small_and_dominated_groups(influxdb: InfluxDB, influx_db: str) -> None:
    seed_points(influxdb, influx_db)
    admin = InfluxV1Admin(influxdb.url, influx_db)
    buckets = run_rollup(admin, RollupConfig(), T0, T0 + 3 * H)
    by_start = {b.start_ms: b for b in buckets}
    released = by_start[T0]
    assert released.suppressed is None
    assert released.households == 20
    expected = sum(60 * (10.0 + i % 3) for i in range(20))  # the meter series (max), not meter + plugs
    assert released.total == pytest.approx(expected)
    assert by_start[T0 + H].suppressed == "k_threshold"
    assert by_start[T0 + 2 * H].suppressed == "dominance"
    rows = influxdb.query_rows('SELECT * FROM "community_energy"', influx_db)
    assert [(r["time"], r["households"]) for r in rows] == [(T0, 20)]  # only the released bucket is written
    assert "subject" not in rows[0]
    run_rollup(admin, RollupConfig(), T0, T0 + 3 * H)  # a rerun overwrites, never adds
    assert len(influxdb.query_rows('SELECT * FROM "community_energy"', influx_db)) == 1


def test_laplace_noise_is_unbiased_with_the_right_scale() -> None:
    rng = random.Random(1)
    draws = [laplace(rng, 2.0) for _ in range(40_000)]
    assert statistics.fmean(draws) == pytest.approx(0.0, abs=0.05)
    assert statistics.fmean(abs(d) for d in draws) == pytest.approx(2.0, rel=0.03)  # E|X| = scale


def test_noisy_release_spends_budget_and_exhausted_households_drop_out(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    cfg = RollupConfig(k=15, epsilon=1.0, clip=20.0, budget=2.5, seed=3)
    households = {f"s-{i:02d}": 10.0 for i in range(16)}
    first = decide(0, households, cfg, ledger=ledger)
    assert first.suppressed is None
    assert first.epsilon == 1.0
    assert first.total != pytest.approx(160.0, abs=1e-9)  # noise was added
    assert abs(first.total - 160.0) < 20.0 * 12  # ... of the promised scale (clip/epsilon = 20)
    for b in (first, decide(1, households, cfg, ledger=ledger)):
        ledger.charge(b.contributors, cfg.purpose, 1.0, str(b.start_ms))
    assert ledger.spent("s-00", cfg.purpose) == 2.0
    third = decide(2, households, cfg, ledger=ledger)  # a third release would exceed 2.5
    assert third.suppressed == "budget_exhausted"
    ledger.close()


def test_cli_rollup_prints_buckets_and_summary(influxdb: InfluxDB, influx_db: str) -> None:
    import json
    import time

    from typer.testing import CliRunner

    from edge_agent.cli import app

    hour = int(time.time() * 1000) // H * H - H  # the last complete hour
    lines = [
        f"energy,device=d-m{i},purpose=community-energy,subject=s-{i} delta=5 {hour + 60_000 * m}"
        for i in range(16)
        for m in range(3)
    ]
    influxdb.write_lines("\n".join(lines), influx_db)
    out = CliRunner().invoke(
        app, ["ingest", "rollup", "--influx-url", influxdb.url, "--influx-db", influx_db, "--hours", "2"]
    )
    assert out.exit_code == 0, out.output
    docs = [json.loads(line) for line in out.output.splitlines()]
    assert docs[-1] == {"buckets": 1, "released": 1, "suppressed": 0}
    assert docs[0]["households"] == 16
    assert docs[0]["total"] == 16 * 15.0

"""Community rollups against a real InfluxDB: k-threshold, dominance, Laplace noise with a budget ledger."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace
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

    from kyojo.cli import app

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


W = 604_800_000
WEEK0 = T0 // W * W


def _alert(
    kind: str, subject: str, alert_id: str, state: str, t: int, started: int, purpose: str = "preventive-care"
) -> str:
    """One alert update exactly as the ingester writes it (cloud_ingest.lineproto.event_lines)."""
    return (
        f"events,category=health,device=d-{subject},kind={kind},purpose={purpose},severity=urgent,subject={subject} "
        f'event_id="al-{subject}-{alert_id}-{state}-{t}",alert_id="{alert_id}",level="urgent",'
        f'started_ms={started}i,state="{state}" {t}'
    )


def seed_alerts(influxdb: InfluxDB, db: str) -> None:
    lines = []
    for i in range(16):  # week 0: 16 households open one bp_crisis each ...
        s, t = f"s-{i:02d}", WEEK0 + 86_400_000 + i * 60_000
        lines.append(_alert("alert.bp_crisis", s, "p1:bp_crisis:1", "open", t, t))
        lines.append(_alert("alert.bp_crisis", s, "p1:bp_crisis:1", "closed", t + 3_600_000, t))
    s0 = WEEK0 + 86_400_000
    # ... s-00 escalates the same alert (a second open update, same alert_id) in week 1: still one alert, in week 0
    lines.append(_alert("alert.bp_crisis", "s-00", "p1:bp_crisis:1", "open", WEEK0 + W + 1000, s0))
    # s-01 has a second, distinct alert in week 0 (the same person label on another gateway is another subject)
    lines.append(_alert("alert.bp_crisis", "s-01", "p1:bp_crisis:2", "open", s0 + 2 * 86_400_000, s0 + 2 * 86_400_000))
    for i in range(5):  # week 1: 5 households -> below k
        t = WEEK0 + W + 86_400_000 + i
        lines.append(_alert("alert.bp_crisis", f"s-{i:02d}", "p1:bp_crisis:9", "open", t, t))
    for i in range(16):  # spo2_low in week 0, 16 households, but one has 4 of 19 -> dominance
        for e in range(4 if i == 0 else 1):
            t = WEEK0 + 2 * 86_400_000 + e * 3_600_000 + i
            lines.append(_alert("alert.spo2_low", f"s-{i:02d}", f"p1:spo2_low:{e}", "open", t, t))
    for i in range(20):  # another purpose: never counted
        t = WEEK0 + 86_400_000 + i
        lines.append(_alert("alert.bp_crisis", f"s-x{i}", "a", "open", t, t, purpose="community-energy"))
    influxdb.write_lines("\n".join(lines), db)


def test_event_rollup_counts_distinct_open_alerts_per_household(influxdb: InfluxDB, influx_db: str) -> None:
    seed_alerts(influxdb, influx_db)
    admin = InfluxV1Admin(influxdb.url, influx_db)
    cfg = RollupConfig(purpose="preventive-care", bucket_s=W // 1000).for_events("alert.bp_crisis")
    assert (cfg.release_measurement, cfg.event_key, cfg.event_state) == (
        "community_alert_bp_crisis",
        "alert_id",
        "open",
    )
    buckets = {b.start_ms: b for b in run_rollup(admin, cfg, WEEK0, WEEK0 + 2 * W)}
    assert (buckets[WEEK0].households, buckets[WEEK0].total, buckets[WEEK0].suppressed) == (16, 17.0, None)
    assert (buckets[WEEK0 + W].households, buckets[WEEK0 + W].suppressed) == (5, "k_threshold")
    rows = influxdb.query_rows('SELECT * FROM "community_alert_bp_crisis"', influx_db)
    assert [(r["time"], r["households"], r["total"], r["bucket"]) for r in rows] == [(WEEK0, 16, 17.0, "604800s")]
    assert "subject" not in rows[0] and "device" not in rows[0]
    # rolling up week 1 alone: the escalated alert started in week 0, so it is not counted again
    # (k=1 to see the total; the release goes to the same measurement, at week 1)
    only = run_rollup(admin, replace(cfg, k=1, max_share=1.0), WEEK0 + W, WEEK0 + 2 * W)
    assert [(b.start_ms, b.households, b.total) for b in only] == [(WEEK0 + W, 5, 5.0)]
    spo2 = run_rollup(admin, cfg.for_events("alert.spo2_low"), WEEK0, WEEK0 + 2 * W)
    assert [(b.households, b.total, b.suppressed) for b in spo2] == [(16, None, "dominance")]  # 4 of 19 from one home
    assert not influxdb.query_rows('SELECT * FROM "community_alert_spo2_low"', influx_db)
    pickups = RollupConfig().for_events("pickup")
    assert (pickups.release_measurement, pickups.event_key, pickups.event_state) == (
        "community_pickup",
        "event_id",
        None,
    )


def test_cli_rollup_events_iterates_the_alert_kinds(influxdb: InfluxDB, influx_db: str) -> None:
    import json
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from kyojo.cli import app

    seed_alerts(influxdb, influx_db)
    until = datetime.fromtimestamp((WEEK0 + 2 * W) / 1000, tz=UTC).isoformat()
    args = ["ingest", "rollup", "--influx-url", influxdb.url, "--influx-db", influx_db, "--events", "alert.*"]
    out = CliRunner().invoke(app, [*args, "--bucket", "604800", "--hours", "336", "--until", until])
    assert out.exit_code == 0, out.output
    docs = [json.loads(line) for line in out.output.splitlines()]
    assert docs[-1] == {
        "buckets": 3,
        "released": 1,
        "suppressed": 2,
        "measurements": ["community_alert_bp_crisis", "community_alert_spo2_low"],
    }
    assert [(d["measurement"], d["start_ms"], d["households"], d["suppressed"]) for d in docs[:-1]] == [
        ("community_alert_bp_crisis", WEEK0, 16, None),
        ("community_alert_bp_crisis", WEEK0 + W, 5, "k_threshold"),
        ("community_alert_spo2_low", WEEK0, 16, "dominance"),
    ]

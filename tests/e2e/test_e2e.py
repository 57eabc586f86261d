"""End to end with real processes: simulated household -> agent -> Mosquitto -> ingester -> InfluxDB.

Ground truth comes from fresh simulator instances (same seed) computed here, independently of the agent's
aggregation code; the comparison covers every released window of every consented series.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import drivers.sim as sim
from drivers.clock import ScaledClock
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from kyojo.contract.vocab import METRICS, Aggregation, Reading
from kyojo.keys import GatewayKeys, load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc, LockstepClock, agent_config, run_agent_in_thread
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

HOME = "home-e2e"
T0 = 1_717_189_200.0  # 2024-05-31T21:00:00Z = 06:00 JST: the morning cuff reading falls inside the run
SPEED = 1800.0  # half an hour per real second
GRACE_S = 20 * SPEED * 0.05  # simulated seconds (one real second) before a window closes
Key = tuple[str, str, str, int]  # metric, device, subject, window start (ms)


def truth(readings: list[Reading], window_s: int, until_ms: int) -> dict[Key, dict[str, float]]:
    """Expected aggregates, computed without the agent's code: per series and window, closed before until."""
    series: dict[tuple[str, str, str], list[Reading]] = defaultdict(list)
    for r in sorted(readings, key=lambda r: r.ts):
        series[(r.metric, r.device, r.subject)].append(r)
    out: dict[Key, dict[str, float]] = {}
    for (metric, device, subject), rs in series.items():
        prev: float | None = None
        windows: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            windows[round(r.ts * 1000) // (window_s * 1000) * window_s * 1000].append(r.value)
        for start in sorted(windows):
            vals = windows[start]
            if start + window_s * 1000 > until_ms:
                break
            key = (metric, device, subject, start)
            if METRICS[metric].aggregation is Aggregation.COUNTER:
                delta = 0.0
                for v in vals:
                    if prev is not None:
                        delta += v - prev if v >= prev else v
                    prev = v
                out[key] = {"count": len(vals), "last": vals[-1], "delta": delta}
            else:
                out[key] = {
                    "count": len(vals),
                    "mean": sum(vals) / len(vals),
                    "min": min(vals),
                    "max": max(vals),
                    "last": vals[-1],
                }
    return out


def influx_points(influxdb: InfluxDB, db: str, keys: GatewayKeys, ids: set[str]) -> dict[Key, dict[str, Any]]:
    """Every point, keyed by real ids: the test maps the cloud's per-purpose pseudonyms back with the
    gateway's key (the cloud cannot), and any tag that is not a pseudonym of a known id fails the test."""
    names = {
        f(purpose, i): i for purpose in consent.catalog() for i in ids for f in (keys.pseudonym, keys.device_pseudonym)
    }
    got: dict[Key, dict[str, Any]] = {}
    for metric in METRICS:
        for row in influxdb.query_rows(f'SELECT * FROM "{metric}" GROUP BY *', db):  # noqa: S608
            assert row["subject"].startswith("s-") and row["device"].startswith("d-"), row
            key = (metric, names[row["device"]], names[row["subject"]], int(row["time"]))
            assert key not in got, f"duplicate point {key}"
            got[key] = row
    return got


def test_household_hours_end_to_end(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str) -> None:
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=HOME)
    given = datetime.fromtimestamp(T0, tz=UTC)
    conn = connect(cfg.db_path)
    health = consent.open_store(cfg, conn).grant("preventive-care", "p1", now=given)  # p2 gives no consent
    energy = consent.open_store(cfg, conn).grant("community-energy", HOME, now=given)  # EV sharing: not granted
    conn.close()
    ingester = IngesterProc(
        mosquitto.port, influxdb.url, influx_db, client_id="e2e-ingest", log=tmp_path / "ingest.log"
    )
    # the agent's clock never runs more than two driver ticks past what every simulated driver has emitted, so a
    # stalled agent thread on a busy machine cannot make readings late (tests/agentkit.py, LockstepClock)
    clock = LockstepClock(ScaledClock(T0, speed=SPEED), lead=2 * SPEED * 0.05)
    sims = sim.household(HOME, 11, persons=("p1", "p2"))
    drivers = [sim.SimDriver(s, clock, tick_s=SPEED * 0.05, start=T0) for s in sims]
    clock.drivers = drivers

    def make() -> Agent:
        agent = Agent(cfg, clock=clock, drivers=drivers)
        # a window closes a second of simulated-clock time after its end, above twice the clock's lead
        agent.pipeline.min_grace_s = max(agent.pipeline.min_grace_s, GRACE_S)
        return agent

    _, stop, holder = run_agent_in_thread(make)
    agent: Agent = holder[0]
    wait_for(lambda: clock.now() > T0 + 3 * 3600)  # three simulated hours

    # withdraw the energy consent mid-run: nothing of it may arrive after this point
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).withdraw(energy.id, now=datetime.fromtimestamp(clock.now(), tz=UTC))
    conn.close()
    withdrawn_at = clock.now()
    wait_for(lambda: clock.now() > T0 + 4 * 3600)
    stop()
    conn = connect(cfg.db_path)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    marks = {c: int(ms) for c, ms in conn.execute("SELECT category, next_start FROM watermark")}
    conn.close()
    sent = agent.publisher.stats.aggregates_sent
    try:
        wait_for(lambda: ingester.last.get("written", 0) >= sent)
    except AssertionError:
        print("DEBUG", sent, agent.publisher.stats, ingester.last)
        raise
    final = ingester.stop()
    assert final.get("rejected", {}) == {}
    own = influxdb.query_rows('SELECT "written", "received" FROM "kyojo_ingest" GROUP BY "instance"', influx_db)
    assert {r["instance"] for r in own} == {"e2e-ingest"}  # the ingester reports on itself (platform health)
    assert 0 < max(r["written"] for r in own) <= final["written"]

    ids = {s.device_id for s in sims} | {s.subject for s in sims}
    got = influx_points(influxdb, influx_db, load_keys(cfg.gateway.data_dir), ids)
    covered = min(d.covered_until or 0 for d in drivers)
    expected: dict[Key, dict[str, float]] = {}
    for s in sims:
        rs = s.readings_between(T0, covered)
        cat = METRICS[s.metrics[0]].category.value
        expected.update(truth(rs, 60, marks.get(cat, 0)))

    def cat(k: Key) -> str:
        return METRICS[k[0]].category.value

    w_ms = withdrawn_at * 1000
    # windows still open (within the grace) or queued at the withdrawal are dropped with the queue, by design
    slack_ms = int(GRACE_S * 1000) + 15 * 60_000
    allowed = {
        k
        for k in expected
        if (k[2] == "p1" and cat(k) == "health") or (k[2] == HOME and cat(k) == "energy" and k[3] + 60_000 <= w_ms)
    }
    required = {k for k in allowed if cat(k) == "health" or k[3] + 60_000 <= w_ms - slack_ms}
    # nothing for p2, nothing for EV (never consented), nothing for device housekeeping (battery)
    assert {k[2] for k in got} <= {"p1", HOME}
    assert not [k for k in got if cat(k) in ("ev", "device")]
    # nothing released after the withdrawal, nothing that is not a true window
    assert set(got) <= allowed, sorted(set(got) - allowed)[:3]
    missing = required - set(got)
    assert not missing, f"{len(missing)} consented windows missing, e.g. {sorted(missing)[:3]}"
    for key, row in got.items():
        assert row["purpose"] == ("preventive-care" if key[2] == "p1" else "community-energy")
        for field, value in expected[key].items():
            assert row[field] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, field)
    consented = required
    assert len(consented) > 4 * 60 * 3  # hours of minute windows over several series
    assert health.id  # the consent under which the health data travelled

"""Every dashboard panel query, run against a real InfluxDB filled by the real pipeline.

Once per module: a household gateway (wearables, plugs, meter, EV charger) and a garbage-truck gateway run as
real agents on a simulated clock (5 h from 15:00 JST, seed 2: the truck's last shift hour and an evening
charging session) -> a Mosquitto of this module -> the ingester process -> InfluxDB, into a database laid out by
``init_db``. Two malformed messages make the ingester reject something; its JSON stats become
``kyojo_ingest`` points. Then the real community rollup runs (energy, k=1 for a one-household test; and
weekly alert rollups, k=15, over per-household alert counters written here because no alert model exists
yet). Each panel's result is compared with values computed from the raw points or from the simulators.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from typer.testing import CliRunner

import drivers.sim as sim
from cloud_ingest import analyst, initdb
from cloud_ingest.erasure import InfluxV1Admin
from cloud_ingest.rollup import RollupConfig, run_rollup
from drivers.base import METRICS, Category
from drivers.clock import ScaledClock
from drivers.sim.base import local_day
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from edge_agent.identity import load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc, agent_config, run_agent_in_thread

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

T0 = 1_717_912_800.0  # 2024-06-09T06:00Z = 15:00 JST
HOURS = 5.0
SPEED = 1800.0
SEED = 2
HOME, TRUCK = "home-001", "truck-07"  # the seed was chosen for these ids (EV session, truck shift)
S_MS, E_MS = int(T0 * 1000), int((T0 + HOURS * 3600) * 1000) - 1  # windows starting in [15:00, 20:00) JST
HEALTH = {m for m, s in METRICS.items() if s.category is Category.HEALTH}
WEEK_MS = 604_800_000
ALERT_WEEK = 1_716_422_400_000 // WEEK_MS * WEEK_MS  # the rollup's week (epoch-aligned) around 2024-05-23


class RecordingIngester(IngesterProc):
    """IngesterProc that keeps every stats line (the platform panels are built from them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.history: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _follow(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            self.history.append(doc)
            self.last = doc


@dataclass
class Filled:
    influxdb: InfluxDB
    db: str
    client: analyst.InfluxQL
    sims: dict[str, list[sim.Simulator]]
    pseudo: dict[tuple[str, str], str]  # (purpose, real id) -> pseudonym
    stats_span: tuple[int, int] = (0, 0)
    rejected: dict[str, int] = field(default_factory=dict)
    alerts: dict[str, dict[int, float]] = field(default_factory=dict)

    def run(self, name: str, start: int = S_MS, end: int = E_MS, **kw: Any) -> analyst.Result:
        return analyst.run_query(self.client, name, start, end, **kw)

    def raw(self, q: str) -> list[dict[str, Any]]:
        """Raw InfluxQL; ``$range`` stands for the run's time range."""
        return self.influxdb.query_rows(q.replace("$range", f"time >= {S_MS}ms AND time <= {E_MS}ms"), self.db)


def _publish_garbage(port: int) -> None:
    """Two messages the ingester must refuse: not JSON, and a topic/payload gateway mismatch."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dash-garbage", protocol=MQTTProtocolVersion.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [
        c.publish(f"kyojo/v1/{HOME}/agg/energy", b"{not json", qos=1),
        c.publish(f"kyojo/v1/{HOME}/agg/energy", json.dumps({"v": 1, "gateway": "other"}).encode(), qos=1),
    ]
    for info in infos:
        info.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, influxdb: InfluxDB) -> Filled:
    base = tmp_path_factory.mktemp("dash")
    db = "dash_live"
    client = analyst.InfluxQL(influxdb.url, db)
    layout = initdb.Layout(db=db, raw_days=0, rollup_days=0, community_days=0)  # simulated 2024: keep forever
    assert initdb.init_db(client, layout)  # raw (default), rollup_1h, community + CQs
    sims = {HOME: sim.household(HOME, SEED, persons=("p1", "p2")), TRUCK: sim.truck(TRUCK, SEED)}
    grants = {
        HOME: [("preventive-care", "p1"), ("community-energy", HOME), ("ev-energy-sharing", HOME)],
        TRUCK: [("waste-collection", TRUCK)],
    }
    given = datetime.fromtimestamp(T0 - 86_400, tz=UTC)
    pseudo: dict[tuple[str, str], str] = {}
    with Mosquitto(base / "mosquitto") as broker:  # own broker: the bad messages reach no other test's group
        ingester = RecordingIngester(broker.port, influxdb.url, db, client_id="dash-ingest", log=base / "ingest.log")
        clock = ScaledClock(T0, speed=SPEED)
        runs = []
        for gw, group in sims.items():
            cfg = agent_config(base / gw, broker.port, gateway=gw)
            conn = connect(cfg.db_path)
            for purpose, subject in grants[gw]:
                consent.open_store(cfg, conn).grant(purpose, subject, now=given)
            conn.close()
            drvs = [sim.SimDriver(s, clock, tick_s=SPEED * 0.05, start=T0) for s in group]

            def make(cfg: Any = cfg, drvs: list[sim.SimDriver] = drvs) -> Agent:
                agent = Agent(cfg, clock=clock, drivers=drvs)
                # generous grace (22.5 simulated min = 0.75 s real): on a loaded 2-core box a driver tick can come
                # late, and a reading behind the released watermark is kept on the gateway but never sent
                agent.pipeline.min_grace_s = 15 * SPEED * 0.05
                return agent

            runs.append(run_agent_in_thread(make))
        _publish_garbage(broker.port)
        while clock.now() < T0 + HOURS * 3600:
            time.sleep(0.05)
        for _, stop, _ in runs:
            stop()
        sent = sum(holder[0].publisher.stats.aggregates_sent for _, _, holder in runs)
        end = time.monotonic() + 30
        while ingester.last.get("written", 0) < sent and time.monotonic() < end:
            time.sleep(0.05)
        ingester.stop()
        for gw in sims:
            keys = load_keys(base / gw)
            for purpose, _ in grants[gw]:
                for s in sims[gw]:
                    pseudo[(purpose, s.device_id)] = keys.device_pseudonym(purpose, s.device_id)
                    pseudo[(purpose, s.subject)] = keys.pseudonym(purpose, s.subject)
    f = Filled(influxdb, db, client, sims, pseudo)
    # the ingester's stats as kyojo_ingest points (gateways_online: both gateways were connected throughout)
    points = initdb.IngestStatsPoints("dash-ingest")
    lines = []
    for doc in ingester.history:
        lines += points.lines(doc, int(doc["ts"] * 1000), gateways_online=2)
    influxdb.write_lines("\n".join(lines), db)
    f.stats_span = (int(ingester.history[0]["ts"] * 1000), int(ingester.history[-1]["ts"] * 1000))
    f.rejected = dict(ingester.history[-1]["rejected"])
    # community rollups, the real code: energy (k=1 here: one household), weekly alerts (k=15)
    admin = InfluxV1Admin(influxdb.url, db)
    run_rollup(admin, RollupConfig(k=1, max_share=1.0), S_MS, E_MS)
    f.alerts = _alert_rollups(influxdb, db, admin)
    return f


def _alert_rollups(influxdb: InfluxDB, db: str, admin: InfluxV1Admin) -> dict[str, dict[int, float]]:
    """Per-household weekly alert counters -> rollup: hypertension 20 households in week 1 and 6 (suppressed) in
    week 2, fever 16 in week 1; returns the totals that must be released."""
    rng = np.random.default_rng(5)
    lines, expected = [], {}
    for kind, weeks in (("hypertension", (20, 6)), ("fever", (16, 0))):
        for w, households in enumerate(weeks):
            start = ALERT_WEEK + w * WEEK_MS
            total = 0.0
            for h in range(households):
                n = float(rng.integers(1, 4))
                total += n
                t = start + int(rng.integers(0, WEEK_MS // 60_000)) * 60_000
                lines.append(
                    f"alert_{kind},category=health,device=d-{h:04d},purpose=preventive-care,subject=s-{kind[:3]}{h:04d}"
                    f" count=1i,delta={n},last={n},window_s=60i {t}"
                )
            if households >= 15:
                expected.setdefault(kind, {})[start] = total
    influxdb.write_lines("\n".join(lines), db)
    for kind in ("hypertension", "fever"):
        cfg = RollupConfig(metric=f"alert_{kind}", purpose="preventive-care", bucket_s=604_800)
        run_rollup(admin, cfg, ALERT_WEEK, ALERT_WEEK + 2 * WEEK_MS)
    return expected


def by_key(result: analyst.Result, *cols: str) -> dict[tuple[Any, ...], Any]:
    idx = [result.columns.index(c) for c in cols]
    return {(r[0], *(r[i] for i in idx[:-1])): r[idx[-1]] for r in result.rows}


# ------------------------------------------------------------------------------------------------------------


def test_every_panel_query_runs_and_shows_no_health_series(filled: Filled) -> None:
    seen = {}
    for name in analyst.QUERIES:
        start, end = (S_MS, E_MS)
        if name.startswith("platform."):
            start, end = filled.stats_span
        elif name.startswith("care."):
            start, end = ALERT_WEEK, ALERT_WEEK + 2 * WEEK_MS
        interval = "1s" if name.startswith("platform.") else None  # the stats span seconds, not hours
        result = filled.run(name, start, end, interval=interval)
        assert result.rows, f"{name}: no rows"
        seen[name] = result
        for s in analyst.QUERIES[name].statements:
            for series in filled.client.query(analyst.render(s, start, end, interval)):
                assert series["name"] not in HEALTH, (name, series["name"])
    assert set(seen) == set(analyst.QUERIES)


def test_energy_by_hour_is_the_sum_of_the_meter_deltas(filled: Filled) -> None:
    meter = filled.pseudo[("community-energy", f"{HOME}-meter")]
    home = filled.pseudo[("community-energy", HOME)]
    got = by_key(filled.run("energy.by_hour"), "subject", "energy")
    assert {k[1] for k in got} == {home}
    rows = filled.raw(f'SELECT "delta" FROM "energy" WHERE "device" = \'{meter}\' AND $range')  # noqa: S608
    per_hour: dict[int, float] = defaultdict(float)
    for r in rows:
        per_hour[int(r["time"]) // 3_600_000 * 3_600_000] += r["delta"]
    assert got == {(t, home): pytest.approx(v, rel=1e-12) for t, v in per_hour.items()}
    # and the physics: a full hour's energy is the meter counter's increase over it (readings every 10 s)
    m = next(s for s in filled.sims[HOME] if s.device_id == f"{HOME}-meter")
    for h in range(1, 4):
        t = T0 + h * 3600
        truth = float(m.energy_at(np.array([t + 3590.0]))[0] - m.energy_at(np.array([t - 10.0]))[0])  # type: ignore[attr-defined]
        assert got[(int(t * 1000), home)] == pytest.approx(truth, rel=1e-9)


def test_whole_home_vs_appliances(filled: Filled) -> None:
    res = filled.run("energy.whole_vs_appliances", interval="1m")
    meter = filled.pseudo[("community-energy", f"{HOME}-meter")]
    rows = filled.raw('SELECT "mean", "device" FROM "power" WHERE $range')
    whole, plugs = {}, defaultdict(float)
    for r in rows:
        if r["device"] == meter:
            whole[r["time"]] = r["mean"]
        else:
            plugs[r["time"]] += r["mean"]
    w, a, u = (res.columns.index(c) for c in ("whole_home", "appliances", "unmetered"))
    assert len(whole) > 250
    assert {r[0] for r in res.rows if r[w] is not None} == set(whole) | set(plugs)  # null: minutes after the run
    for r in res.rows:
        if r[w] is None:
            continue
        assert r[w] == pytest.approx(whole[r[0]], abs=1e-9)
        assert r[a] == pytest.approx(plugs[r[0]], abs=1e-6)
        assert r[u] == pytest.approx(whole[r[0]] - plugs[r[0]], abs=1e-6)
        assert 150 < r[u] < 320  # the meter's unmetered base load: 225 W +- harmonics


def test_energy_by_device_and_community_rollup(filled: Filled) -> None:
    devices = by_key(filled.run("energy.by_device"), "device", "energy")
    meter = filled.pseudo[("community-energy", f"{HOME}-meter")]
    assert max(devices.items(), key=lambda kv: kv[1])[0][1] == meter
    assert len(devices) == 5  # the meter and four plugs; the device tag is a pseudonym, never the real id
    hourly = by_key(filled.run("energy.by_hour"), "subject", "energy")
    community = filled.run("energy.community")
    total, hh = community.columns.index("total"), community.columns.index("households")
    assert community.rows
    for r in community.rows:
        assert r[hh] == 1
        assert r[total] == pytest.approx(next(v for k, v in hourly.items() if k[0] == r[0]), rel=1e-9)


def test_ev_energy_sessions_availability(filled: Filled) -> None:
    ev = next(s for s in filled.sims[HOME] if s.device_id == f"{HOME}-ev")
    day = int(local_day(np.array([T0]), 9.0)[0])
    session = ev.sessions(np.array([day]))  # type: ignore[attr-defined]
    assert T0 < session.start[0] < session.end[0] < T0 + HOURS * 3600  # the whole session is in range
    energy = by_key(filled.run("ev.energy_by_hour"), "subject", "energy")
    deltas = filled.raw('SELECT sum("delta") FROM "ev_energy" WHERE $range')[0]["sum"]
    assert sum(energy.values()) == pytest.approx(deltas, rel=1e-12)
    assert sum(energy.values()) == pytest.approx(float(session.energy[0]), abs=0.5)
    assert [v for v in energy.values() if v > 0] and min(energy.values()) == 0  # fill(0): idle hours shown
    sessions = filled.run("ev.sessions")
    assert [r[-1] for r in sessions.rows] == [1]
    assert datetime.fromtimestamp(sessions.rows[0][0] / 1000, tz=UTC).hour == 15  # JST midnight
    avail = by_key(filled.run("ev.availability"), "subject", "available")
    rows = filled.raw('SELECT "max" FROM "ev_power" WHERE $range')
    busy: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        busy[int(r["time"]) // 3_600_000 * 3_600_000].append(1 if r["max"] > 0 else 0)
    assert {k[0]: v for k, v in avail.items()} == {
        h: pytest.approx(100 * (1 - sum(b) / len(b))) for h, b in busy.items()
    }
    assert min(avail.values()) < 50 and max(avail.values()) == 100


def test_waste_pickups_positions_progress(filled: Filled) -> None:
    truck = filled.sims[TRUCK][0]
    tl = truck.timeline(int(local_day(np.array([T0]), 9.0)[0]))  # type: ignore[attr-defined]
    arrivals = tl.leg_start + tl.t_move
    shift_end = T0 + 3600  # 16:00 JST
    stops = int(((arrivals > T0) & (arrivals < shift_end)).sum())
    pickups = by_key(filled.run("waste.pickups"), "subject", "pickups")
    assert pickups[(S_MS, filled.pseudo[("waste-collection", TRUCK)])] == stops > 20
    assert sum(pickups.values()) == stops  # nothing after the shift
    pos = filled.run("waste.positions", interval="30s")
    lat, lon = pos.columns.index("latitude"), pos.columns.index("longitude")
    route = np.asarray(sim.DEFAULT_ROUTE)
    assert len(pos.rows) == 120 and all(r[lat] is not None and r[lon] is not None for r in pos.rows)
    for r in pos.rows:  # merged per (time, truck); exactly the truck's simulated position at the window's end
        t = (r[0] + 29_000) / 1000
        la, lo, _, _ = truck.state_at(np.array([t]))  # type: ignore[attr-defined]
        assert (r[lat], r[lon]) == (pytest.approx(la[0], abs=1e-7), pytest.approx(lo[0], abs=1e-7)), r
        assert route[:, 0].min() - 1e-3 < r[lat] < route[:, 0].max() + 1e-3
    prog = filled.run("waste.progress", interval="10m")
    km = [r[prog.columns.index("km")] for r in prog.rows if r[prog.columns.index("km")] is not None]
    assert km == sorted(km) and km[-1] == pytest.approx(
        sum(r["mean"] * r["window_s"] for r in filled.raw('SELECT "mean", "window_s" FROM "speed" WHERE $range')) / 1000
    )
    assert max(r[prog.columns.index("stops")] or 0 for r in prog.rows) == stops


def test_preventive_care_shows_only_released_weekly_rollups(filled: Filled) -> None:
    res = filled.run("care.alerts_by_week", ALERT_WEEK, ALERT_WEEK + 2 * WEEK_MS)
    got = by_key(res, "measurement", "alerts")
    assert got == {
        (t, f"community_alert_{k}"): pytest.approx(v) for k, w in filled.alerts.items() for t, v in w.items()
    }
    assert (ALERT_WEEK + WEEK_MS, "community_alert_hypertension") not in got  # 6 households: suppressed
    hh = by_key(
        filled.run("care.households_by_week", ALERT_WEEK, ALERT_WEEK + 2 * WEEK_MS), "measurement", "households"
    )
    assert hh == {(ALERT_WEEK, "community_alert_hypertension"): 20, (ALERT_WEEK, "community_alert_fever"): 16}


def test_platform_health_from_the_ingesters_stats(filled: Filled) -> None:
    start, end = filled.stats_span
    assert filled.rejected and sum(filled.rejected.values()) == 2
    rejects = filled.run("platform.rejects_by_cause", start, end)
    per_cause: dict[str, int] = defaultdict(int)
    for r in rejects.rows:
        per_cause[r[1]] += r[-1]
    assert dict(per_cause) == filled.rejected
    written = filled.raw('SELECT max("written") FROM "kyojo_ingest"')[0]["max"]
    rate = filled.run("platform.ingest_rate", start, end, interval="1s")
    assert written > 5000 and max(r[-1] for r in rate.rows) > 0
    total = sum(r[-1] for r in rate.rows)  # per-second rates over 1 s buckets add up to the points written
    assert total == pytest.approx(written - filled.raw('SELECT first("written") FROM "kyojo_ingest"')[0]["first"])
    lag = filled.run("platform.lag", start, end)
    assert all(0 <= r[-1] < 60_000 for r in lag.rows)
    online = filled.run("platform.gateways_online", start, end)
    assert {r[-1] for r in online.rows} == {2}


def test_backfilled_hourly_rollups_match_the_raw_points(filled: Filled) -> None:
    written = initdb.backfill(filled.client, S_MS, E_MS, initdb.Layout(db=filled.db, raw_days=0, rollup_days=0))
    assert written["energy"] > 0 and written["community"] > 0
    raw = filled.raw('SELECT sum("delta"), count("delta") FROM "raw"."energy" WHERE $range GROUP BY time(1h), "device"')
    hourly = filled.raw('SELECT "delta", "count", "covered_s" FROM "rollup_1h"."energy" WHERE $range GROUP BY "device"')
    want = {(r["device"], r["time"]): (r["sum"], r["count"] * 60) for r in raw if r["sum"] is not None}
    got = {(r["device"], r["time"]): (r["delta"], r["covered_s"]) for r in hourly}
    assert got == {k: (pytest.approx(v[0], rel=1e-12), v[1]) for k, v in want.items()}
    assert len({k[0] for k in got}) == 5
    hr = filled.raw('SELECT max("max"), min("min") FROM "rollup_1h"."heart_rate"')[0]
    rr = filled.raw('SELECT max("max"), min("min") FROM "raw"."heart_rate"')[0]
    assert (hr["max"], hr["min"]) == (rr["max"], rr["min"])
    assert filled.raw('SELECT count("total") FROM "community"."community_energy"')[0]["count"] > 0


def test_query_cli_formats_and_plot(filled: Filled, tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    analyst.register(app)

    @app.callback()
    def _root() -> None:
        """Keep ``query`` a named subcommand."""

    runner = CliRunner()
    common = ["--since", "2024-06-09T06:00:00Z", "--until", "2024-06-09T11:00:00Z"]
    env = {"KYOJO_INFLUX_URL": filled.influxdb.url, "KYOJO_INFLUX_DB": filled.db}
    out = runner.invoke(app, ["query", "ev.energy_by_hour", *common, "--format", "json"], env=env)
    assert out.exit_code == 0, out.output
    docs = json.loads(out.stdout)
    assert docs[0]["time"] == "2024-06-09T06:00:00Z" and sum(d["energy"] for d in docs) > 1000
    out = runner.invoke(app, ["query", "energy.by_hour", *common, "--format", "csv"], env=env)
    assert out.exit_code == 0 and out.stdout.splitlines()[0] == "time,subject,energy"
    png = tmp_path / "energy.png"
    out = runner.invoke(app, ["query", "energy.by_hour", *common, "--plot", str(png)], env=env)
    assert out.exit_code == 0, out.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert struct.unpack(">II", data[16:24]) == (1000, 450)  # IHDR: 10 x 4.5 in at 100 dpi
    out = runner.invoke(app, ["query", "nope", *common], env=env)
    assert out.exit_code == 2
    out = runner.invoke(app, ["query", "list"], env=env)
    assert "waste.pickups" in out.stdout


def test_render_readme_png(filled: Filled, tmp_path: Path) -> None:
    """The README's picture; written to docs/img/ only with KYOJO_RENDER_DOCS=1 (tests leave the tree alone)."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "img"
    path = (docs if os.environ.get("KYOJO_RENDER_DOCS") == "1" else tmp_path) / "energy-whole-vs-appliances.png"
    result = filled.run("energy.whole_vs_appliances", interval="5m")
    analyst.plot(result, path, title="Whole home vs appliances (simulated household, 15:00-20:00 JST)")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

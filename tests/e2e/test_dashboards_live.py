"""Every dashboard panel query, run against a real InfluxDB filled by the real pipeline.

Once per module: a household gateway (wearables, plugs, meter, EV charger) and a garbage-truck gateway (with the
real ``truck`` processor and the simulator's collection points: pickup events under the operator's
waste-collection consent) run as real agents on a simulated clock (5 h from 15:00 JST, seed 2: the truck's last
shift hour and an evening charging session) -> a Mosquitto of this module -> the ingester process -> InfluxDB,
into a database laid out by ``init_db``. Two malformed messages make the ingester reject something; its JSON
stats become ``kyojo_ingest`` points. Health alerts: 20 pseudonymous households' gateway pipelines (the real
health processor on blood-pressure and thermometer readings, the consent gate, the outbox's EventBatches) in two
May weeks, written exactly as the ingester writes events (``event_lines``). Then the real community rollups run
(energy, k=1 for a one-household test; and ``kyojo ingest rollup --events 'alert.*'``, weekly, k=15). Each
panel's result is compared with values computed from the raw points or events, and from the simulators.
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
from cloud_ingest.lineproto import event_lines
from cloud_ingest.rollup import RollupConfig, run_rollup
from drivers.clock import ScaledClock
from drivers.gnss.truck import load_collection_points
from drivers.sim.base import local_day
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from edge_agent.processors.health import Config as HealthConfig
from edge_agent.processors.health import HealthProcessor
from edge_agent.processors.truck import Config as TruckConfig
from edge_agent.processors.truck import TruckProcessor
from kyojo.cli import app as kyojo_app
from kyojo.contract.vocab import METRICS, Category, Reading, reading
from kyojo.contract.wire import EventBatch, EventItem, decode_events
from kyojo.keys import load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc, agent_config, run_agent_in_thread
from tests.kit import ROOT

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
POINTS = Path(sim.__file__).parent / "data" / "collection_points.geojson"


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
    rollup_out: list[dict[str, Any]] = field(default_factory=list)
    safety_span: tuple[int, int] = (0, 0)
    truck_covered: float = 0.0
    events_sent: int = 0

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
        # --no-self-stats: the kyojo_ingest points are written below from the very stats lines it prints (with
        # gateways_online, which the ingester cannot report yet); its own copies would land a millisecond apart
        ingester = RecordingIngester(
            broker.port, influxdb.url, db, client_id="dash-ingest", log=base / "ingest.log", extra=["--no-self-stats"]
        )
        clock = ScaledClock(T0, speed=SPEED)
        points = load_collection_points(POINTS)
        drivers: dict[str, list[sim.SimDriver]] = {}
        runs = []
        for gw, group in sims.items():
            cfg = agent_config(base / gw, broker.port, gateway=gw)
            conn = connect(cfg.db_path)
            for purpose, subject in grants[gw]:
                consent.open_store(cfg, conn).grant(purpose, subject, now=given)
            conn.close()
            drvs = [sim.SimDriver(s, clock, tick_s=SPEED * 0.05, start=T0) for s in group]
            drivers[gw] = drvs

            def make(cfg: Any = cfg, drvs: list[sim.SimDriver] = drvs, gw: str = gw) -> Agent:
                agent = Agent(cfg, clock=clock, drivers=drvs)
                if gw == TRUCK:  # the truck's gateway detects pickups at the collection points
                    agent.processors = [TruckProcessor(TruckConfig(kind="truck", collection_points=POINTS), points)]
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
        events_sent = sum(holder[0].publisher.stats.events_sent for _, _, holder in runs)
        sent = sum(holder[0].publisher.stats.aggregates_sent for _, _, holder in runs) + events_sent
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
    f = Filled(influxdb, db, client, sims, pseudo, events_sent=events_sent)
    f.truck_covered = drivers[TRUCK][0].covered_until or 0.0
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
    f.alerts = _alert_events(influxdb, db, base / "care")
    until = datetime.fromtimestamp((ALERT_WEEK + 2 * WEEK_MS) / 1000, tz=UTC).isoformat()
    args = ["ingest", "rollup", "--influx-url", influxdb.url, "--influx-db", db, "--events", "alert.*"]
    args += ["--bucket", "604800", "--hours", "336", "--until", until]  # the two weeks, k=15, max share 15 %
    out = CliRunner().invoke(kyojo_app, args)
    assert out.exit_code == 0, out.output
    f.rollup_out = [json.loads(line) for line in out.output.splitlines()]
    # a declared disaster: three homes answered; the city's k-anonymous count for the safety panels (k=2 here)
    for i in range(3):
        item = EventItem(id=f"ss-{i}", kind="safety.status", subject=f"s-{i}", device="m", at=S_MS + i,
                         attrs={"declaration": "d1-aizu-1", "area": "aizu-1", "safe": i > 0})  # fmt: skip
        batch = EventBatch(gateway=f"gw-{i}", seq=1, sent=S_MS, consent="c", purpose="disaster-safety",
                           category=Category.WELLBEING, events=[item])  # fmt: skip
        influxdb.write_lines("\n".join(event_lines(batch)), db)
    before = int(time.time() * 1000) - 1000
    args = ["ingest", "safety", "--declaration", "d1-aizu-1", "--influx-url", influxdb.url, "--influx-db", db]
    out = CliRunner().invoke(kyojo_app, [*args, "--k", "2", "--write"])
    assert out.exit_code == 0, out.output
    f.safety_span = (before, int(time.time() * 1000) + 1000)
    return f


DAY = 86_400.0


def _household_readings(h: int) -> list[Reading]:
    """Household h's cuff and thermometer readings over the two weeks (W1 = ALERT_WEEK, W2 = the next):

    - bp_crisis: every household once in W1 (h < 5 twice, 2 days apart; 5 <= h < 10 relapse within the 6 h
      cooldown, which reopens the same alert), h < 6 once in W2 (6 households: below k);
    - fever: h < 16 once in W1 (16 households); h >= 5 in W2 (15 households), h = 5 four times (4 of 18 episodes:
      above the 15 % dominance share).
    """
    w1, w2 = ALERT_WEEK / 1000, (ALERT_WEEK + WEEK_MS) / 1000

    def bp(t: float, sys_: float, dia: float) -> list[Reading]:
        return [reading("cuff", "p1", "systolic", sys_, t), reading("cuff", "p1", "diastolic", dia, t)]

    def fever(t: float) -> list[Reading]:
        return [reading("thermo", "p1", "body_temperature", v, t + i * 3600) for i, v in enumerate((38.2, 36.6, 36.5))]

    t = w1 + DAY + h * 600
    out = bp(t, 192, 124) + bp(t + 3600, 118, 76)
    if h < 5:
        out += bp(w1 + 3 * DAY + h * 600, 188, 110) + bp(w1 + 3 * DAY + h * 600 + 3600, 120, 78)
    if 5 <= h < 10:
        out += bp(t + 7200, 190, 100) + bp(t + 3 * 3600, 117, 75)
    if h < 6:
        out += bp(w2 + DAY + h * 600, 195, 125) + bp(w2 + DAY + h * 600 + 3600, 119, 77)
    if h < 16:
        out += fever(w1 + 2 * DAY + h * 600)
    if h >= 5:
        for e in range(4 if h == 5 else 1):
            out += fever(w2 + DAY / 2 + e * 1.5 * DAY + h * 600)
    return out


def _alert_events(influxdb: InfluxDB, db: str, base: Path) -> dict[str, dict[int, float]]:
    """20 households' gateways: health processor -> consent gate -> outbox EventBatches -> the ingester's event
    points. Returns the weekly totals (distinct alerts) the rollup must release."""
    lines = []
    for h in range(20):
        cfg = AgentConfig.model_validate({"gateway": {"id": f"home-c{h:02d}", "data_dir": str(base / f"h{h:02d}")}})
        p = Pipeline(connect(cfg.db_path), cfg)
        p.consents.grant("preventive-care", "p1", now=datetime.fromtimestamp(ALERT_WEEK / 1000 - DAY, tz=UTC))
        p.store_events(HealthProcessor(HealthConfig(kind="health", af=False)).feed(_household_readings(h)))
        p.release_events((ALERT_WEEK + 2 * WEEK_MS) / 1000)
        rows = p.conn.execute("SELECT topic, payload FROM outbox WHERE topic LIKE '%/event/%'").fetchall()
        p.conn.close()
        for topic, payload in rows:
            lines += event_lines(decode_events(topic, bytes(payload)))
    influxdb.write_lines("\n".join(lines), db)
    return {"bp_crisis": {ALERT_WEEK: 20 + 5}, "fever": {ALERT_WEEK: 16}}


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
        elif name.startswith("safety."):  # the city's counts are stamped when they were counted
            start, end = filled.safety_span
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


def _truck_truth(filled: Filled) -> list[tuple[str, float, float]]:
    """The stops the simulated truck completed in the run: (collection point, arrival, departure), in order
    (as tests/e2e/test_e2e_pickups.py: a dwell of at least 20 s; a stop under way at the start counts from then; the
    truck reports positions only in its shift, so a stop must end before 16:00 JST to be seen ending)."""
    truck = filled.sims[TRUCK][0]
    seen_until = min(filled.truck_covered, T0 + 3600)
    tl = truck.timeline(int(local_day(np.array([T0]), 9.0)[0]))  # type: ignore[attr-defined]
    n = len(sim.DEFAULT_ROUTE)
    out = []
    for i in range(len(tl.leg_start) - 1):
        arrive, depart = float(tl.leg_start[i] + tl.t_move[i]), float(tl.leg_start[i + 1])
        if depart - max(arrive, T0) >= 20 and depart + 2 < seen_until and depart > T0:
            out.append((f"cp-{(int(tl.leg[i]) + 1) % n + 1:02d}", max(arrive, T0 + 1), depart))
    return out


def test_waste_pickups_from_the_truck_processors_events(filled: Filled) -> None:
    rows = filled.raw('SELECT * FROM "events" WHERE "kind" = \'pickup\' AND $range')
    truck = filled.pseudo[("waste-collection", TRUCK)]
    assert len(rows) == filled.events_sent > 20  # every pickup the gateway released is in InfluxDB
    assert {(r["subject"], r["purpose"], r["route"]) for r in rows} == {(truck, "waste-collection", "chiyoda-1")}
    # ... and they are the simulated truck's stops at the collection points
    truth = _truck_truth(filled)
    got = sorted((r["arrived_ms"] / 1000, r["point"], r["time"] / 1000) for r in rows)
    assert [p for _, p, _ in got] == [p for p, _, _ in truth]
    for (ga, gp, gd), (tp, ta, td) in zip(got, truth, strict=True):
        assert (gp, ga, gd) == (tp, pytest.approx(ta, abs=3.0), pytest.approx(td, abs=3.0))
    # pickups per truck and hour = the events counted by their time (the departure), and the simulator's
    pickups = by_key(filled.run("waste.pickups"), "subject", "pickups")
    per_hour: dict[tuple[int, str], int] = defaultdict(int)
    for r in rows:
        per_hour[(int(r["time"]) // 3_600_000 * 3_600_000, truck)] += 1
    assert {k: v for k, v in pickups.items() if v} == per_hour
    assert set(pickups) == {(S_MS + h * 3_600_000, truck) for h in range(5)}  # fill(0): every hour shown
    shift = int((T0 + 3600) * 1000)
    assert pickups[(S_MS, truck)] == sum(1 for _, _, d in truth if d * 1000 < shift) > 20
    # route progress = the last pickup event's attributes
    prog = filled.run("waste.progress")
    last = max(rows, key=lambda r: r["time"])
    want = {"route": "chiyoda-1", "served": last["served"], "points": 20, "progress": last["progress"]}
    want["last_point"] = last["point"]
    assert [dict(zip(prog.columns[1:], r[1:], strict=True)) for r in prog.rows] == [{"subject": truck, **want}]
    assert last["served"] == len({p for p, _, _ in truth}) and last["progress"] == round(last["served"] / 20, 4)


def test_waste_positions(filled: Filled) -> None:
    truck = filled.sims[TRUCK][0]
    pos = filled.run("waste.positions", interval="30s")
    lat, lon = pos.columns.index("latitude"), pos.columns.index("longitude")
    route = np.asarray(sim.DEFAULT_ROUTE)
    assert len(pos.rows) == 120 and all(r[lat] is not None and r[lon] is not None for r in pos.rows)
    for r in pos.rows:  # merged per (time, truck); exactly the truck's simulated position at the window's end
        t = (r[0] + 29_000) / 1000
        la, lo, _, _ = truck.state_at(np.array([t]))  # type: ignore[attr-defined]
        assert (r[lat], r[lon]) == (pytest.approx(la[0], abs=1e-7), pytest.approx(lo[0], abs=1e-7)), r
        assert route[:, 0].min() - 1e-3 < r[lat] < route[:, 0].max() + 1e-3


def _weekly_open_alerts(filled: Filled) -> dict[tuple[str, int], dict[str, int]]:
    """From the event points: (kind, week) -> household -> distinct alerts opened that week."""
    rows = filled.raw(
        'SELECT "alert_id", "started_ms", "subject", "kind" FROM "events" '
        "WHERE \"purpose\" = 'preventive-care' AND \"state\" = 'open'"
    )
    seen = {(r["kind"].removeprefix("alert."), r["subject"], r["alert_id"]): int(r["started_ms"]) for r in rows}
    out: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (kind, subject, _), started in seen.items():
        out[(kind, started // WEEK_MS * WEEK_MS)][subject] += 1
    return out


def test_preventive_care_shows_only_released_weekly_rollups(filled: Filled) -> None:
    weeks = (ALERT_WEEK, ALERT_WEEK + 2 * WEEK_MS)
    got = by_key(filled.run("care.alerts_by_week", *weeks), "measurement", "alerts")
    assert got == {
        (t, f"community_alert_{k}"): pytest.approx(v) for k, w in filled.alerts.items() for t, v in w.items()
    }
    hh = by_key(filled.run("care.households_by_week", *weeks), "measurement", "households")
    assert hh == {(ALERT_WEEK, "community_alert_bp_crisis"): 20, (ALERT_WEEK, "community_alert_fever"): 16}
    # the same numbers straight from the alert events the gateways released (20 pseudonymous households)
    counts = _weekly_open_alerts(filled)
    assert len({s for per in counts.values() for s in per}) == 20
    for (kind, week), per in counts.items():
        key = (week, f"community_alert_{kind}")
        if len(per) >= 15 and max(per.values()) / sum(per.values()) <= 0.15:
            assert (got[key], hh[key]) == (sum(per.values()), len(per))
        else:
            assert key not in got and key not in hh
    # the weeks left out, and why: 6 households with a crisis in week 2 (< k), one household's 4 of 18 fevers
    assert len(counts[("bp_crisis", ALERT_WEEK + WEEK_MS)]) == 6
    assert sorted(counts[("fever", ALERT_WEEK + WEEK_MS)].values())[-1:] == [4]
    reasons = {(d["measurement"], d["start_ms"]): d["suppressed"] for d in filled.rollup_out[:-1]}
    assert reasons == {
        ("community_alert_bp_crisis", ALERT_WEEK): None,
        ("community_alert_bp_crisis", ALERT_WEEK + WEEK_MS): "k_threshold",
        ("community_alert_fever", ALERT_WEEK): None,
        ("community_alert_fever", ALERT_WEEK + WEEK_MS): "dominance",
    }
    assert filled.rollup_out[-1]["measurements"] == ["community_alert_bp_crisis", "community_alert_fever"]
    keys = filled.raw("SHOW TAG KEYS FROM /^community_alert_/")
    assert {r["tagKey"] for r in keys} == {"bucket", "purpose"}  # no subject, no device in a release


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
    total = sum(r[-1] for r in rate.rows)  # per-second rates over 1 s buckets add up to the points written ...
    per_s = filled.raw(
        f'SELECT max("written") FROM "kyojo_ingest" WHERE time >= {start}ms AND time <= {end}ms GROUP BY time(1s)'  # noqa: S608
    )
    first = next(r["max"] for r in per_s if r["max"] is not None)  # ... after the first bucket (no derivative)
    assert total == pytest.approx(written - first)
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
    out = runner.invoke(app, ["query", "waste.progress", *common, "--format", "csv", "--plot", str(png)], env=env)
    assert out.exit_code == 0, out.output  # a table with a text column (the route) still plots its numbers
    assert out.stdout.splitlines()[0] == "time,subject,route,served,points,progress,last_point"
    out = runner.invoke(app, ["query", "nope", *common], env=env)
    assert out.exit_code == 2
    out = runner.invoke(app, ["query", "list"], env=env)
    assert "waste.pickups" in out.stdout


def test_render_readme_png(filled: Filled, tmp_path: Path) -> None:
    """The README's picture; written to docs/img/ only with KYOJO_RENDER_DOCS=1 (tests leave the tree alone)."""
    docs = ROOT / "docs" / "img"
    path = (docs if os.environ.get("KYOJO_RENDER_DOCS") == "1" else tmp_path) / "energy-whole-vs-appliances.png"
    result = filled.run("energy.whole_vs_appliances", interval="5m")
    analyst.plot(result, path, title="Whole home vs appliances (simulated household, 15:00-20:00 JST)")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _query_cli() -> Any:
    import typer

    app = typer.Typer()
    analyst.register(app)

    @app.callback()
    def _root() -> None:
        """Keep ``query`` a named subcommand."""

    return app


def test_plot_spans_the_data_not_the_asked_window_in_jst(filled: Filled, tmp_path: Path) -> None:
    """Issue 22 item 15: ``--since 2024-06-01`` (to now, 2026) drew an empty chart reaching years past the data."""
    from cloud_ingest.analysis.plot import figure

    result = analyst.run_query(
        analyst.InfluxQL(filled.influxdb.url, filled.db),
        "energy.by_hour",
        int(datetime(2024, 6, 1, tzinfo=UTC).timestamp() * 1000),
        int(time.time() * 1000),
    )
    data = [int(r[0]) for r in result.rows if r[-1] is not None]
    assert data
    ax = figure(result).axes[0]
    lo, hi = ax.get_xlim()  # matplotlib days since 1970
    assert lo <= min(data) / 86_400_000 and hi >= max(data) / 86_400_000
    assert hi - lo < (max(data) - min(data)) / 86_400_000 + 1  # the data's span plus a bucket, not 2.5 years
    assert ax.get_xlabel() == "time (JST)"  # grouped with tz('Asia/Tokyo'), drawn in JST
    hours = {t.get_text() for t in ax.get_xticklabels()}
    assert hours  # ticks exist; their zone is the axis's


def test_empty_window_says_so_and_draws_nothing(filled: Filled, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"KYOJO_INFLUX_URL": filled.influxdb.url, "KYOJO_INFLUX_DB": filled.db}
    png = tmp_path / "empty.png"
    window = ["--since", "2020-01-01T00:00:00Z", "--until", "2020-01-02T00:00:00Z"]
    out = runner.invoke(_query_cli(), ["query", "energy.by_hour", *window, "--plot", str(png)], env=env)
    assert out.exit_code == 1
    assert "no data in this window" in out.stderr and not png.exists()
    out = runner.invoke(_query_cli(), ["query", "energy.by_hour", *window, "--format", "json"], env=env)
    assert out.exit_code == 0 and json.loads(out.stdout) == []  # still a document for a script


def test_default_window_moves_to_the_newest_data(filled: Filled, tmp_path: Path) -> None:
    """No --since: the last 24 h (wall time) hold nothing here (the data is from 2024), so the default window is the
    24 h up to the newest point, and the command says so."""
    runner = CliRunner()
    env = {"KYOJO_INFLUX_URL": filled.influxdb.url, "KYOJO_INFLUX_DB": filled.db}
    out = runner.invoke(_query_cli(), ["query", "energy.by_hour", "--format", "json"], env=env)
    assert out.exit_code == 0, out.output
    assert "showing the 24h up to the newest point" in out.stderr
    docs = json.loads(out.stdout)
    assert docs and all(d["time"].startswith("2024-") for d in docs)


def test_sparse_series_get_markers(filled: Filled) -> None:
    from cloud_ingest.analysis.plot import figure

    result = filled.run("energy.whole_vs_appliances", interval="5m")
    few = analyst.Result(result.name, result.columns, result.rows[:5], result.tags, result.fields)
    assert all(line.get_marker() == "o" for line in figure(few).axes[0].get_lines())
    full = figure(result).axes[0].get_lines()
    assert any(line.get_marker() in (None, "None") for line in full)


def test_sanity_panels_and_alert_queries_run_on_the_data(filled: Filled) -> None:
    """The data-sanity panels see the household's minutes and steps; every alert rule's query runs on InfluxDB."""
    from cloud_ingest.analysis.grafana import ALERT_RULES, _alert_query
    from cloud_ingest.analysis.run import render

    minutes = filled.run("sanity.reporting_minutes")
    values = [r[-1] for r in minutes.rows]
    assert values and max(values) <= 60 and max(values) >= 50  # hours the simulated household reported through
    peaks = filled.run("sanity.peak_power")
    kw = [r[-1] for r in peaks.rows if r[-1] is not None]
    assert kw and 0 < max(kw) < 100  # below the meter's ceiling: implausible steps never reach InfluxDB
    for rule in ALERT_RULES:
        q = analyst.QUERIES[rule.query]
        statement = render(_alert_query(q, q.statements[0]), S_MS, E_MS, "5m")
        filled.client.query(statement)  # raises QueryError if InfluxDB refuses it

"""Garbage truck end to end: simulated round -> truck processor (stops at collection points) -> pickup events
under the operator's waste-collection consent -> Mosquitto -> ingester -> InfluxDB, checked against the
simulator's own timeline of arrivals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import drivers.sim as sim
from drivers.clock import ScaledClock
from drivers.gnss.truck import load_collection_points
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from edge_agent.processors.truck import Config as TruckConfig
from edge_agent.processors.truck import TruckProcessor
from kyojo.keys import load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc, agent_config, run_agent_in_thread
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

TRUCK = "truck-e2e"
T0 = 1_717_196_400.0 + 1800  # 2024-06-01 08:30 JST: on the round
RUN_S = 2 * 3600
POINTS = Path(sim.__file__).parent / "data" / "collection_points.geojson"


def test_pickups_reach_influxdb(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str) -> None:
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=TRUCK)
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).grant("waste-collection", TRUCK, now=datetime.fromtimestamp(T0, tz=UTC))
    conn.close()
    ingester = IngesterProc(mosquitto.port, influxdb.url, influx_db, client_id="pickup-ingest")
    clock = ScaledClock(T0, speed=1800)
    (truck,) = sim.truck(TRUCK, 9)
    driver = sim.SimDriver(truck, clock, tick_s=60, start=T0)
    proc = TruckProcessor(TruckConfig(kind="truck", collection_points=POINTS), load_collection_points(POINTS))

    def make() -> Agent:
        agent = Agent(cfg, clock=clock, drivers=[driver])
        agent.processors = [proc]
        return agent

    _, stop, holder = run_agent_in_thread(make)
    wait_for(lambda: clock.now() > T0 + RUN_S)
    stop()
    agent: Agent = holder[0]
    sent = agent.publisher.stats.events_sent
    wait_for(lambda: ingester.last.get("written", 0) >= sent + agent.publisher.stats.aggregates_sent)
    final = ingester.stop()
    assert final.get("rejected", {}) == {}

    rows = influxdb.query_rows('SELECT * FROM "events" WHERE "kind" = \'pickup\'', influx_db)
    assert len(rows) == sent > 10
    keys = load_keys(cfg.gateway.data_dir)
    assert {r["subject"] for r in rows} == {keys.pseudonym("waste-collection", TRUCK)}
    assert {r["purpose"] for r in rows} == {"waste-collection"}

    # truth: every stop the simulated truck completed inside the run, at its route's next waypoint
    covered = driver.covered_until or 0
    day_start = (T0 + 9 * 3600) // 86_400
    tl = truck.timeline(int(day_start))
    n = len(sim.DEFAULT_ROUTE)
    truth = []
    for i in range(len(tl.leg_start) - 1):
        arrive = tl.leg_start[i] + tl.t_move[i]
        depart = tl.leg_start[i + 1]
        # leg i ends at waypoint leg[i] + 1; a stop already under way when the run starts counts from the first fix
        if depart - max(arrive, T0) >= 20 and depart + 2 < covered:
            truth.append((f"cp-{(int(tl.leg[i]) + 1) % n + 1:02d}", max(float(arrive), T0 + 1)))
    got = sorted((r["point"], r["arrived_ms"] / 1000) for r in rows)
    assert [p for p, _ in sorted(truth, key=lambda x: x[1])] == [p for p, _ in sorted(got, key=lambda x: x[1])]
    for (tp, ta), (gp, ga) in zip(sorted(truth, key=lambda x: x[1]), sorted(got, key=lambda x: x[1]), strict=True):
        assert tp == gp
        assert abs(ta - ga) <= 3.0  # the stop starts when the speed falls below 0.5 m/s
    progress = [r["progress"] for r in sorted(rows, key=lambda r: r["time"])]
    assert progress == sorted(progress)
    assert json.dumps(rows)  # plain JSON values all the way

"""EV charging end to end: the ``ocpp`` library's ChargePoint as a real charger -> the gateway's central system
(``kind = "ocpp"`` in a running agent) -> windows under the household's EV-energy-sharing consent -> Mosquitto ->
ingester -> InfluxDB; and the same session in ``kyojo ocpp sessions``."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import websockets
from ocpp.v16 import ChargePoint, call
from typer.testing import CliRunner
from websockets.typing import Subprotocol

from drivers.clock import SystemClock
from drivers.ocpp.cli import app as ocpp_cli
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.db import connect
from kyojo.keys import load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc, run_agent_in_thread
from tests.kit import free_port, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

HOME = "home-ev"
KEY = "cp-e2e-authorization-key"  # OCPP security profile 1: the charger's AuthorizationKey
T0 = (time.time() - 3 * 3600) // 60 * 60  # a session three hours ago, on minute boundaries


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def charge(port: int) -> None:
    """Ten minutes at 7.2 kW: a register from 10,000 Wh rising 120 Wh a minute, SoC from 40 %."""
    url = f"ws://127.0.0.1:{port}/ocpp/CP-E2E"
    auth = {"Authorization": "Basic " + base64.b64encode(f"CP-E2E:{KEY}".encode()).decode()}
    async with websockets.connect(url, subprotocols=[Subprotocol("ocpp1.6")], additional_headers=auth) as ws:
        cp = ChargePoint("CP-E2E", ws, response_timeout=5)
        task = asyncio.create_task(cp.start())
        await cp.call(call.BootNotification(charge_point_model="Eve Mini", charge_point_vendor="Alfen BV"))
        start = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=10_000, timestamp=iso(T0))
        )
        tx = int(start.transaction_id)
        for m in range(1, 11):
            samples = [
                {"value": str(10_000 + 120 * m), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": str(40 + m), "measurand": "SoC", "unit": "Percent", "location": "EV"},
            ]
            await cp.call(
                call.MeterValues(
                    connector_id=1,
                    transaction_id=tx,
                    meter_value=[{"timestamp": iso(T0 + 60 * m - 1), "sampled_value": samples}],
                )
            )
        await cp.call(call.StopTransaction(meter_stop=11_200, timestamp=iso(T0 + 600), transaction_id=tx))
        task.cancel()


def test_charging_session_reaches_influxdb_and_the_sessions_list(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    port = free_port()
    db = tmp_path / "sessions.db"
    cfg = AgentConfig.model_validate(
        {
            "gateway": {"id": HOME, "data_dir": str(tmp_path / "gw")},
            "mqtt": {"port": mosquitto.port, "reconnect_min": 0.1, "reconnect_max": 0.5},
            "store": {"commit_interval": 0.1},
            "devices": [
                {
                    "kind": "ocpp",
                    "id": "home-ev-ocpp",
                    "subject": HOME,
                    "listen_host": "127.0.0.1",
                    "listen_port": port,
                    "charge_points": ["CP-E2E"],
                    "credentials": {"CP-E2E": KEY},
                    "db": str(db),
                }
            ],
        }
    )
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).grant("ev-energy-sharing", HOME, now=datetime.fromtimestamp(T0 - 60, tz=UTC))
    conn.close()
    ingester = IngesterProc(mosquitto.port, influxdb.url, influx_db, client_id="ev-ingest")
    _, stop, holder = run_agent_in_thread(lambda: Agent(cfg, clock=SystemClock()))
    agent: Agent = holder[0]
    wait_for(lambda: any(d.health().get("listening") for d in agent.drivers))
    asyncio.run(asyncio.wait_for(charge(port), 30))
    wait_for(
        lambda: (
            agent.pipeline.stats.aggregates_queued > 0
            and agent.publisher.stats.inflight == 0
            and agent.publisher.stats.aggregates_sent == agent.pipeline.stats.aggregates_queued
        )
    )
    stop()
    wait_for(lambda: ingester.last.get("written", 0) >= agent.publisher.stats.aggregates_sent)
    assert ingester.stop().get("rejected", {}) == {}

    rows = influxdb.query_rows('SELECT * FROM "ev_energy" GROUP BY *', influx_db)
    keys = load_keys(cfg.gateway.data_dir)
    assert {r["subject"] for r in rows} == {keys.pseudonym("ev-energy-sharing", HOME)}
    # the first window only sets the baseline; every later minute moved 120 Wh
    assert sum(r["delta"] for r in rows) == pytest.approx(120 * 9)
    power = influxdb.query_rows('SELECT "mean" FROM "ev_power"', influx_db)
    assert {r["mean"] for r in power} == {7200.0}
    soc = influxdb.query_rows('SELECT "last" FROM "soc"', influx_db)
    assert max(r["last"] for r in soc) == 50.0

    out = CliRunner().invoke(ocpp_cli, ["sessions", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    (session,) = json.loads(out.output)
    assert session["energy_wh"] == 1200
    assert session["max_power_w"] == 7200
    assert session["connector"] == 1

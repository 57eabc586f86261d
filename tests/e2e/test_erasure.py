"""Withdrawal that erases, end to end with real processes: gateway -> broker -> ingester -> InfluxDB, then the
household withdraws; the gateway stops and purges its queue, the cloud erases that subject's data for that
purpose, verifies nothing is left, and the gateway receives and keeps the receipt."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import drivers.sim as sim
from cloud_ingest.config import IngestSettings
from cloud_ingest.erasure import Eraser
from drivers.clock import ScaledClock
from edge_agent import audit, consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from kyojo.keys import load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc, agent_config, run_agent_in_thread
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

HOME = "home-erase"
T0 = 1_717_189_200.0


def test_withdrawal_erases_in_influxdb_with_a_receipt(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=HOME)
    conn = connect(cfg.db_path)
    store = consent.open_store(cfg, conn)
    given = datetime.fromtimestamp(T0, tz=UTC)
    p1 = store.grant("preventive-care", "p1", now=given)
    store.grant("preventive-care", "p2", now=given)
    conn.close()
    keys = load_keys(cfg.gateway.data_dir)
    ps1, ps2 = keys.pseudonym("preventive-care", "p1"), keys.pseudonym("preventive-care", "p2")

    ingester = IngesterProc(mosquitto.port, influxdb.url, influx_db, client_id="erase-ingest")
    cloud = IngestSettings(broker_port=mosquitto.port, influx_url=influxdb.url, influx_db=influx_db)
    eraser = Eraser(cloud, client_id="erase-eraser", grace_s=1.0)
    eraser.start()
    clock = ScaledClock(T0, speed=1200)
    sims = [s for s in sim.household(HOME, 5, persons=("p1", "p2")) if s.subject in ("p1", "p2")]
    drivers = [sim.SimDriver(s, clock, tick_s=60, start=T0) for s in sims]

    _, stop, holder = run_agent_in_thread(lambda: Agent(cfg, clock=clock, drivers=drivers))
    agent: Agent = holder[0]

    def points(subject: str) -> int:
        q = f'SELECT count("last") FROM /.*/ WHERE "subject" = \'{subject}\''  # noqa: S608 - test literal
        return sum(int(r.get("count", 0) or 0) for r in influxdb.query_rows(q, influx_db))

    wait_for(lambda: points(ps1) > 100 and points(ps2) > 100)
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).withdraw(p1.id, now=datetime.fromtimestamp(clock.now(), tz=UTC))
    conn.close()
    # the gateway keeps running; the cloud erases and confirms
    wait_for(lambda: agent.publisher.stats.receipts >= 1, timeout=60)
    stop()
    final = ingester.stop()
    eraser.stop()

    assert points(ps1) == 0  # after withdrawal and erasure a query for that subject returns nothing
    assert points(ps2) > 100  # the other person's data is untouched
    receipt = eraser.erased[(HOME, p1.id)]
    assert receipt.points_erased > 100
    assert receipt.remaining == 0
    assert receipt.subject == ps1
    conn = connect(cfg.db_path)
    evs = [e["event"] for e in consent.events(conn, p1.id)]
    kinds = [e.kind for e in audit.entries(conn)]
    assert audit.verify(conn).ok
    conn.close()
    assert evs == ["given", "withdrawn", "erased"]
    assert kinds.count("erasure_receipt") == 1
    # anything still in flight at the withdrawal was refused by the ingester, not written after the erasure
    assert set(final.get("rejected", {})) <= {"consent_withdrawn"}
    # a restarted eraser does not erase twice: it re-announces the logged erasure
    again = Eraser(cloud, client_id="erase-eraser-2")
    again.start()
    wait_for(lambda: (HOME, p1.id) in again.erased)
    again.stop()
    assert again.erased[(HOME, p1.id)].points_erased == receipt.points_erased

"""Power cut on the gateway: kill -9 the agent process mid-run, restart it, and check InfluxDB against the
gateway's own raw store: every closed window of every consented series arrives exactly once, nothing else."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent import consent
from edge_agent.config import load_config
from edge_agent.db import connect
from kyojo.contract.vocab import METRICS, Reading
from kyojo.keys import load_keys
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc
from tests.e2e.test_e2e import influx_points, truth
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

GW = "home-crash"
T0 = 1_717_189_200.0


def write_config(path: Path, port: int, start: float, only: list[str] | None = None) -> None:
    only_line = "" if only is None else f"only = {json.dumps(only)}\n"
    path.write_text(
        f"""[gateway]
id = "{GW}"
data_dir = "data"
[mqtt]
port = {port}
reconnect_min = 0.1
reconnect_max = 0.5
[store]
commit_interval = 0.2
[clock]
speed = 1200
start = {start}
[[devices]]
kind = "sim"
profile = "household"
id = "{GW}"
seed = 3
{only_line}""",
        encoding="utf-8",
    )


def spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(cfg)], stdout=f, stderr=f
        )


def status(cfg_path: Path) -> dict[str, object]:
    try:
        return dict(json.loads((cfg_path.parent / "data" / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def influx_matches_raw(cfg: Any, ingester: IngesterProc, influxdb: InfluxDB, influx_db: str) -> int:
    """After a clean stop: the outbox is empty and InfluxDB holds exactly the windows of the raw store (consented
    series only), value for value. Returns how many windows."""
    conn = connect(cfg.db_path)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    marks = {c: int(ms) for c, ms in conn.execute("SELECT category, next_start FROM watermark")}
    raw = [
        Reading(d, s, m, v, METRICS[m].unit, ts / 1000)
        for ts, d, s, m, v in conn.execute(
            "SELECT r.ts, s.device, s.subject, s.metric, r.value FROM raw r JOIN series s ON s.id = r.series"
        )
    ]
    sent_total = int(conn.execute("SELECT value FROM meta WHERE key = 'aggregates_sent'").fetchone()[0])
    conn.close()
    wait_for(lambda: ingester.last.get("written", 0) >= sent_total, timeout=60)
    final = ingester.stop()
    assert final.get("rejected", {}) == {}

    expected = {}
    for category in ("health", "energy"):
        rs = [r for r in raw if r.category.value == category]
        expected.update(
            {
                k: v
                for k, v in truth(rs, 60, marks[category]).items()
                if (category == "health" and k[2] == "p1") or (category == "energy" and k[2] == GW)
            }
        )
    ids = {r.device for r in raw} | {r.subject for r in raw}
    got = influx_points(influxdb, influx_db, load_keys(cfg.gateway.data_dir), ids)
    assert set(got) == set(expected), (sorted(set(expected) - set(got))[:3], sorted(set(got) - set(expected))[:3])
    for key, want in expected.items():
        for field, value in want.items():
            assert got[key][field] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, field)
    return len(expected)


def test_kill_9_agent_loses_and_doubles_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    cfg_path = tmp_path / "agent.toml"
    write_config(cfg_path, mosquitto.port, T0)
    cfg = load_config(cfg_path)
    conn = connect(cfg.db_path)
    given = datetime.fromtimestamp(T0, tz=UTC)
    consent.open_store(cfg, conn).grant("preventive-care", "p1", now=given)
    consent.open_store(cfg, conn).grant("community-energy", GW, now=given)
    conn.close()
    ingester = IngesterProc(
        mosquitto.port, influxdb.url, influx_db, client_id="crash-ingest", log=tmp_path / "ingest.log"
    )

    agent = spawn(cfg_path, tmp_path / "agent1.log")
    wait_for(lambda: int(status(cfg_path).get("aggregates_sent", 0)) > 200, timeout=60)  # type: ignore[call-overload]
    agent.send_signal(signal.SIGKILL)  # power cut: no flush, no goodbye
    agent.wait(10)

    conn = connect(cfg.db_path)
    resume = conn.execute("SELECT max(ts) FROM raw").fetchone()[0] / 1000
    left = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    conn.close()
    write_config(cfg_path, mosquitto.port, resume)  # the devices go on from the last committed reading
    agent = spawn(cfg_path, tmp_path / "agent2.log")
    wait_for(lambda: float(status(cfg_path).get("clock", 0)) > resume + 3600, timeout=60)  # type: ignore[arg-type]
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0

    assert left >= 0
    assert influx_matches_raw(cfg, ingester, influxdb, influx_db) > 500


#: the devices of the power-cut loop: a strap (health) and the meter and a plug (energy)
LOOP_DEVICES = [f"{GW}-p1-hr", f"{GW}-meter", f"{GW}-kettle"]


def test_a_hundred_power_cuts_in_a_row_at_random_points(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    """kill -9 at a random moment (starting, reading, closing windows, publishing), 100 times: the database opens
    and passes its integrity check every time, and InfluxDB ends up holding exactly the windows of the raw store."""
    import random

    from edge_agent.backup import check

    rng = random.Random(20)
    cfg_path = tmp_path / "agent.toml"
    write_config(cfg_path, mosquitto.port, T0, LOOP_DEVICES)
    cfg = load_config(cfg_path)
    conn = connect(cfg.db_path)
    given = datetime.fromtimestamp(T0, tz=UTC)
    consent.open_store(cfg, conn).grant("preventive-care", "p1", now=given)
    consent.open_store(cfg, conn).grant("community-energy", GW, now=given)
    conn.close()
    ingester = IngesterProc(mosquitto.port, influxdb.url, influx_db, client_id="cuts-ingest", log=tmp_path / "i.log")
    resume = T0
    for n in range(100):
        agent = spawn(cfg_path, tmp_path / "agent-cuts.log")
        try:
            agent.wait(rng.uniform(0.05, 1.5))  # the random moment; the agent never ends by itself
            raise AssertionError(f"round {n}: the agent ended by itself ({agent.returncode})")
        except subprocess.TimeoutExpired:
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
        check(cfg.db_path)  # opens, and PRAGMA quick_check says ok
        conn = connect(cfg.db_path)
        last = conn.execute("SELECT max(ts) FROM raw").fetchone()[0]
        conn.close()
        if last is not None:
            resume = max(resume, last / 1000 + 1)
        write_config(cfg_path, mosquitto.port, resume, LOOP_DEVICES)
    assert not list(cfg.gateway.data_dir.glob("*.damaged-*"))  # the agent never found its database damaged

    agent = spawn(cfg_path, tmp_path / "agent-last.log")
    wait_for(lambda: float(status(cfg_path).get("clock", 0)) > resume + 1800, timeout=60)  # type: ignore[arg-type]
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert influx_matches_raw(cfg, ingester, influxdb, influx_db) > 100

"""``kind = "ocpp"`` as the agent runs it (Config, build, readings(), health) and the ``kyojo ocpp`` commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import websockets
from ocpp.v16 import ChargePoint, call
from pydantic import ValidationError
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from drivers.clock import SystemClock
from drivers.ocpp import device
from drivers.ocpp.cli import app
from drivers.ocpp.sessions import SessionStore
from drivers.registry import BuildContext

OCPP16 = [Subprotocol("ocpp1.6")]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_validation() -> None:
    ok = device.Config.model_validate(
        {
            "kind": "ocpp",
            "id": "home1-ocpp",
            "subject": "home1",
            "charge_points": ["ALF-1"],
            "tags": ["04A2B3C4D5"],
            "credentials": {"ALF-1": "key"},
            "heartbeat_interval": "PT1M",
        }
    )
    assert ok.credentials is not None and "key" not in repr(ok)  # SecretStr
    assert ok.heartbeat_interval.total_seconds() == 60
    base = {"kind": "ocpp", "id": "x", "subject": "home1"}
    for bad in (
        {**base, "unknown": 1},
        {**base, "tags": ["x" * 21]},
        {**base, "charge_points": ["a/b"]},
        {**base, "charge_points": ["A", "B"], "credentials": {"A": "k"}},
        {**base, "heartbeat_interval": "PT1S"},
    ):
        with pytest.raises(ValidationError):
            device.Config.model_validate(bad)


def test_driver_yields_readings_and_reports_health(tmp_path: Path) -> None:
    config = device.Config(kind="ocpp", id="home1-ocpp", subject="home1", listen_host="127.0.0.1", listen_port=0)
    (driver,) = device.build(config, BuildContext("gw1", SystemClock(), 1.0, tmp_path))
    assert driver.device_id == "home1-ocpp" and driver.health()["listening"] is False

    async def main() -> None:
        assert isinstance(driver, device.OcppDriver)
        agen = driver.readings()
        first = asyncio.ensure_future(agen.__anext__())
        await asyncio.wait_for(driver.listening.wait(), 5)
        url = f"ws://127.0.0.1:{driver.port}/ocpp/CP1"
        async with websockets.connect(url, subprotocols=OCPP16) as ws:
            cp = ChargePoint("CP1", ws, response_timeout=5)
            task = asyncio.create_task(cp.start())
            await cp.call(call.BootNotification(charge_point_model="m", charge_point_vendor="v"))
            await cp.call(call.Heartbeat())
            now = time.time()
            res = await cp.call(call.StartTransaction(connector_id=1, id_tag="t", meter_start=0, timestamp=iso(now)))
            sv = [{"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"}]
            await cp.call(call.MeterValues(1, [{"timestamp": iso(now + 1), "sampled_value": sv}], res.transaction_id))
            reading = await asyncio.wait_for(first, 5)
            assert (reading.device, reading.subject) == ("CP1-1", "home1")
            assert (reading.metric, reading.value, reading.unit) == ("ev_power", 7400.0, "W")
            health = driver.health()
            cp_health = health["chargers"]["CP1"]  # type: ignore[index]
            assert cp_health["connected"] and cp_health["transactions"] == {"1": res.transaction_id}
            assert cp_health["last_heartbeat"] is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        await agen.aclose()  # type: ignore[attr-defined]
        assert driver.health()["listening"] is False
        assert (tmp_path / "ocpp-home1-ocpp.db").exists()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_cli_sessions_json(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with SessionStore(db) as store:
        tx = store.start("CP1", 1, "TAG1", 1000, 1_767_000_000.0)
        store.meter(tx, 4000, 7200, 1_767_000_600.0)
        store.stop(tx, 5000, 1_767_000_900.0, "EVDisconnected")
        store.start("CP1", 2, "TAG2", 0, 1_767_000_100.0)
    res = CliRunner().invoke(app, ["sessions", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert rows[0] == {
        "id": 1,
        "charge_point": "CP1",
        "connector": 1,
        "id_tag": "TAG1",
        "tag_status": "Accepted",
        "start_ts": 1_767_000_000.0,
        "stop_ts": 1_767_000_900.0,
        "meter_start_wh": 1000.0,
        "meter_stop_wh": 5000.0,
        "energy_wh": 4000.0,
        "max_power_w": 7200.0,
        "stop_reason": "EVDisconnected",
    }
    assert rows[1]["stop_ts"] is None and rows[1]["energy_wh"] is None
    text = CliRunner().invoke(app, ["sessions", "--db", str(db)])
    assert "4.000 kWh" in text.output and "running" in text.output


def test_cli_serve_runs_alone_and_stops_on_sigint(tmp_path: Path) -> None:
    """``kyojo ocpp serve`` as a process: a real charger session, then Ctrl-C, then ``sessions`` sees it."""
    port = free_port()
    db = tmp_path / "site.db"
    code = "from drivers.ocpp.cli import app; app()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db), "--tag", "T1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:

        async def session() -> str:
            for _ in range(100):
                try:
                    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ocpp/SITE1", subprotocols=OCPP16)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("serve did not listen")
            async with ws:
                cp = ChargePoint("SITE1", ws, response_timeout=5)
                task = asyncio.create_task(cp.start())
                now = time.time()
                res = await cp.call(call.Authorize(id_tag="OTHER"))
                res = await cp.call(call.StartTransaction(1, "T1", 100, iso(now)))
                await cp.call(call.StopTransaction(1100, iso(now + 60), res.transaction_id))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
            return "ok"

        assert asyncio.run(asyncio.wait_for(session(), 15)) == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "ocpp1.6" not in out and "SITE1" in err
    res = CliRunner().invoke(app, ["sessions", "--db", str(db), "--json"])
    (row,) = json.loads(res.output)
    assert (row["charge_point"], row["energy_wh"], row["tag_status"]) == ("SITE1", 1000.0, "Accepted")

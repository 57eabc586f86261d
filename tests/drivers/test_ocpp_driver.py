"""``kind = "ocpp"`` as the agent runs it (Config, build, readings(), health) and the ``kyojo ocpp`` commands."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
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
from tests.kit import ROOT, free_port

OCPP16 = [Subprotocol("ocpp1.6")]
KEY = "alfen-authorization-key-01"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def test_config_validation() -> None:
    ok = device.Config.model_validate(
        {
            "kind": "ocpp",
            "id": "home1-ocpp",
            "subject": "home1",
            "charge_points": ["ALF-1"],
            "tags": ["04A2B3C4D5"],
            "credentials": {"ALF-1": KEY},
            "heartbeat_interval": "PT1M",
        }
    )
    assert KEY not in repr(ok) and KEY not in str(ok.model_dump())  # SecretStr
    assert ok.heartbeat_interval.total_seconds() == 60
    base = {"kind": "ocpp", "id": "x", "subject": "home1"}
    default = device.Config.model_validate(base)
    # secure by default: loopback only, nobody allowed, Basic auth required
    assert (default.listen_host, default.charge_points, default.security_profile) == ("127.0.0.1", [], 1)
    one = {**base, "charge_points": ["A"]}
    assert device.Config.model_validate({**one, "security_profile": 0}).credentials == {}
    for bad in (
        {**base, "unknown": 1},
        {**base, "tags": ["x" * 21]},
        {**base, "charge_points": ["a/b"]},
        {**base, "charge_points": ["a:b"], "security_profile": 0},  # ':' cannot be a Basic-auth username
        {**base, "charge_points": ["CP1\n"], "security_profile": 0},  # re.match with '$' let this through
        {**base, "charge_points": ["A", "A"], "security_profile": 0},
        {**base, "charge_points": ["A", "B"], "credentials": {"A": KEY}},
        one,  # security profile 1 (the default) without a key
        {**one, "credentials": {"A": "too-short"}},
        {**one, "credentials": {"A": "x" * 41}},
        {**one, "credentials": {"A": "with a space in the key"}},
        {**one, "credentials": {"A": KEY, "B": KEY}},  # a key for a charger that is not allowed
        {**one, "credentials": {"A": KEY}, "credential_files": {"A": "/k"}},
        {**base, "listen_host": ""},  # asyncio would listen on every interface
        {**base, "security_profile": 2},
        {**base, "id": "abc\n"},
        {**base, "subject": "home1\n"},
        {**base, "heartbeat_interval": "PT1S"},
    ):
        with pytest.raises(ValidationError):
            device.Config.model_validate(bad)


def test_key_files_are_read_at_build(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A key file is read when the driver is built: a missing or short one stops the start with a typed error."""
    key = tmp_path / "alf.key"
    key.write_text(KEY + "\n", encoding="ascii")
    key.chmod(0o644)
    cfg = {"kind": "ocpp", "id": "o", "subject": "home1", "charge_points": ["ALF-1"]}
    ctx = BuildContext("gw1", SystemClock(), 1.0, tmp_path)
    config = device.Config.model_validate({**cfg, "credential_files": {"ALF-1": str(key)}})
    with caplog.at_level(logging.WARNING, logger="drivers.ocpp"):
        assert device.resolve_credentials(config) == {"ALF-1": KEY}
    assert any("readable by other users" in r.getMessage() for r in caplog.records)
    assert len(device.build(config, ctx)) == 1
    key.write_text("short\n", encoding="ascii")
    with pytest.raises(device.OcppConfigError, match="16-40"):
        device.build(config, ctx)
    missing = device.Config.model_validate({**cfg, "credential_files": {"ALF-1": str(tmp_path / "nope")}})
    with pytest.raises(device.OcppConfigError, match="cannot read"):
        device.build(missing, ctx)


def test_driver_yields_readings_and_reports_health(tmp_path: Path) -> None:
    config = device.Config.model_validate(
        {
            "kind": "ocpp",
            "id": "home1-ocpp",
            "subject": "home1",
            "listen_port": 0,
            "charge_points": ["CP1"],
            "credentials": {"CP1": KEY},
        }
    )
    (driver,) = device.build(config, BuildContext("gw1", SystemClock(), 1.0, tmp_path))
    assert driver.device_id == "home1-ocpp" and driver.health()["listening"] is False

    async def main() -> None:
        assert isinstance(driver, device.OcppDriver)
        agen = driver.readings()
        first = asyncio.ensure_future(agen.__anext__())
        await asyncio.wait_for(driver.listening.wait(), 5)
        assert driver.central is not None and driver.central._server is not None
        bound = {sock.getsockname()[0] for sock in driver.central._server.sockets}
        assert bound == {"127.0.0.1"}  # the default is loopback, not every interface
        url = f"ws://127.0.0.1:{driver.port}/ocpp/CP1"
        async with websockets.connect(url, subprotocols=OCPP16, additional_headers=basic("CP1", KEY)) as ws:
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
    key = tmp_path / "site1.key"
    key.write_text(KEY + "\n", encoding="ascii")
    key.chmod(0o600)
    code = "from drivers.ocpp.cli import app; app()"
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--db", str(db), "--tag", "T1", "--charge-point", "SITE1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--key-file", f"SITE1={key}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:

        async def session() -> str:
            for _ in range(100):
                try:
                    ws = await websockets.connect(
                        f"ws://127.0.0.1:{port}/ocpp/SITE1", subprotocols=OCPP16, additional_headers=basic("SITE1", KEY)
                    )
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


def test_cli_serve_refuses_an_open_setup() -> None:
    """``serve`` wants the allow-list and a key per charger (or an explicit profile 0), and a named host."""
    runner = CliRunner()
    for args in (
        ["serve"],  # no --charge-point
        ["serve", "--charge-point", "A"],  # profile 1 without a key
        ["serve", "--charge-point", "A", "--key-file", "B=/x"],
        ["serve", "--charge-point", "A", "--security-profile", "0", "--listen", ":9000"],
        ["serve", "--charge-point", "a:b", "--security-profile", "0"],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)

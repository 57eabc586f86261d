"""The local central system against the ``ocpp`` library's ChargePoint as a real client over loopback websockets.

Every test starts its own central system on a free port with a sessions file in tmp_path and closes everything
(websockets, server, SQLite) before it ends. The chargers log in as OCPP security profile 1 requires (HTTP Basic
auth on the upgrade, username = charge point id, password = its AuthorizationKey), as real ones are set up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.v16 import ChargePoint, call
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from drivers.logs import LogLimiter
from drivers.ocpp.server import CentralSystem
from drivers.ocpp.sessions import SessionStore
from kyojo.contract.vocab import Reading
from tests.kit import DATA

FIXTURES = DATA / "ocpp" / "session_fixtures.jsonl"
OCPP16 = [Subprotocol("ocpp1.6")]
T0 = time.time() - 3600  # an hour ago: plausible for the charger-clock check


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 20))


#: the charge points the test central systems know
CHARGERS = ("CP1", "lbbrhzn", "WB1", "OLD", "HOME")


def key_of(cp_id: str) -> str:
    """Each charger's AuthorizationKey (16-40 characters)."""
    return f"key-{cp_id}-0123456789abcdef"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def central_system(db: Path, port: int = 0, **kw: Any) -> AsyncIterator[tuple[CentralSystem, int]]:
    kw.setdefault("allow", frozenset(CHARGERS))
    if kw.get("security_profile", 1):
        kw.setdefault("credentials", {cp: key_of(cp) for cp in kw["allow"]})
    with SessionStore(db) as store:
        cs = CentralSystem(store, subject="home1", **kw)
        bound = await cs.start("127.0.0.1", port)
        try:
            yield cs, bound
        finally:
            await cs.close()


def connect(port: int, cp_id: str = "CP1", subprotocols: list[Subprotocol] | None = OCPP16) -> websockets.connect:
    """A raw websocket as the charge point ``cp_id`` (logged in with its key)."""
    url = f"ws://127.0.0.1:{port}/ocpp/{cp_id}"
    return websockets.connect(url, subprotocols=subprotocols, additional_headers=basic(cp_id, key_of(cp_id)))


@contextlib.asynccontextmanager
async def charger(port: int, cp_id: str = "CP1") -> AsyncIterator[ChargePoint]:
    """The ocpp library's own charge point, connected over a real websocket."""
    async with connect(port, cp_id) as ws:
        cp = ChargePoint(cp_id, ws, response_timeout=5)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task


def drain(cs: CentralSystem) -> list[Reading]:
    out = []
    while not cs.readings.empty():
        out.append(cs.readings.get_nowait())
    return out


def by_metric(readings: list[Reading], metric: str) -> list[float]:
    return [r.value for r in readings if r.metric == metric]


def energy_mv(tx: int | None, ts: float, wh: float, w: float | None = None, soc: float | None = None) -> Any:
    samples = [{"value": f"{wh:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
    if w is not None:
        samples.append({"value": f"{w / 1000:.3f}", "measurand": "Power.Active.Import", "unit": "kW"})
    if soc is not None:
        samples.append({"value": f"{soc:.0f}", "measurand": "SoC", "unit": "Percent", "location": "EV"})
    entry = {"timestamp": iso(ts), "sampled_value": samples}
    return call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[entry])


async def start_tx(cp: ChargePoint, meter_start: int = 10_000, tag: str = "TAG1") -> int:
    res = await cp.call(call.StartTransaction(connector_id=1, id_tag=tag, meter_start=meter_start, timestamp=iso(T0)))
    assert res.id_tag_info["status"] in ("Accepted", "Invalid")
    return int(res.transaction_id)


# ---------------------------------------------------------------------------------------------------------------


def test_full_session(tmp_path: Path) -> None:
    """Boot, status, authorize, start, meter values (kW and Wh, SoC), stop with transactionData."""

    async def main() -> None:
        async with central_system(tmp_path / "s.db", tags=frozenset({"TAG1"})) as (cs, port), charger(port) as cp:
            boot = await cp.call(
                call.BootNotification(charge_point_model="ICU Eve Mini", charge_point_vendor="Alfen BV")
            )
            assert (boot.status, boot.interval) == ("Accepted", 300)
            hb = await cp.call(call.Heartbeat())
            assert hb.current_time.endswith("Z")
            await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing", timestamp=iso(T0))
            )
            assert (await cp.call(call.Authorize(id_tag="TAG1"))).id_tag_info["status"] == "Accepted"
            assert (await cp.call(call.Authorize(id_tag="STRANGER"))).id_tag_info["status"] == "Invalid"
            tx = await start_tx(cp)
            await cp.call(energy_mv(tx, T0 + 60, 11_800, w=7200))
            await cp.call(energy_mv(tx, T0 + 120, 13_600, w=7400, soc=55))
            health = cs.health()["chargers"]["CP1"]
            assert health["transactions"] == {"1": tx} and health["connected"]
            assert health["connectors"]["1"]["status"] == "Preparing"
            assert health["last_heartbeat"] is not None
            stop = await cp.call(
                call.StopTransaction(
                    meter_stop=15_000,
                    timestamp=iso(T0 + 180),
                    transaction_id=tx,
                    reason="EVDisconnected",
                    id_tag="TAG1",
                    transaction_data=[
                        {
                            "timestamp": iso(T0 + 180),
                            "sampled_value": [
                                {"value": "15000", "context": "Transaction.End", "unit": "Wh"},
                                {"value": "60", "measurand": "SoC", "unit": "Percent", "location": "EV"},
                            ],
                        }
                    ],
                )
            )
            assert stop.id_tag_info["status"] == "Accepted"
            session = cs.store.get(tx)
            assert session is not None
            assert (session.energy_wh, session.max_power_w, session.id_tag) == (5000.0, 7400.0, "TAG1")
            assert session.start_ts == pytest.approx(T0, abs=1e-3)
            assert session.stop_ts == pytest.approx(T0 + 180, abs=1e-3)
            assert session.stop_reason == "EVDisconnected"
            readings = drain(cs)
            assert by_metric(readings, "ev_power") == [7200.0, 7400.0]
            assert by_metric(readings, "ev_energy") == [11_800.0, 13_600.0, 15_000.0]
            assert by_metric(readings, "soc") == [55.0, 60.0]
            assert {r.device for r in readings} == {"CP1-1"} and {r.subject for r in readings} == {"home1"}
            assert all(r.extra["transaction"] == str(tx) for r in readings)
            assert cs.health()["chargers"]["CP1"]["transactions"] == {}

    run(main)


def test_reconnect_mid_session(tmp_path: Path) -> None:
    """The socket drops after StartTransaction; the charger comes back without a BootNotification."""

    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (cs, port):
            async with charger(port) as cp:
                await cp.call(call.BootNotification(charge_point_model="m", charge_point_vendor="v"))
                tx = await start_tx(cp, meter_start=0)
                await cp.call(energy_mv(tx, T0 + 60, 1000, w=3600))
            await asyncio.sleep(0.05)
            assert cs.health()["chargers"]["CP1"]["connected"] is False
            async with charger(port) as cp:
                await cp.call(energy_mv(tx, T0 + 120, 2000, w=3700))
                assert cs.health()["chargers"]["CP1"]["connected"] is True
                await cp.call(call.StopTransaction(meter_stop=2500, timestamp=iso(T0 + 150), transaction_id=tx))
            session = cs.store.get(tx)
            assert session is not None and (session.energy_wh, session.max_power_w) == (2500.0, 3700.0)
            assert by_metric(drain(cs), "ev_energy") == [1000.0, 2000.0]

    run(main)


def test_second_connection_replaces_the_first(tmp_path: Path) -> None:
    """A half-open old socket is closed when the same charge point connects again."""

    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (cs, port), charger(port) as old, charger(port) as new:
            await new.call(call.Heartbeat())
            await asyncio.sleep(0.05)
            assert old._connection.state.name == "CLOSED"
            assert cs.health()["chargers"]["CP1"]["counts"]["replaced_connection"] == 1
            assert cs.health()["chargers"]["CP1"]["connected"] is True

    run(main)


def test_central_system_restart_mid_session(tmp_path: Path) -> None:
    """The gateway restarts during a transaction: the id continues, the session completes, ids are not reused."""

    async def main() -> None:
        db = tmp_path / "s.db"
        async with central_system(db) as (cs, port):
            async with charger(port) as cp:
                await cp.call(call.BootNotification(charge_point_model="m", charge_point_vendor="v"))
                first = await start_tx(cp, meter_start=100)
                await cp.call(call.StopTransaction(meter_stop=200, timestamp=iso(T0 + 10), transaction_id=first))
                tx = await start_tx(cp, meter_start=5000)
                await cp.call(energy_mv(tx, T0 + 60, 6000, w=11_000))
            energy_before = by_metric(drain(cs), "ev_energy")
        async with central_system(db, port=port) as (cs2, port2), charger(port2) as cp:
            await cp.call(energy_mv(tx, T0 + 120, 7000, w=10_500))
            health = cs2.health()["chargers"]["CP1"]
            assert health["registration"] is None  # no BootNotification after a central system restart
            assert health["transactions"] == {"1": tx}  # the open transaction is known from the store
            await cp.call(call.StopTransaction(meter_stop=7400, timestamp=iso(T0 + 130), transaction_id=tx))
            session = cs2.store.get(tx)
            assert session is not None and (session.energy_wh, session.max_power_w) == (2400.0, 11_000.0)
            assert await start_tx(cp, meter_start=7400) == tx + 1
            assert energy_before == [6000.0] and by_metric(drain(cs2), "ev_energy") == [7000.0]

    run(main)


def test_retried_start_transaction_gets_the_same_id(tmp_path: Path) -> None:
    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (_cs, port), charger(port) as cp:
            assert await start_tx(cp) == await start_tx(cp)

    run(main)


def test_stop_before_last_meter_values(tmp_path: Path) -> None:
    """BS-EV/Ocular send the closing MeterValues after StopTransaction: it is accepted and counted."""

    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (cs, port), charger(port) as cp:
            tx = await start_tx(cp, meter_start=1000)
            await cp.call(energy_mv(tx, T0 + 60, 2000, w=7000))
            await cp.call(call.StopTransaction(meter_stop=2500, timestamp=iso(T0 + 100), transaction_id=tx))
            session = cs.store.get(tx)
            assert session is not None and session.energy_wh == 1500.0
            await cp.call(energy_mv(tx, T0 + 100, 2600, w=7100))
            session = cs.store.get(tx)
            assert session is not None and (session.energy_wh, session.max_power_w) == (1600.0, 7100.0)
            assert by_metric(drain(cs), "ev_power") == [7000.0, 7100.0]

    run(main)


def test_register_restarting_per_session_stays_monotonic(tmp_path: Path) -> None:
    """Non errata-3.9 chargers restart the register at 0 per session: ev_energy must not go down."""

    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (cs, port), charger(port) as cp:
            tx = await start_tx(cp, meter_start=0)
            await cp.call(energy_mv(tx, T0 + 60, 4000))
            await cp.call(call.StopTransaction(meter_stop=4000, timestamp=iso(T0 + 70), transaction_id=tx))
            tx2 = await start_tx(cp, meter_start=0)
            await cp.call(energy_mv(tx2, T0 + 200, 1000))
            assert by_metric(drain(cs), "ev_energy") == [4000.0, 5000.0]

    run(main)


# ---------------------------------------------------------------------------------------------------------------
# Raw frames: the recorded fixtures and the malformed table
# ---------------------------------------------------------------------------------------------------------------


async def exchange(ws: ClientConnection, frame: str) -> list[Any]:
    await ws.send(frame)
    reply: list[Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return reply


def test_recorded_fixtures_replayed(tmp_path: Path) -> None:
    """All 15 third-party frames get a CALLRESULT; the session they form ends in the store."""
    records = [json.loads(line) for line in FIXTURES.read_text().splitlines()]

    async def main() -> None:
        async with (
            central_system(tmp_path / "s.db") as (cs, port),
            connect(port, "lbbrhzn") as ws,
        ):
            replies = [await exchange(ws, json.dumps(rec["frame"])) for rec in records]
            for rec, reply in zip(records, replies, strict=True):
                assert reply[:2] == [3, rec["frame"][1]], (rec["seq"], reply)
            assert replies[0][2]["status"] == "Accepted"
            assert replies[7][2]["transactionId"] == 1  # StartTransaction (seq 8) in a fresh store
            session = cs.store.get(1)
            assert session is not None
            # meterStop - meterStart: the 1.3 MWh register of seq 9 is another meter's, read before the stop
            assert (session.meter_start_wh, session.energy_wh) == (12345.0, 54321.0 - 12345.0)
            assert session.stop_reason == "EVDisconnected"
            health = cs.health()["chargers"]["lbbrhzn"]
            assert health["connectors"]["0"]["status"] == "SuspendedEV"
            assert health["counts"]["quirk:kwh_register"] == 3
            readings = drain(cs)
            assert by_metric(readings, "voltage")[:2] == [228.0, pytest.approx(229.23, abs=0.01)]
            # four registers from four chargers' captures, all stamped 16:15:09: one register cannot fall to 11 kWh
            # and rise to 67 MWh in no time, so only the first is taken and the others are held and counted
            assert by_metric(readings, "ev_energy") == [1_305_590.0]
            assert cs.health()["counters"] == {"lbbrhzn-1": {"backwards": 2, "jump": 1}}

    run(main)


START = {"idTag": "t", "meterStart": 1, "timestamp": "2026-01-01T00:00:00Z"}


def frame(uid: str, action: str, payload: Any) -> str:
    return json.dumps([2, uid, action, payload])


MALFORMED = [
    pytest.param("not json", "FormationViolation", "-1", id="not-json"),
    pytest.param('[2, "42", "Heartbeat", {}', "FormationViolation", "42", id="truncated-json-keeps-uid"),
    pytest.param('{"a": 1}', "FormationViolation", "-1", id="object-not-array"),
    pytest.param("[]", "FormationViolation", "-1", id="empty-array"),
    pytest.param('[7, "43", "Heartbeat", {}]', "FormationViolation", "43", id="unknown-message-type"),
    pytest.param('[2, "44", "Heartbeat"]', "ProtocolError", "44", id="call-missing-payload"),
    pytest.param('[2, 45, "Heartbeat", {}]', "FormationViolation", "-1", id="numeric-unique-id"),
    pytest.param('[2, "' + "x" * 37 + '", "Heartbeat", {}]', "FormationViolation", "-1", id="unique-id-too-long"),
    pytest.param('[2, "46", "Heartbeat", []]', "FormationViolation", "46", id="payload-not-object"),
    pytest.param('[2, "47", "FlyToTheMoon", {}]', "NotSupported", "47", id="unknown-action"),
    pytest.param('[2, "48", "RemoteStartTransaction", {"idTag": "x"}]', "NotImplemented", "48", id="cs-to-cp-action"),
    pytest.param(
        frame("49", "BootNotification", {"chargePointModel": "m"}), "OccurenceConstraintViolation", "49",
        id="boot-missing-vendor",
    ),
    pytest.param(
        frame("50", "StartTransaction", {**START, "connectorId": "a"}), "TypeConstraintViolation", "50",
        id="start-connector-not-int",
    ),
    pytest.param(
        frame("51", "StartTransaction", {**START, "connectorId": 1, "meterStart": -5}),
        "PropertyConstraintViolation", "51", id="start-negative-meter",
    ),
    pytest.param(
        frame("52", "MeterValues", {"connectorId": 1}), "OccurenceConstraintViolation", "52",
        id="meter-values-missing-list",
    ),
    pytest.param(
        frame("53", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "soon", "sampledValue": []}]}),
        "FormationViolation", "53", id="meter-values-bad-timestamp",
    ),
    pytest.param(
        frame("54", "StatusNotification", {"connectorId": 1, "status": "Charging"}),
        "OccurenceConstraintViolation", "54", id="status-missing-error-code",
    ),
    pytest.param(
        frame("55", "StopTransaction", {"transactionId": 1, "timestamp": "2026-01-01T00:00:00Z"}),
        "OccurenceConstraintViolation", "55", id="stop-missing-meter-stop",
    ),
    pytest.param(
        frame("56", "DataTransfer", {"data": "x"}), "OccurenceConstraintViolation", "56",
        id="data-transfer-missing-vendor",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("frame", "code", "unique_id"), MALFORMED)
def test_malformed_frames_get_callerror_and_keep_the_connection(
    tmp_path: Path, frame: str, code: str, unique_id: str
) -> None:
    async def main() -> None:
        async with (
            central_system(tmp_path / "s.db") as (cs, port),
            connect(port, "CP1") as ws,
        ):
            reply = await exchange(ws, frame)
            assert reply[0] == 4 and reply[1] == unique_id and reply[2] == code, reply
            assert isinstance(reply[3], str) and isinstance(reply[4], dict)
            ok = await exchange(ws, '[2, "after", "Heartbeat", {}]')
            assert ok[:2] == [3, "after"]
            assert cs.health()["chargers"]["CP1"]["counts"][f"callerror:{code}"] == 1 or code.startswith("Not")

    run(main)


def test_sloppy_but_understandable_frames_are_accepted(tmp_path: Path) -> None:
    """Numbers instead of strings, lowercase units, extra fields, decimals in meterStart: answered, not refused."""
    frames = [
        '[2,"1","BootNotification",{"chargePointVendor":"com.wallbox","chargePointModel":"Pulsar Plus '
        'with a model name longer than twenty","firmwareVersion":"6.2.18","unexpected":true}]',
        '[2,"2","StatusNotification",{"connectorId":"1","errorCode":"NoError","status":"Charging","info":"",'
        '"vendorErrorCode":"","vendorId":"com.wallbox"}]',
        '[2,"3","StartTransaction",{"connectorId":1,"idTag":"t","meterStart":100.0,"timestamp":"2026-01-05T14:30:07+10:00"}]',
        '[2,"4","MeterValues",{"connectorId":1,"transactionId":"1","meterValue":[{"timestamp":"2026-01-05T14:31:07+10:00",'
        '"sampledValue":[{"value":40,"measurand":"SoC","unit":"percent","location":"EV"},{"value":"1.2","unit":"kwh"}]}]}]',
        '[2,"5","DataTransfer",{"vendorId":"com.wallbox","messageId":"x"}]',
        '[2,"6","FirmwareStatusNotification",{"status":"Idle"}]',
    ]

    async def main() -> None:
        async with (
            central_system(tmp_path / "s.db") as (cs, port),
            connect(port, "WB1") as ws,
        ):
            replies = [await exchange(ws, f) for f in frames]
            assert [r[0] for r in replies] == [3] * len(frames), replies
            assert replies[4][2] == {"status": "UnknownVendorId"}
            readings = drain(cs)
            assert by_metric(readings, "soc") == [40.0] and by_metric(readings, "ev_energy") == [1200.0]
            assert readings[0].ts == 1767587467.0
            counts = cs.health()["chargers"]["WB1"]["counts"]
            assert counts["quirk:numeric_value"] == 1 and counts["quirk:unit_case"] == 1

    run(main)


# ---------------------------------------------------------------------------------------------------------------
# Admission: allow-list (Pending) and HTTP Basic auth (security profile 1), path, subprotocol
# ---------------------------------------------------------------------------------------------------------------


async def refused_status(url: str, **kw: Any) -> int:
    """The HTTP status of a refused websocket handshake."""
    with pytest.raises(InvalidStatus) as exc:
        async with websockets.connect(url, subprotocols=OCPP16, **kw):
            pass
    return int(exc.value.response.status_code)


def test_unknown_charge_point_is_refused_at_the_handshake(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An id outside the allow-list gets 404 before the upgrade, even with a password; counted, logged once."""
    caplog.set_level(logging.INFO, logger="drivers.ocpp")

    async def main() -> None:
        async with central_system(tmp_path / "s.db", allow=frozenset({"HOME"})) as (cs, port):
            for cp_id, key in (("NEIGHBOUR", key_of("NEIGHBOUR")), ("NEIGHBOUR", key_of("HOME")), ("X\nY", "k")):
                url = f"ws://127.0.0.1:{port}/ocpp/{cp_id}".replace("\n", "%0A")
                assert await refused_status(url, additional_headers=basic(cp_id, key)) == 404
            async with charger(port, "HOME") as cp:
                boot = await cp.call(call.BootNotification(charge_point_model="m", charge_point_vendor="v"))
                assert boot.status == "Accepted"
            assert cs.rejected == {"unknown_charge_point": 3}
            assert set(cs.health()["chargers"]) == {"HOME"}  # nothing is kept for a refused id
            assert drain(cs) == []

    run(main)
    refused = [r for r in caplog.records if "refused a charge point" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING and not refused[0].exc_info
    assert "unknown_charge_point (404 Not Found) for 'NEIGHBOUR'" in refused[0].getMessage()


def test_basic_auth_security_profile_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No, wrong, someone else's or a non-UTF-8 password: 401 before the upgrade, counted, logged once."""
    caplog.set_level(logging.INFO, logger="drivers.ocpp")

    async def main() -> None:
        async with central_system(tmp_path / "s.db", allow=frozenset({"CP1", "CP2"})) as (cs, port):
            url = f"ws://127.0.0.1:{port}/ocpp/CP1"
            latin1 = {"Authorization": "Basic " + base64.b64encode(b"CP1:\xff\xfe-not-utf8-0123456").decode()}
            for headers in (
                {},
                basic("CP1", "wrong-but-long-enough"),
                basic("CP2", key_of("CP1")),  # the right key under another name
                basic("CP1", key_of("CP2")),  # another charger's key
                basic("CP1", key_of("CP1")[:-1]),  # a prefix
                latin1,
                {"Authorization": "Bearer " + key_of("CP1")},
                {"Authorization": "Basic !!!"},
            ):
                assert await refused_status(url, additional_headers=headers) == 401, headers
            with pytest.raises(InvalidStatus) as exc:
                async with websockets.connect(url, subprotocols=OCPP16):
                    pass
            assert exc.value.response.headers["WWW-Authenticate"].startswith("Basic")
            async with websockets.connect(
                f"ws://CP1:{key_of('CP1')}@127.0.0.1:{port}/ocpp/CP1", subprotocols=OCPP16
            ) as ws:  # credentials in the URL are sent as Basic auth too
                assert ws.subprotocol == "ocpp1.6"
                assert (await exchange(ws, '[2,"1","Heartbeat",{}]'))[0] == 3
            assert cs.rejected == {"auth": 9}
            assert set(cs.health()["chargers"]) == {"CP1"}

    run(main)
    refused = [r for r in caplog.records if "refused a charge point" in r.getMessage()]
    assert len(refused) == 1 and "auth (401 Unauthorized) for 'CP1'" in refused[0].getMessage()
    assert not any(key_of("CP1") in r.getMessage() for r in caplog.records)


def test_security_profile_0_is_an_explicit_opt_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.ocpp")

    async def main() -> None:
        async with central_system(tmp_path / "s.db", allow=frozenset({"OLD"}), security_profile=0) as (cs, port):
            async with websockets.connect(f"ws://127.0.0.1:{port}/ocpp/OLD", subprotocols=OCPP16) as ws:
                assert (await exchange(ws, '[2,"1","Heartbeat",{}]'))[0] == 3
            assert await refused_status(f"ws://127.0.0.1:{port}/ocpp/NEW") == 404  # the allow-list still holds
            assert cs.health()["security_profile"] == 0

    run(main)
    assert [r.getMessage() for r in caplog.records if "security profile 0" in r.getMessage()] != []


def test_profile_1_without_a_key_for_an_allowed_charger_is_refused(tmp_path: Path) -> None:
    with SessionStore(tmp_path / "s.db") as store, pytest.raises(ValueError, match="needs a key"):
        CentralSystem(store, subject="home1", allow=frozenset({"A", "B"}), credentials={"A": key_of("A")})


def test_refused_call_is_one_log_line_with_its_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A CALLERROR the handler sends is logged as one line (no traceback, no payload), once per cause and minute;
    frames (idTags, meter values) never reach INFO."""
    caplog.set_level(logging.DEBUG, logger="drivers.ocpp")
    boot = frame("b", "BootNotification", {"chargePointModel": "secret-model-name"})

    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (cs, port), connect(port, "CP1") as ws:
            for _ in range(3):
                assert (await exchange(ws, boot))[2] == "OccurenceConstraintViolation"
                assert (await exchange(ws, '[2, "u", "FlyToTheMoon", {}]'))[2] == "NotSupported"
                assert (await exchange(ws, "not json"))[2] == "FormationViolation"
            assert (await exchange(ws, frame("a", "Authorize", {"idTag": "TAG-SECRET-9"})))[0] == 3
            counts = cs.health()["chargers"]["CP1"]["counts"]
            assert counts["callerror:OccurenceConstraintViolation"] == 3 and counts["callerror:NotSupported"] == 3

    run(main)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(r.exc_info for r in caplog.records)
    lines = sorted(r.getMessage() for r in warnings)
    assert len(lines) == 3, lines
    assert lines[0] == (
        "'CP1': malformed frame refused: FormationViolation: 'not JSON: Expecting value: line 1 column 1 (char 0)'"
    )
    assert lines[1].startswith("'CP1': refused 'BootNotification' (uid 'b'): OccurenceConstraintViolation:")
    assert "chargePointVendor is required" in lines[1] and "secret-model-name" not in lines[1]
    assert lines[2].startswith("'CP1': refused 'FlyToTheMoon' (uid 'u'): NotSupported:")
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not any("TAG-SECRET-9" in m for m in info)
    assert any("TAG-SECRET-9" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_log_limiter_holds_back_and_forgets_old_causes(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("tests.limiter")
    limited = LogLimiter(logger, interval=60, max_causes=2, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tests.limiter"):
        assert limited(logging.WARNING, "a", "cause %s", "a")
        assert not limited(logging.WARNING, "a", "cause %s", "a")
        assert not limited(logging.WARNING, "a", "cause %s", "a")
        now[0] = 61.0
        assert limited(logging.WARNING, "a", "cause %s", "a")
        assert limited(logging.WARNING, "b", "cause %s", "b") and limited(logging.WARNING, "c", "cause %s", "c")
        assert len(limited._causes) == 2 and "a" not in limited._causes
    assert [r.getMessage() for r in caplog.records] == [
        "cause a", "cause a (+2 more in the last 60s)", "cause b", "cause c",
    ]  # fmt: skip


def test_wrong_path_and_missing_subprotocol(tmp_path: Path) -> None:
    async def main() -> None:
        async with central_system(tmp_path / "s.db") as (cs, port):
            with pytest.raises(InvalidStatus) as exc:
                async with websockets.connect(f"ws://127.0.0.1:{port}/somewhere/CP1", subprotocols=OCPP16):
                    pass
            assert exc.value.response.status_code == 404
            async with connect(port, "OLD", subprotocols=None) as ws:  # no subprotocol offered
                assert (await exchange(ws, '[2,"1","Heartbeat",{}]'))[0] == 3
            assert cs.health()["chargers"]["OLD"]["counts"]["quirk:no_subprotocol"] == 1

    run(main)

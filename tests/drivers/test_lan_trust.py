"""Devices on the home LAN are not trusted for being there (issue 14 item 10).

- The rendered LAN Mosquitto (drivers/plugs/broker.py), started for real: anonymous clients are refused, a plug
  can publish only its own topics, the gateway only reads.
- The plugs driver: only paired plugs produce Readings; a flood of invented plug ids on a real broker leaves a
  bounded discovery memory and a bounded state file.
- Identifiers: a trailing newline is no identifier anywhere (``re.match`` with ``$`` let one through).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import ValidationError

from drivers.ble import device as ble_device
from drivers.gnss import device as gnss_device
from drivers.ocpp import device as ocpp_device
from drivers.plugs import device as plugs_device
from drivers.plugs import pairing
from drivers.plugs.broker import (
    BrokerConfError,
    LanBrokerSpec,
    PlugAccount,
    mosquitto_hash,
    render_lan_broker_conf,
)
from drivers.plugs.mqtt import PlugsDriver
from drivers.plugs.session import MAX_UNPAIRED, PlugSession
from drivers.sim import device as sim_device
from drivers.sim.health import HeartRateStrap
from kyojo.contract.vocab import Reading
from provisioning.local import CustomMosquitto, Mosquitto
from tests.kit import free_port

PW = {
    "kyojo-gateway": "gateway-password-0001",
    "z2m": "coordinator-password-02",
    "kettle_plug": "kettle-password-000003",
    "tv_plug": "tv-password-00000000004",
    "shellyplus1pm-a8032ab1": "fridge-password-0000005",
}
KETTLE_MAC = "A4CF125A3C7F"
NOT_AUTHORIZED = 0x87


def sensor(power: float, total_kwh: float | None = None) -> bytes:
    energy: dict[str, float] = {"Power": power}
    if total_kwh is not None:
        energy["Total"] = total_kwh
    return json.dumps({"Time": "2026-01-01T00:00:00", "ENERGY": energy}).encode()


def gen2_status(power: float) -> bytes:
    return json.dumps({"id": 0, "apower": power, "output": True}).encode()


# ---------------------------------------------------------------------------------------------------------------
# the rendered LAN broker, started for real
# ---------------------------------------------------------------------------------------------------------------


def spec(conf_dir: Path, port: int) -> LanBrokerSpec:
    return LanBrokerSpec.model_validate(
        {
            "listen": ["127.0.0.1"],
            "port": port,
            "conf_dir": str(conf_dir),
            "gateway": {"user": "kyojo-gateway", "password": PW["kyojo-gateway"]},
            "zigbee2mqtt": {"user": "z2m", "password": PW["z2m"]},
            "plugs": [
                {"key": "tasmota:kettle_plug", "password": PW["kettle_plug"], "mac": KETTLE_MAC},
                {"key": "tasmota:tv_plug", "password": PW["tv_plug"]},
                {"key": "shelly:shellyplus1pm-a8032ab1/0", "password": PW["shellyplus1pm-a8032ab1"]},
                {"key": "shelly:shellyplus1pm-a8032ab1/1", "password": PW["shellyplus1pm-a8032ab1"]},
            ],
        }
    )


class Client:
    """A real MQTT v5 client (v5: a refused publish comes back as PUBACK reason 0x87, not silence)."""

    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.connack = threading.Event()
        self.connect_rc: int | None = None
        self.puback: dict[int, int] = {}
        self.acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connack.wait(5)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connect_rc = reason.value
        self.connack.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self.acked:
            self.puback[mid] = reason.value
            self.acked.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.puback, 5)
            return self.puback[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def collect(
    drv: PlugsDriver, until: Callable[[list[Reading]], bool], action: Callable[[], None]
) -> list[Reading]:
    """Run the driver, do ``action`` once it is subscribed, return its readings once ``until`` holds."""
    out: list[Reading] = []
    done = asyncio.Event()

    async def consume() -> None:
        async for r in drv.readings():
            out.append(r)
            if until(out):
                done.set()
                return

    task = asyncio.create_task(consume())
    await asyncio.wait_for(asyncio.to_thread(drv.subscribed.wait, 10), 11)
    await asyncio.to_thread(action)
    await asyncio.wait_for(done.wait(), 10)
    await task
    return out


@pytest.mark.broker
def test_rendered_lan_broker_lets_each_plug_write_only_its_own_topics(tmp_path: Path) -> None:
    port = free_port()
    conf_dir = tmp_path / "lan"
    rendered = render_lan_broker_conf(spec(conf_dir, port))
    written = rendered.write(conf_dir)
    assert sorted(p.name for p in written) == ["acl", "mosquitto.conf", "passwd"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in written)
    assert not any(pw in rendered.passwd + rendered.acl + rendered.mosquitto_conf for pw in PW.values())
    assert rendered.passwd.count("shellyplus1pm-a8032ab1:") == 1  # two channels, one login

    appliances = {
        "tasmota:kettle_plug": "kettle",
        "tasmota:tv_plug": "tv",
        "shelly:shellyplus1pm-a8032ab1/0": "fridge",
        "z2m:washer": "washer",
    }
    session = PlugSession("home1", appliances)
    gateway = PlugsDriver("home1-plugs", session, port=port, username="kyojo-gateway", password=PW["kyojo-gateway"])
    refused: dict[str, int | None] = {}

    def plugs_publish() -> None:
        # nobody without an account, nor with a wrong password, gets in
        for name, user, password in (
            ("anonymous", None, None),
            ("wrong-password", "kettle_plug", "not-the-kettle-password"),
            ("gateway-password-as-kettle", "kettle_plug", PW["kyojo-gateway"]),
        ):
            c = Client(port, user, password)
            refused[name] = c.connect_rc
            c.close()
        kettle = Client(port, "kettle_plug", PW["kettle_plug"])
        fridge = Client(port, "shellyplus1pm-a8032ab1", PW["shellyplus1pm-a8032ab1"])
        z2m = Client(port, "z2m", PW["z2m"])
        gw = Client(port, "kyojo-gateway", PW["kyojo-gateway"])
        try:
            assert kettle.connect_rc == 0 and fridge.connect_rc == 0 and z2m.connect_rc == 0
            # impersonation: the kettle plug speaks for the tv plug, the fridge and a Zigbee plug; the gateway
            # (read-only) for the kettle; the fridge for the kettle
            assert kettle.publish("tele/tv_plug/SENSOR", sensor(9999)) == NOT_AUTHORIZED
            assert kettle.publish("shellyplus1pm-a8032ab1/status/switch:0", gen2_status(9999)) == NOT_AUTHORIZED
            assert kettle.publish("zigbee2mqtt/washer", b'{"power": 9999}') == NOT_AUTHORIZED
            assert kettle.publish("tasmota/discovery/000000000000/config", b"{}") == NOT_AUTHORIZED
            assert gw.publish("tele/kettle_plug/SENSOR", sensor(9999)) == NOT_AUTHORIZED
            assert fridge.publish("tele/kettle_plug/SENSOR", sensor(9999)) == NOT_AUTHORIZED
            assert fridge.publish("stat/kettle_plug/POWER", b"OFF") == NOT_AUTHORIZED
            # each its own
            assert kettle.publish("tele/kettle_plug/SENSOR", sensor(2000)) == 0
            disco = {"t": "kettle_plug", "ft": "%prefix%/%topic%/", "mac": KETTLE_MAC, "md": "Sonoff Pow R2"}
            assert kettle.publish(f"tasmota/discovery/{KETTLE_MAC}/config", json.dumps(disco).encode()) == 0
            assert fridge.publish("shellyplus1pm-a8032ab1/status/switch:0", gen2_status(80)) == 0
            assert z2m.publish("zigbee2mqtt/washer", b'{"power": 500}') == 0
        finally:
            for c in (kettle, fridge, z2m, gw):
                c.close()

    with CustomMosquitto(tmp_path / "mq", port, rendered.mosquitto_conf) as broker:
        assert broker.port == port
        out = asyncio.run(collect(gateway, lambda rs: len(rs) == 3, plugs_publish))
    assert refused == {"anonymous": 0x87, "wrong-password": 0x87, "gateway-password-as-kettle": 0x87}
    assert sorted((r.device, r.value) for r in out) == [
        ("home1-fridge", 80.0),
        ("home1-kettle", 2000.0),
        ("home1-washer", 500.0),
    ]
    assert gateway.health()["parse_errors"] == {}
    assert session.seen["tasmota:kettle_plug"].model == "Sonoff Pow R2"


@pytest.mark.broker
def test_plugs_driver_refused_by_the_lan_broker_says_so_and_keeps_trying(tmp_path: Path) -> None:
    """A wrong gateway password: the driver records the refused login (not a crash), never counts a connection,
    and keeps retrying with backoff until it is stopped."""
    port = free_port()
    rendered = render_lan_broker_conf(spec(tmp_path / "lan", port))
    rendered.write(tmp_path / "lan")
    drv = PlugsDriver("home1-plugs", PlugSession("home1", {}), port=port, username="kyojo-gateway", password="nope")

    async def consume() -> None:
        async for _ in drv.readings():
            raise AssertionError("a refused driver yielded a reading")

    async def main() -> None:
        task = asyncio.create_task(consume())
        deadline = asyncio.get_running_loop().time() + 20
        while not (drv.last_error or "").startswith("connect refused"):
            assert asyncio.get_running_loop().time() < deadline, drv.health()
            assert not task.done(), task
            await asyncio.sleep(0.02)
        assert drv.connects == 0 and not drv.connected and not drv.subscribed.is_set()
        task.cancel()  # one request, as the agent's supervisor makes: the driver must stop on it
        done, _ = await asyncio.wait({task}, timeout=20)
        assert done, "the driver did not stop when cancelled"
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with CustomMosquitto(tmp_path / "mq", port, rendered.mosquitto_conf):
        asyncio.run(main())


@pytest.mark.broker
def test_mosquitto_hash_is_what_mosquitto_passwd_checks(tmp_path: Path) -> None:
    """Our ``$7$`` line verifies like one written by ``mosquitto_passwd`` itself (same PBKDF2 parameters)."""
    ours = mosquitto_hash("s3cret-password", salt=b"0123456789ab")
    assert ours.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "u", "s3cret-password"], check=True)
    _, _, iterations, salt, _digest = passwd.read_text().strip().split(":", 1)[1].split("$")
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert mosquitto_hash("s3cret-password", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs


def test_broker_spec_refuses_what_it_cannot_enforce(tmp_path: Path) -> None:
    gw = {"user": "kyojo-gateway", "password": PW["kyojo-gateway"]}
    for plug in (
        {"key": "z2m:washer", "password": "x" * 16},  # Zigbee plugs log in through the coordinator
        {"key": "tasmota:a/b", "user": "a/b", "password": "x" * 16},
        {"key": "tasmota:#", "password": "x" * 16},
        {"key": "shelly:tele", "password": "x" * 16},  # would write tele/... as a Gen2 prefix
        {"key": "tasmota:kettle_plug", "password": "x" * 16, "mac": "not-a-mac"},
        {"key": "tasmota:kettle_plug"},  # no password
        {"key": "tasmota:kyojo-gateway", "password": "x" * 16},  # the gateway's username
    ):
        with pytest.raises(ValidationError):
            LanBrokerSpec.model_validate({"gateway": gw, "plugs": [plug]})
    short = LanBrokerSpec.model_validate({"gateway": {"user": "g", "password": "short"}})
    with pytest.raises(BrokerConfError, match="12-64"):
        render_lan_broker_conf(short)
    from_file = tmp_path / "gw.pw"
    from_file.write_text(PW["kyojo-gateway"] + "\n")
    ok = LanBrokerSpec.model_validate({"gateway": {"user": "g", "password_file": str(from_file)}})
    assert render_lan_broker_conf(ok).passwd.startswith("g:$7$101$")
    assert PlugAccount.model_validate({"key": "shelly:shellyplug-s-C45BBE/0", "password": "x" * 16}).user == (
        "shellyplug-s-C45BBE"
    )


# ---------------------------------------------------------------------------------------------------------------
# the plugs driver: allow-list and bounded discovery
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_a_flood_of_invented_plugs_is_bounded(fresh_mosquitto: Mosquitto, tmp_path: Path) -> None:
    """1,000 invented plug ids on a real broker: no Readings from them, at most 256 remembered (the newest),
    no counters or states for them, and a small state file that a restart reads back."""
    state = tmp_path / "plugs-home1.json"
    run_id = uuid.uuid4().hex[:6]
    invented = [f"fake{run_id}_{i:04d}" for i in range(1000)]

    def driver() -> PlugsDriver:
        session = PlugSession("home1", {f"tasmota:kettle{run_id}": "kettle"})
        return PlugsDriver("home1-plugs", session, port=fresh_mosquitto.port, state_path=state)

    def flood() -> None:
        pub = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"flood-{run_id}", protocol=MQTTProtocolVersion.MQTTv311
        )
        pub.max_queued_messages_set(0)
        pub.connect(fresh_mosquitto.host, fresh_mosquitto.port)
        pub.loop_start()
        try:
            infos = [pub.publish(f"tele/{name}/SENSOR", sensor(1234, 5.0), qos=1) for name in invented]
            infos += [pub.publish(f"stat/{name}/POWER", b"ON", qos=1) for name in invented[:10]]
            infos.append(pub.publish(f"tele/kettle{run_id}/SENSOR", sensor(2000, 1.5), qos=1))
            for info in infos:
                info.wait_for_publish(10)
        finally:
            pub.disconnect()
            pub.loop_stop()

    drv = driver()
    out = asyncio.run(collect(drv, lambda rs: len(rs) == 2, flood))
    assert [(r.device, r.metric, r.value) for r in out] == [
        ("home1-kettle", "power", 2000.0),
        ("home1-kettle", "energy", 1500.0),
    ]
    s = drv.session
    assert len(s.heard) == MAX_UNPAIRED == 256
    # least recently heard forgotten first: the first ten came back with a relay state after the flood
    assert list(s.heard) == [f"tasmota:{n}" for n in invented[-246:] + invented[:10]]
    assert s.ignored["unpaired"] == 2000 and s.ignored["forgotten"] == 1010 - 256  # power and energy each
    assert list(s.counters) == [f"tasmota:kettle{run_id}"] and s.states == {}
    health = drv.health()
    assert isinstance(health["unpaired"], list) and len(health["unpaired"]) == 256
    doc = json.loads(state.read_text())
    assert len(doc["seen"]) == 257 and state.stat().st_size < 100_000
    assert not list(tmp_path.glob(".*.tmp"))
    again = driver()
    assert list(again.session.heard) == list(s.heard)
    assert list(again.session.counters) == [f"tasmota:kettle{run_id}"]


def test_unpaired_readings_and_bad_keys_stay_out(caplog: pytest.LogCaptureFixture) -> None:
    s = PlugSession("home1", {"tasmota:kettle": "kettle"}, max_unpaired=2)
    with caplog.at_level("INFO", logger="drivers.plugs"):
        for _ in range(3):
            assert s.feed("tele/neighbour/SENSOR", sensor(100), 1.0) == []
        assert s.feed("tele/a\x1bb/SENSOR", sensor(100), 2.0) == []  # a terminal escape in the key
        assert s.feed("tele/" + "x" * 200 + "/SENSOR", sensor(100), 2.0) == []
        assert s.feed("tele/kettle/SENSOR", sensor(5), 3.0)[0].device == "home1-kettle"
        assert s.feed("tele/other/SENSOR", sensor(100), 3.5) == []
        announce = {"id": "shellyplug-s-00AA11", "model": "SHPLG-S\x1b[31m" + "m" * 100, "ip": "192.0.2.9"}
        assert s.feed("shellies/announce", json.dumps(announce).encode(), 4.0) == []
    assert s.ignored == {"unpaired": 6, "bad_key": 2, "forgotten": 1}
    assert [x.device for x in s.unpaired()] == ["shelly:shellyplug-s-00AA11", "tasmota:other"]
    model = s.heard["shelly:shellyplug-s-00AA11"].model
    assert model.startswith("SHPLG-S[31m") and len(model) == 64
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not paired" in m for m in messages) == 1  # logged once, counted every time
    assert sum("plug key refused" in m for m in messages) == 1


def test_pairing_and_config_take_full_identifiers_only(tmp_path: Path) -> None:
    with pytest.raises(pairing.PairingError):
        pairing.accept(tmp_path, "tasmota:kettle", "kettle\n", {})
    with pytest.raises(pairing.PairingError):
        pairing.accept(tmp_path, "tasmota:kettle\x1b", "kettle", {})
    pairing.accept(tmp_path, "z2m:Kitchen kettle", "kettle", {})  # Zigbee2MQTT friendly names have spaces
    (tmp_path / pairing.FILE).write_text(
        json.dumps({"appliances": {"tasmota:tv": "tv\n", "bogus": "x", "z2m:Kitchen kettle": "kettle"}})
    )
    assert pairing.load(tmp_path) == {"z2m:Kitchen kettle": "kettle"}
    base = {"kind": "plugs", "id": "home1-plugs", "household": "home1"}
    for bad in (
        {"appliances": {"tasmota:kettle": "kettle\n"}},
        {"appliances": {"tasmota:kettle\n": "kettle"}},
        {"appliances": {"tasmota:kettle": "_kettle"}},
        {"password": "x"},  # a password without a username
    ):
        with pytest.raises(ValidationError):
            plugs_device.Config.model_validate({**base, **bad})


def test_a_trailing_newline_is_no_identifier() -> None:
    """Every device kind refuses ``"abc\\n"`` as an id (``re.match`` with ``$`` accepted it)."""
    ble = {"kind": "ble", "id": "abc", "address": "C0:4B:00:00:01:01", "subject": "p1", "profile": "heart_rate"}
    configs: list[tuple[Any, dict[str, Any]]] = [
        (ble_device.Config, ble),
        (gnss_device.Config, {"kind": "gnss", "id": "abc", "subject": "truck1"}),
        (sim_device.Config, {"kind": "sim", "profile": "household", "id": "abc"}),
        (plugs_device.Config, {"kind": "plugs", "id": "abc", "household": "home1"}),
        (ocpp_device.Config, {"kind": "ocpp", "id": "abc", "subject": "home1"}),
    ]
    for model, good in configs:
        assert model.model_validate(good).id == "abc"
        with pytest.raises(ValidationError):
            model.model_validate({**good, "id": "abc\n"})
    with pytest.raises(ValidationError):
        ocpp_device.Config.model_validate(
            {"kind": "ocpp", "id": "o", "subject": "home1", "charge_points": ["abc\n"], "security_profile": 0}
        )
    assert not ocpp_device.valid_charge_point_id("abc\n")
    with pytest.raises(ValueError, match="invalid device id"):
        HeartRateStrap("abc\n", "p1", 1)
    with pytest.raises(ValueError, match="invalid subject"):
        HeartRateStrap("abc", "p1\n", 1)

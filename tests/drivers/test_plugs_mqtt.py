"""PlugsDriver against a real Mosquitto: publish the shared payloads, get the mapped readings."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.clock import SystemClock
from drivers.plugs import device as plugs_device
from drivers.plugs.mqtt import PlugsDriver
from drivers.plugs.session import PlugSession
from drivers.registry import BuildContext
from kyojo.contract.vocab import Reading
from provisioning.local import Mosquitto
from tests import kit

pytestmark = pytest.mark.broker

DATA = kit.DATA / "plugs"

APPLIANCES = {
    "tasmota:pow1": "kettle",
    "shelly:shellyplug-s-C45BBE/0": "fridge",
    "shelly:shellypstripg4-aabbccddeeff/3": "tv",
    "z2m:kitchen_kettle_plug": "toaster",
}


def fixture_messages() -> list[tuple[str, bytes]]:
    disco = {"t": "tasmota_5A3C7F", "ft": "%prefix%/%topic%/", "mac": "A4CF125A3C7F", "md": "Sonoff Pow R2"}
    msgs: list[tuple[str, bytes]] = [
        ("tasmota/discovery/A4CF125A3C7F/config", json.dumps(disco).encode()),
        ("shellies/announce", b'{"id":"shellyplug-s-00AA11","model":"SHPLG-S","mac":"00AA11","ip":"192.0.2.9"}'),
    ]
    for name in ("tasmota.json", "shelly_gen1.json"):
        msgs += [(m["topic"], m["payload"].encode()) for m in json.loads((DATA / name).read_text())["messages"]]
    gen2 = json.loads((DATA / "S4PL-00416EU_1.8.99-dev134818.json").read_text())  # the Power Strip Gen4
    for comp, status in gen2["records"][0]["status"].items():
        if comp != "sys":
            msgs.append((f"shellypstripg4-aabbccddeeff/status/{comp}", json.dumps(status).encode()))
    note = gen2["notify_status_example"]
    msgs.append((note["topic"], json.dumps(note["payload"]).encode()))
    z2m = json.loads((DATA / "zigbee2mqtt.json").read_text())["example_payload"]
    msgs.append((z2m["topic"], json.dumps(z2m["payload"]).encode()))
    return msgs


def publish(broker: Mosquitto, msgs: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"plug-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv311
    )
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        for topic, payload in msgs:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        pub.disconnect()
        pub.loop_stop()


async def collect(
    drv: PlugsDriver, n: int, after_subscribed: Callable[[], None], limit_s: float = 10.0
) -> list[Reading]:
    out: list[Reading] = []

    async def consume() -> None:
        async for r in drv.readings():
            out.append(r)
            if len(out) >= n:
                return

    task = asyncio.create_task(consume())
    for _ in range(200):
        if drv.subscribed.is_set():
            break
        await asyncio.sleep(0.02)
    await asyncio.to_thread(after_subscribed)
    await asyncio.wait_for(task, limit_s)
    return out


class TelePeriodClock(SystemClock):
    """Each message is received five minutes after the one before (Tasmota's default TelePeriod), as the
    captured payloads were sent, not back to back: the counter's rate check sees the kettle's 110 Wh between its
    two reports take minutes, not milliseconds."""

    def __init__(self) -> None:
        self.t = 1_750_000_000.0

    def now(self) -> float:
        self.t += 300.0
        return self.t


def test_driver_decodes_published_payloads(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = plugs_device.Config.model_validate(
        {
            "kind": "plugs",
            "id": "home1-plugs",
            "household": "home1",
            "broker_port": mosquitto.port,
            "appliances": APPLIANCES,
        }
    )
    ctx = BuildContext("gw1", TelePeriodClock(), 1.0, tmp_path)
    (drv,) = plugs_device.build(cfg, ctx)
    assert isinstance(drv, PlugsDriver)
    out = asyncio.run(collect(drv, 22, lambda: publish(mosquitto, fixture_messages())))
    got = sorted((r.device, r.metric, r.value) for r in out)
    metrics = ("power", "voltage", "current", "energy")
    expected = [("home1-kettle", m, v) for m, v in zip(metrics, (2635, 227, 11.661, 6294), strict=True)]
    expected += [("home1-kettle", m, v) for m, v in zip(metrics, (2629, 226, 11.677, 6404), strict=True)]
    expected += [("home1-fridge", "power", 12.34), ("home1-fridge", "energy", 2057.6)]
    expected += [("home1-tv", m, v) for m, v in zip(metrics, (15.4, 231.2, 0.169, 18440.297), strict=True)] * 2
    expected += [("home1-toaster", m, v) for m, v in zip(metrics, (1834, 231, 7.92, 12370), strict=True)]
    assert got == sorted(expected)
    assert {r.subject for r in out} == {"home1"}
    h = drv.health()
    assert h["parse_errors"] == {} and not h["ok"]  # disconnected after stop
    # the Tasmota docs' examples share the unpaired topic tasmota_XXXXXX (17 Wh, then 5.6 kWh five minutes later):
    # an unpaired plug keeps no counter at all, so neither its jump nor a flood of invented ids costs any state
    assert h["counters"] == {}
    assert h["ignored"]["unpaired"] >= 2
    unpaired, states = h["unpaired"], h["states"]
    assert isinstance(unpaired, list) and isinstance(states, dict)
    assert "tasmota:tasmota_5A3C7F" in unpaired and "shelly:shellyplug-s-00AA11" in unpaired
    assert states["shelly:shellyplug-s-C45BBE/0"] == {"output": True}
    # state saved on stop: counters and discovery records for `pair plugs`
    state = json.loads((tmp_path / "plugs-home1-plugs.json").read_text())
    seen = {s["device"]: s for s in state["seen"]}
    assert seen["tasmota:tasmota_5A3C7F"]["model"] == "Sonoff Pow R2" and seen["tasmota:pow1"]["paired_as"] == "kettle"
    assert state["counters"]["shelly:shellyplug-s-C45BBE/0"]["last_raw"] == 2057.6


def test_counters_survive_restart_and_reconnect(fresh_mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A Gen1 plug reboots (counter back to 0) while the driver restarts: energy keeps rising."""
    state = tmp_path / "plugs.json"

    def driver() -> PlugsDriver:
        session = PlugSession("home1", {"shelly:p1/0": "fridge"})
        return PlugsDriver("plugs", session, port=fresh_mosquitto.port, state_path=state)

    topic = "shellies/p1/relay/0/energy"
    first = asyncio.run(collect(driver(), 1, lambda: publish(fresh_mosquitto, [(topic, b"6000")])))
    fresh_mosquitto.restart()
    second = asyncio.run(collect(driver(), 2, lambda: publish(fresh_mosquitto, [(topic, b"60"), (topic, b"120")])))
    assert [r.value for r in first + second] == [100.0, 101.0, 102.0]


def test_driver_reconnects_when_the_broker_restarts(fresh_mosquitto: Mosquitto) -> None:
    """One driver across a broker restart: the client reconnects by itself (backoff), subscribes again, and the
    plug's next report arrives."""
    drv = PlugsDriver("plugs", PlugSession("home1", {"shelly:p1/0": "fridge"}), port=fresh_mosquitto.port)
    topic = "shellies/p1/relay/0/power"

    async def until(cond: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + limit_s
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {drv.health()}"
            await asyncio.sleep(0.02)

    async def main() -> list[Reading]:
        out: list[Reading] = []

        async def consume() -> None:
            async for r in drv.readings():
                out.append(r)
                if len(out) == 2:
                    return

        task = asyncio.create_task(consume())
        await until(drv.subscribed.is_set, "the first subscription")
        await asyncio.to_thread(publish, fresh_mosquitto, [(topic, b"12.5")])
        await until(lambda: len(out) == 1, "the first report")
        await asyncio.to_thread(fresh_mosquitto.restart)
        await until(lambda: drv.connects == 2 and drv.subscribed.is_set(), "the second subscription")
        await asyncio.to_thread(publish, fresh_mosquitto, [(topic, b"13")])
        await asyncio.wait_for(task, 10)
        return out

    out = asyncio.run(main())
    assert [(r.device, r.metric, r.value) for r in out] == [
        ("home1-fridge", "power", 12.5),
        ("home1-fridge", "power", 13.0),
    ]
    # the restart cut the link (and the broker may have refused a reconnect or two while it came back up)
    assert drv.last_error is not None and drv.last_error.startswith(("disconnected", "cannot connect"))


def test_config_validation() -> None:
    from pydantic import ValidationError

    base = {"kind": "plugs", "id": "home1-plugs", "household": "home1"}
    assert plugs_device.Config.model_validate({**base, "appliances": APPLIANCES}).broker_port == 1883
    for bad in (
        {"appliances": {"pow1": "kettle"}},  # no family prefix
        {"appliances": {"tasmota:a": "kettle", "tasmota:b": "kettle"}},  # one appliance, two plugs
        {"appliances": {"tasmota:a": "bad name"}},
        {"broker": "x"},
    ):
        with pytest.raises(ValidationError):
            plugs_device.Config.model_validate({**base, **bad})

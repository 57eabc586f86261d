"""Simulated smart plugs on the home's LAN-side MQTT broker, as the real firmware publishes them.

Each :class:`~drivers.sim.energy.Plug` is given a firmware family and a name (:class:`PlugWire`); every
``period_s`` of simulated time the :class:`PlugEmitter` publishes the plug's state at that instant:

- **Tasmota** (e.g. a Sonoff POW R2): ``tele/<topic>/SENSOR`` with the ``ENERGY`` object at Tasmota's default
  resolutions: ``Power`` and ``Voltage`` integers, ``Current`` 3 decimals (A), ``Total``/``Today``/``Yesterday``
  in kWh with 3 decimals; ``Time`` is the device's local time without offset, as Tasmota sends it.
- **Shelly Gen2+** (e.g. a Plus Plug S): ``<prefix>/events/rpc`` carrying a ``NotifyStatus`` for ``switch:0``:
  ``apower`` and ``voltage`` 1 decimal, ``current`` 3 decimals, ``aenergy.total`` Wh with 3 decimals,
  ``params.ts`` the Unix time.
- **Zigbee2MQTT** (e.g. a TuYa TS011F plug): ``zigbee2mqtt/<friendly name>`` with the whole state: ``power``
  and ``voltage`` integers, ``current`` 2 decimals, ``energy`` kWh with 2 decimals (10 Wh steps).

:data:`RESOLUTION` holds those steps per family and metric (in our units), so a test can check the decoded
values against the simulator within half a step. The energy counters are the simulator's cumulative counters
(since :data:`~drivers.sim.base.COUNTER_ORIGIN`), as a plug that has been metering since then would report.

The payload builders are pure; :class:`PlugEmitter` does the I/O (paho-mqtt, MQTT 3.1.1 as the plugs speak,
QoS 0 as Tasmota's telemetry). It publishes only the latest state when it wakes late (a plug does not replay
missed telemetry): the gateway stamps plug readings with their arrival time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.sim.base import DAY_S, HOUR_S
from drivers.sim.energy import Plug
from kyojo.contract.vocab import Clock

log = logging.getLogger(__name__)

WireFamily = Literal["tasmota", "shelly_gen2", "zigbee2mqtt"]

#: Value steps of each family's payload, in our units (W, V, A, Wh).
RESOLUTION: Mapping[WireFamily, Mapping[str, float]] = {
    "tasmota": {"power": 1.0, "voltage": 1.0, "current": 0.001, "energy": 1.0},
    "shelly_gen2": {"power": 0.1, "voltage": 0.1, "current": 0.001, "energy": 0.001},
    "zigbee2mqtt": {"power": 1.0, "voltage": 1.0, "current": 0.01, "energy": 10.0},
}


@dataclass(frozen=True, slots=True)
class PlugState:
    """What a plug reports at ``ts``: the simulator's power (W), energy counter (Wh), voltage (V), current (A)."""

    ts: float
    power: float
    energy: float
    voltage: float
    current: float


def plug_state(plug: Plug, ts: float) -> PlugState:
    """The simulator's state of ``plug`` at the step instant ``ts`` (a multiple of its period)."""
    by_metric = {r.metric: r.value for r in plug.readings_between(ts - plug.period_s, ts) if r.ts == ts}
    return PlugState(ts, by_metric["power"], by_metric["energy"], by_metric["voltage"], by_metric["current"])


@dataclass(frozen=True, slots=True)
class PlugWire:
    """One simulated plug as a device of ``family`` called ``name`` (Tasmota topic, Shelly prefix, Z2M name)."""

    plug: Plug
    family: WireFamily
    name: str

    @property
    def native_key(self) -> str:
        """The key the gateway's plug session knows this plug by (``[devices.appliances]`` keys)."""
        if self.family == "tasmota":
            return f"tasmota:{self.name}"
        if self.family == "shelly_gen2":
            return f"shelly:{self.name}/0"
        return f"z2m:{self.name}"

    @property
    def topic(self) -> str:
        """The topic the plug publishes its readings on."""
        if self.family == "tasmota":
            return f"tele/{self.name}/SENSOR"
        if self.family == "shelly_gen2":
            return f"{self.name}/events/rpc"
        return f"zigbee2mqtt/{self.name}"

    def payload(self, state: PlugState) -> bytes:
        """The message body for ``state``."""
        if self.family == "tasmota":
            return tasmota_sensor(self.plug, state)
        if self.family == "shelly_gen2":
            return shelly_notify_status(self.name, state)
        return z2m_state(state)


def _round(value: float, digits: int) -> float:
    return float(round(value, digits))


def tasmota_sensor(plug: Plug, state: PlugState) -> bytes:
    """``tele/<topic>/SENSOR`` of a Tasmota energy monitor (Today/Yesterday from the plug's local midnights)."""
    local = state.ts + plug.tz_offset_h * HOUR_S
    midnight = math.floor(local / DAY_S) * DAY_S - plug.tz_offset_h * HOUR_S
    e_mid, e_prev = (float(x) for x in plug.energy_at(np.array([midnight, midnight - DAY_S])))
    time_local = dt.datetime.fromtimestamp(round(local), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    start_local = dt.datetime.fromtimestamp(plug.origin + plug.tz_offset_h * HOUR_S, dt.UTC)
    apparent = state.voltage * state.current
    body = {
        "Time": time_local,
        "ENERGY": {
            "TotalStartTime": start_local.strftime("%Y-%m-%dT%H:%M:%S"),
            "Total": _round(state.energy / 1000.0, 3),
            "Yesterday": _round((e_mid - e_prev) / 1000.0, 3),
            "Today": _round((state.energy - e_mid) / 1000.0, 3),
            "Period": 0,
            "Power": round(state.power),
            "ApparentPower": round(apparent),
            "ReactivePower": 0,
            "Factor": _round(state.power / apparent, 2) if apparent > 0 else 0.0,
            "Voltage": round(state.voltage),
            "Current": _round(state.current, 3),
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def shelly_notify_status(prefix: str, state: PlugState) -> bytes:
    """``<prefix>/events/rpc``: a Shelly Gen2+ ``NotifyStatus`` for ``switch:0`` (on while it draws power)."""
    body = {
        "src": prefix,
        "dst": f"{prefix}/events",
        "method": "NotifyStatus",
        "params": {
            "ts": _round(state.ts, 2),
            "switch:0": {
                "id": 0,
                "output": True,
                "apower": _round(state.power, 1),
                "voltage": _round(state.voltage, 1),
                "current": _round(state.current, 3),
                "aenergy": {"total": _round(state.energy, 3)},
            },
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def z2m_state(state: PlugState) -> bytes:
    """``zigbee2mqtt/<name>``: the whole state of a Zigbee smart plug, as Zigbee2MQTT publishes it."""
    body = {
        "current": _round(state.current, 2),
        "energy": _round(state.energy / 1000.0, 2),
        "linkquality": 132,
        "power": round(state.power),
        "state": "ON",
        "voltage": round(state.voltage),
    }
    return json.dumps(body, separators=(",", ":")).encode()


#: Which family plays which appliance in a simulated household (several families, as in a real home).
DEFAULT_FAMILIES: Mapping[str, tuple[WireFamily, str]] = {
    "kettle": ("tasmota", "tasmota_5A3C7F"),
    "tv": ("tasmota", "tasmota_8E21D4"),
    "fridge": ("shelly_gen2", "shellyplusplugs-e86beae1c2a4"),
    "washer": ("zigbee2mqtt", "washer_plug"),
}


def household_plugs(plugs: Sequence[Plug], household: str) -> list[PlugWire]:
    """The household's plugs as devices: appliance ``<household>-<name>`` -> :data:`DEFAULT_FAMILIES[name]`."""
    out = []
    for plug in plugs:
        appliance = plug.device_id.removeprefix(f"{household}-")
        family, name = DEFAULT_FAMILIES[appliance]
        out.append(PlugWire(plug, family, name))
    return out


def appliances(wires: Sequence[PlugWire], household: str) -> dict[str, str]:
    """The ``[devices.appliances]`` table of a ``kind = "plugs"`` entry for these plugs."""
    return {w.native_key: w.plug.device_id.removeprefix(f"{household}-") for w in wires}


class PlugEmitter:
    """Publishes the plugs' states to an MQTT broker every ``period_s`` of simulated time on ``clock``.

    All plugs must share one period. ``published`` counts messages; ``skipped`` counts steps missed because
    the emitter woke late (only the latest state is sent).
    """

    def __init__(self, wires: Sequence[PlugWire], clock: Clock, *, host: str = "127.0.0.1", port: int = 1883) -> None:
        periods = {w.plug.period_s for w in wires}
        if len(periods) != 1:
            raise ValueError("all plugs of one emitter must share one period")
        self.wires = list(wires)
        self.period_s = periods.pop()
        self.clock = clock
        self.host, self.port = host, port
        self.published = 0
        self.skipped = 0
        self.connected = threading.Event()

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, _r: object, _p: object) -> None:
        self.connected.clear()

    async def run(self) -> None:
        """Connect and publish until cancelled (paho reconnects by itself; what falls in a gap is lost)."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"simwire-plugs-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(1, 5)
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        try:
            step = math.floor(self.clock.now() / self.period_s)
            while True:
                now = self.clock.now()
                nxt = (step + 1) * self.period_s
                if now < nxt:
                    await self.clock.sleep(nxt - now)
                    continue
                latest = math.floor(now / self.period_s)
                self.skipped += latest - step - 1
                step = latest
                ts = step * self.period_s
                for w in self.wires:
                    info = client.publish(w.topic, w.payload(plug_state(w.plug, ts)), qos=0)
                    if info.rc == mqtt.MQTT_ERR_SUCCESS:
                        self.published += 1
        finally:
            client.disconnect()
            client.loop_stop()


async def wait_connected(emitter: PlugEmitter, timeout_s: float = 10.0) -> None:
    """Wait until the emitter's client is connected (tests)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not emitter.connected.is_set():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("plug emitter did not connect")
        await asyncio.sleep(0.02)

"""Sans-IO decoders for smart-plug MQTT messages: topic + payload bytes in, :class:`Decoded` out.

Families and what each publishes (units as the devices send them; we normalise to the fixed units of
:data:`kyojo.contract.vocab.METRICS`):

- **Tasmota**: ``<prefix>/<topic>/<COMMAND>`` (FullTopic ``%prefix%/%topic%/`` by default, prefix ``tele`` or
  ``stat``). ``SENSOR`` / ``STATUS8`` / ``STATUS10`` carry an ``ENERGY`` object (``Power`` W, ``Voltage`` V,
  ``Current`` A, ``Total`` kWh; on multi-channel devices each may be a list or an object keyed by phase);
  ``STATE``, ``RESULT`` and ``POWER<n>`` carry relay states; ``LWT`` is the plain text ``Online``/``Offline``.
  Discovery: ``tasmota/discovery/<MAC>/config`` (JSON).
- **Shelly Gen1**: ``shellies/<id>/relay/<n>/power`` (W, text), ``.../relay/<n>/energy`` (watt-minutes, text),
  ``.../relay/<n>`` (``on``/``off``/``overpower``), ``.../online`` (``true``/``false``), Shelly EM/3EM
  ``.../emeter/<n>/{power,voltage,current,total}`` (``total`` in Wh). Announce: ``shellies/announce``.
- **Shelly Gen2/3/4**: ``<prefix>/events/rpc`` (``NotifyStatus``: *partial* component status;
  ``NotifyFullStatus``), ``<prefix>/status/<component>`` (full component status), ``<prefix>/online``. Metering
  components ``switch:N``, ``cover:N``, ``pm1:N``: ``apower`` W, ``voltage`` V, ``current`` A,
  ``aenergy.total`` Wh.
- **Zigbee2MQTT**: ``zigbee2mqtt/<friendly name>`` carries the whole device state as one JSON object
  (``power`` W, ``energy`` kWh, ``voltage`` V, ``current`` A, ``state`` ON/OFF);
  ``zigbee2mqtt/<name>/availability``; ``zigbee2mqtt/bridge/devices`` lists paired devices.

Readings carry the *native* device key (``tasmota:pow1``, ``shelly:shellyplug-s-C45BBE/0``,
``z2m:kitchen_kettle_plug``) and the device's *raw* energy counter; mapping keys to appliances and making
energy monotonic across counter resets is :class:`drivers.plugs.session.PlugSession`'s job.

Timestamps: every reading gets ``received_at`` (the gateway's clock). Device clocks are not trusted: Tasmota's
``Time`` is local time with no offset on older firmware and can be wrong (its docs show ``Time`` before
``TotalStartTime``); Gen1 and Zigbee2MQTT send no time at all. The device's own time, when it sends one, is
kept in ``Reading.extra["device_time"]``.

Everything here raises only :class:`kyojo.contract.errors.ParseError` on bad input, with one of :data:`REASONS`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kyojo.contract.vocab import ParseError, Reading, reading

__all__ = [
    "FAMILIES",
    "REASONS",
    "Announcement",
    "Decoded",
    "Family",
    "StateChange",
    "UnknownValue",
    "decode",
    "family_of",
]

Family = Literal["tasmota", "shelly_gen1", "shelly_gen2", "zigbee2mqtt"]
FAMILIES: tuple[Family, ...] = ("tasmota", "shelly_gen1", "shelly_gen2", "zigbee2mqtt")

#: Stable ParseError reasons (counter labels).
REASONS = (
    "unknown_topic",  # the topic belongs to no supported family
    "not_utf8",  # payload is not UTF-8 text
    "bad_json",  # payload is not valid JSON (or uses NaN/Infinity)
    "bad_shape",  # valid JSON, but not the structure the family documents
    "bad_number",  # a measurement that is not a finite number (or a negative energy counter)
    "bad_state",  # an on/off/online text the family does not define
)

#: Tasmota: Wh per kWh (ENERGY.Total, Zigbee2MQTT energy).
_WH_PER_KWH = 1000.0
#: Shelly Gen1 relay energy counters are in watt-minutes.
_WMIN_PER_WH = 60.0

_TASMOTA_PREFIXES = frozenset({"tele", "stat"})
_TASMOTA_COMMAND_RE = re.compile(r"^(SENSOR|STATE|LWT|RESULT|STATUS\d+|POWER\d*)$")
_TASMOTA_POWER_KEY_RE = re.compile(r"^POWER(\d*)$")
#: Tasmota ENERGY keys -> (metric, factor to our unit)
_TASMOTA_ENERGY: dict[str, tuple[str, float]] = {
    "Power": ("power", 1.0),
    "Voltage": ("voltage", 1.0),
    "Current": ("current", 1.0),
    "Total": ("energy", _WH_PER_KWH),
}
_SHELLY2_COMPONENT_RE = re.compile(r"^(switch|cover|pm1):(\d{1,3})$")
_Z2M_BASE = "zigbee2mqtt"
#: Zigbee2MQTT state keys -> (metric, factor)
_Z2M_FIELDS: dict[str, tuple[str, float]] = {
    "power": ("power", 1.0),
    "voltage": ("voltage", 1.0),
    "current": ("current", 1.0),
    "energy": ("energy", _WH_PER_KWH),
}


@dataclass(frozen=True, slots=True)
class StateChange:
    """A non-numeric status of a plug: ``online`` (LWT / availability) or ``output`` (relay on/off)."""

    device: str
    key: Literal["online", "output"]
    value: bool
    raw: str = ""


@dataclass(frozen=True, slots=True)
class UnknownValue:
    """An enumerated value the family does not define (a relay state other than its on/off words), kept and
    reported rather than refusing the readings that came in the same message (issue 20, section 4)."""

    device: str
    field: str
    raw: str


@dataclass(frozen=True, slots=True)
class Announcement:
    """A plug that announced itself (discovery); ``device`` is the key its readings will carry."""

    family: Family
    device: str
    model: str = ""
    mac: str = ""
    ip: str = ""
    name: str = ""
    firmware: str = ""


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one MQTT message said. Messages of a family that carry nothing we use decode to an empty one."""

    family: Family
    readings: tuple[Reading, ...] = ()
    states: tuple[StateChange, ...] = ()
    announcements: tuple[Announcement, ...] = ()
    unknown: tuple[UnknownValue, ...] = ()


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise ParseError("not_utf8", raw=payload, detail=str(err)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _json(payload: bytes) -> Any:
    text = _text(payload)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise ParseError("bad_json", raw=payload, detail=str(err)[:200]) from None


def _object(payload: bytes) -> dict[str, Any]:
    obj = _json(payload)
    if not isinstance(obj, dict):
        raise ParseError("bad_shape", raw=payload, detail=f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _num(value: object, what: str, raw: bytes) -> float:
    """A finite float from a JSON number (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParseError("bad_number", raw=raw, detail=f"{what}: {value!r:.60}")
    try:
        out = float(value)
    except OverflowError:
        raise ParseError("bad_number", raw=raw, detail=f"{what}: out of range") from None
    if not math.isfinite(out):
        raise ParseError("bad_number", raw=raw, detail=f"{what}: {out!r}")
    return out


def _text_num(payload: bytes, what: str) -> float:
    """A finite float from a plain-text payload (Shelly Gen1)."""
    text = _text(payload)
    try:
        out = float(text)
    except ValueError:
        raise ParseError("bad_number", raw=payload, detail=f"{what}: {text!r:.60}") from None
    if not math.isfinite(out):
        raise ParseError("bad_number", raw=payload, detail=f"{what}: {text!r:.60}")
    return out


def _measure(device: str, metric: str, value: float, ts: float, raw: bytes, extra: Mapping[str, str]) -> Reading:
    if metric == "energy" and value < 0:
        raise ParseError("bad_number", raw=raw, device=device, detail=f"negative energy counter {value}")
    r = reading(device, "", metric, round(value, 6), ts)
    if extra:
        r = Reading(r.device, r.subject, r.metric, r.value, r.unit, r.ts, dict(extra))
    return r


def _on_off(text: str, raw: bytes, on: tuple[str, ...], off: tuple[str, ...]) -> bool:
    if text in on:
        return True
    if text in off:
        return False
    raise ParseError("bad_state", raw=raw, detail=f"{text!r:.40}")


# ----------------------------------------------------------------------------------------------------------
# family detection
# ----------------------------------------------------------------------------------------------------------


def family_of(topic: str, *, z2m_base: str = _Z2M_BASE) -> Family | None:
    """Which family publishes on ``topic`` (None: none we support)."""
    parts = topic.split("/")
    if len(parts) < 2 or any(p == "" for p in parts):
        return None
    if parts[0] == "tasmota" and len(parts) >= 4 and parts[1] == "discovery":
        return "tasmota"
    if parts[0] == "shellies":
        return "shelly_gen1"
    if topic.startswith(z2m_base + "/"):
        return "zigbee2mqtt"
    if _TASMOTA_COMMAND_RE.match(parts[-1]) and (parts[-1] == "LWT" or _TASMOTA_PREFIXES & set(parts[:-1])):
        return "tasmota"
    if topic.endswith("/events/rpc") or parts[-1] == "online":
        return "shelly_gen2"
    if len(parts) >= 3 and parts[-2] == "status" and _SHELLY2_COMPONENT_RE.match(parts[-1]):
        return "shelly_gen2"
    return None


def decode(topic: str, payload: bytes, *, received_at: float, z2m_base: str = _Z2M_BASE) -> Decoded:
    """Decode one MQTT message from any supported family (see the module docstring)."""
    family = family_of(topic, z2m_base=z2m_base)
    if family is None:
        raise ParseError("unknown_topic", raw=payload, detail=topic[:200])
    if family == "tasmota":
        return _tasmota(topic, payload, received_at)
    if family == "shelly_gen1":
        return _shelly_gen1(topic, payload, received_at)
    if family == "shelly_gen2":
        return _shelly_gen2(topic, payload, received_at)
    return _zigbee2mqtt(topic[len(z2m_base) + 1 :], payload, received_at)


# ----------------------------------------------------------------------------------------------------------
# Tasmota
# ----------------------------------------------------------------------------------------------------------


def _tasmota_key(topic: str) -> tuple[str, str]:
    """(device key, command) from ``tele/pow1/SENSOR`` or a custom FullTopic like ``a/b/pow1/tele/SENSOR``:
    the key is the topic without its prefix segment (``tele``/``stat``) and the command."""
    parts = topic.split("/")
    rest = parts[:-1]
    for i, p in enumerate(rest):
        if p in _TASMOTA_PREFIXES:
            del rest[i]
            break
    return "tasmota:" + "/".join(rest), parts[-1]


def _channels(value: object) -> Iterator[tuple[str, object]]:
    """Tasmota multi-channel values: a scalar (no channel), a list (channels 1..n) or an object (by key)."""
    if isinstance(value, list):
        for i, v in enumerate(value, start=1):
            yield str(i), v
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k), v
    else:
        yield "", value


def _tasmota(topic: str, payload: bytes, ts: float) -> Decoded:
    parts = topic.split("/")
    if parts[0] == "tasmota" and parts[1] == "discovery":
        return _tasmota_discovery(parts, payload)
    key, command = _tasmota_key(topic)
    if command == "LWT":
        # LWT is plain text; Tasmota publishes "Online" retained and sets "Offline" as its MQTT Will.
        text = _text(payload)
        online = _on_off(text, payload, ("Online",), ("Offline",))
        return Decoded("tasmota", states=(StateChange(key, "online", online, text),))
    power_cmd = _TASMOTA_POWER_KEY_RE.match(command)
    if power_cmd:
        text = _text(payload)
        if not text.startswith("{"):  # stat/<topic>/POWER<n> "ON"/"OFF" (plain text)
            state = _on_off(text, payload, ("ON",), ("OFF",))
            dev = key + (f"/{power_cmd.group(1)}" if power_cmd.group(1) else "")
            return Decoded("tasmota", states=(StateChange(dev, "output", state, text),))
    obj = _object(payload)
    states, unknown = _tasmota_power_states(key, obj, payload)
    readings: tuple[Reading, ...] = ()
    if command in ("SENSOR",) or command.startswith("STATUS"):
        body = obj.get("StatusSNS", obj)
        if not isinstance(body, dict):
            raise ParseError("bad_shape", raw=payload, detail="StatusSNS is not an object")
        readings = _tasmota_energy(key, body, payload, ts)
    return _keep_rest(Decoded("tasmota", readings=readings, states=states, unknown=unknown), payload)


def _tasmota_power_states(
    key: str, obj: Mapping[str, Any], raw: bytes
) -> tuple[tuple[StateChange, ...], tuple[UnknownValue, ...]]:
    out: list[StateChange] = []
    unknown: list[UnknownValue] = []
    for k, v in obj.items():
        m = _TASMOTA_POWER_KEY_RE.match(k)
        if m is None:
            continue
        if not isinstance(v, str):
            raise ParseError("bad_state", raw=raw, detail=f"{k}: {v!r:.40}")
        dev = key + (f"/{m.group(1)}" if m.group(1) else "")
        if v in ("ON", "OFF"):
            out.append(StateChange(dev, "output", v == "ON", v))
        else:
            unknown.append(UnknownValue(dev, k, v[:40]))
    return tuple(out), tuple(unknown)


def _keep_rest(dec: Decoded, raw: bytes) -> Decoded:
    """A JSON message with an unknown state word: keep what else it carried, report the word
    (:attr:`Decoded.unknown`). When the unknown word was all the message had for us, it stays a ``bad_state``
    error as before: there is no rest to keep, and a misspelt state ("on" for "ON") is a fault to see."""
    if dec.unknown and not (dec.readings or dec.states or dec.announcements):
        first = dec.unknown[0]
        raise ParseError("bad_state", raw=raw, device=first.device, detail=f"{first.field}: {first.raw!r:.40}")
    return dec


def _tasmota_energy(key: str, body: Mapping[str, Any], raw: bytes, ts: float) -> tuple[Reading, ...]:
    energy = body.get("ENERGY")
    if energy is None:
        return ()  # a SENSOR message of a device without energy monitoring (temperature, ...)
    if not isinstance(energy, dict):
        raise ParseError("bad_shape", raw=raw, device=key, detail="ENERGY is not an object")
    extra: dict[str, str] = {}
    device_time = body.get("Time")
    if isinstance(device_time, str):
        extra["device_time"] = device_time[:40]
    out: list[Reading] = []
    for field_name, (metric, factor) in _TASMOTA_ENERGY.items():
        if field_name not in energy:
            continue
        for channel, value in _channels(energy[field_name]):
            dev = key + (f"/{channel}" if channel else "")
            out.append(_measure(dev, metric, _num(value, field_name, raw) * factor, ts, raw, extra))
    return tuple(out)


def _tasmota_discovery(parts: list[str], payload: bytes) -> Decoded:
    if parts[-1] != "config":
        return Decoded("tasmota")  # .../sensors lists sensor names; nothing to record
    obj = _object(payload)
    topic, full_topic = obj.get("t"), obj.get("ft", "%prefix%/%topic%/")
    if not isinstance(topic, str) or not topic or not isinstance(full_topic, str):
        raise ParseError("bad_shape", raw=payload, detail="discovery config needs strings 't' and 'ft'")
    mac = str(obj.get("mac", parts[2]))
    hostname = str(obj.get("hn", ""))
    # FullTopic tokens (Tasmota docs): %prefix%, %topic%, %hostname%, %id% (last 6 hex digits of the MAC).
    path = full_topic.replace("%topic%", topic).replace("%hostname%", hostname).replace("%id%", mac[-6:])
    segments = [s for s in path.split("/") if s and s != "%prefix%"]
    names = obj.get("fn")
    name = str(obj.get("dn") or (names[0] if isinstance(names, list) and names else "") or "")
    ann = Announcement(
        "tasmota",
        "tasmota:" + "/".join(segments),
        model=str(obj.get("md", "")),
        mac=mac,
        ip=str(obj.get("ip", "")),
        name=name,
        firmware=str(obj.get("sw", "")),
    )
    return Decoded("tasmota", announcements=(ann,))


# ----------------------------------------------------------------------------------------------------------
# Shelly Gen1
# ----------------------------------------------------------------------------------------------------------


def _shelly_announce(obj: Mapping[str, Any], raw: bytes, family: Family) -> Announcement:
    dev_id = obj.get("id")
    if not isinstance(dev_id, str) or not dev_id:
        raise ParseError("bad_shape", raw=raw, detail="announce without a string 'id'")
    return Announcement(
        family,
        f"shelly:{dev_id}",
        model=str(obj.get("model", "")),
        mac=str(obj.get("mac", "")),
        ip=str(obj.get("ip", "")),
        firmware=str(obj.get("fw_ver", obj.get("fw", ""))),
    )


def _shelly_gen1(topic: str, payload: bytes, ts: float) -> Decoded:
    parts = topic.split("/")
    if parts[1:] == ["announce"] or parts[2:] == ["announce"]:
        return Decoded("shelly_gen1", announcements=(_shelly_announce(_object(payload), payload, "shelly_gen1"),))
    if len(parts) < 3:
        return Decoded("shelly_gen1")
    key, rest = f"shelly:{parts[1]}", parts[2:]
    if rest == ["online"]:
        text = _text(payload)
        return Decoded(
            "shelly_gen1", states=(StateChange(key, "online", _on_off(text, payload, ("true",), ("false",)), text),)
        )
    if rest[0] == "relay" and len(rest) >= 2 and rest[1].isdigit():
        dev = f"{key}/{rest[1]}"
        if len(rest) == 2:  # relay state: on | off | overpower (tripped, output off)
            text = _text(payload)
            state = _on_off(text, payload, ("on",), ("off", "overpower"))
            return Decoded("shelly_gen1", states=(StateChange(dev, "output", state, text),))
        if rest[2:] == ["power"]:
            return Decoded(
                "shelly_gen1", readings=(_measure(dev, "power", _text_num(payload, "power"), ts, payload, {}),)
            )
        if rest[2:] == ["energy"]:
            wmin = _text_num(payload, "energy")
            return Decoded("shelly_gen1", readings=(_measure(dev, "energy", wmin / _WMIN_PER_WH, ts, payload, {}),))
        return Decoded("shelly_gen1")
    if rest[0] == "emeter" and len(rest) == 3 and rest[1].isdigit():
        # Shelly EM / 3EM: emeter/<n>/total is in Wh (emeter/<n>/energy, in watt-minutes, resets on reboot).
        dev = f"{key}/emeter:{rest[1]}"
        metric = {"power": "power", "voltage": "voltage", "current": "current", "total": "energy"}.get(rest[2])
        if metric is None:
            return Decoded("shelly_gen1")
        return Decoded("shelly_gen1", readings=(_measure(dev, metric, _text_num(payload, rest[2]), ts, payload, {}),))
    return Decoded("shelly_gen1")  # temperature, overtemperature, overpower_value, info, ...


# ----------------------------------------------------------------------------------------------------------
# Shelly Gen2/3/4
# ----------------------------------------------------------------------------------------------------------


def _shelly_component(
    key: str, component: str, status: object, raw: bytes, ts: float, extra: Mapping[str, str]
) -> list[Reading]:
    m = _SHELLY2_COMPONENT_RE.match(component)
    if m is None:
        return []
    if not isinstance(status, dict):
        raise ParseError("bad_shape", raw=raw, device=key, detail=f"{component} is not an object")
    kind, idx = m.groups()
    dev = f"{key}/{idx}" if kind == "switch" else f"{key}/{kind}:{idx}"
    out = []
    for name, metric in (("apower", "power"), ("voltage", "voltage"), ("current", "current")):
        if name in status:
            out.append(_measure(dev, metric, _num(status[name], name, raw), ts, raw, extra))
    if "aenergy" in status:
        aenergy = status["aenergy"]
        if not isinstance(aenergy, dict):
            raise ParseError("bad_shape", raw=raw, device=dev, detail="aenergy is not an object")
        if "total" in aenergy:  # aenergy.total: Wh since the device's counter was last reset
            out.append(_measure(dev, "energy", _num(aenergy["total"], "aenergy.total", raw), ts, raw, extra))
    return out


def _shelly_output(key: str, component: str, status: object) -> list[StateChange]:
    m = _SHELLY2_COMPONENT_RE.match(component)
    if m is None or m.group(1) != "switch" or not isinstance(status, dict):
        return []
    output = status.get("output")
    if not isinstance(output, bool):
        return []
    return [StateChange(f"{key}/{m.group(2)}", "output", output, str(output).lower())]


def _shelly_gen2(topic: str, payload: bytes, ts: float) -> Decoded:
    parts = topic.split("/")
    if parts[-1] == "online":  # <prefix>/online: "true" / "false" (also the MQTT Will)
        key = "shelly:" + "/".join(parts[:-1])
        text = _text(payload)
        return Decoded(
            "shelly_gen2", states=(StateChange(key, "online", _on_off(text, payload, ("true",), ("false",)), text),)
        )
    if topic.endswith("/events/rpc"):
        key = "shelly:" + "/".join(parts[:-2])
        obj = _object(payload)
        method = obj.get("method")
        if method not in ("NotifyStatus", "NotifyFullStatus"):
            return Decoded("shelly_gen2")  # NotifyEvent (button presses, ...) and RPC traffic
        params = obj.get("params")
        if not isinstance(params, dict):
            raise ParseError("bad_shape", raw=payload, device=key, detail="params is not an object")
        extra: dict[str, str] = {}
        if "ts" in params:  # params.ts: device's Unix time (UTC) of the notification
            extra["device_time"] = repr(_num(params["ts"], "params.ts", payload))
        readings: list[Reading] = []
        states: list[StateChange] = []
        for comp, status in params.items():
            readings += _shelly_component(key, comp, status, payload, ts, extra)
            states += _shelly_output(key, comp, status)
        return Decoded("shelly_gen2", readings=tuple(readings), states=tuple(states))
    # <prefix>/status/<component>: the full status of one component (published when status_ntf is set)
    key = "shelly:" + "/".join(parts[:-2])
    status = _object(payload)
    return Decoded(
        "shelly_gen2",
        readings=tuple(_shelly_component(key, parts[-1], status, payload, ts, {})),
        states=tuple(_shelly_output(key, parts[-1], status)),
    )


# ----------------------------------------------------------------------------------------------------------
# Zigbee2MQTT
# ----------------------------------------------------------------------------------------------------------


def _exposes_energy(exposes: object, depth: int = 0) -> bool:
    """True if a Z2M ``exposes`` list (features may nest) has a ``power`` or ``energy`` property."""
    if depth > 4 or not isinstance(exposes, list):
        return False
    for item in exposes:
        if isinstance(item, dict):
            if item.get("property") in ("power", "energy"):
                return True
            if _exposes_energy(item.get("features"), depth + 1):
                return True
    return False


def _z2m_devices(payload: bytes) -> Decoded:
    devices = _json(payload)
    if not isinstance(devices, list):
        raise ParseError("bad_shape", raw=payload, detail="bridge/devices is not a list")
    anns = []
    for dev in devices:
        if not isinstance(dev, dict) or not isinstance(dev.get("friendly_name"), str):
            continue
        definition = dev.get("definition")
        if not isinstance(definition, dict) or not _exposes_energy(definition.get("exposes")):
            continue
        anns.append(
            Announcement(
                "zigbee2mqtt",
                "z2m:" + dev["friendly_name"],
                model=str(definition.get("model", "")),
                mac=str(dev.get("ieee_address", "")),
                name=str(definition.get("vendor", "")),
                firmware=str(dev.get("software_build_id") or ""),
            )
        )
    return Decoded("zigbee2mqtt", announcements=tuple(anns))


def _zigbee2mqtt(name: str, payload: bytes, ts: float) -> Decoded:
    if name == "bridge/devices":
        return _z2m_devices(payload)
    if name.startswith("bridge/") or name.endswith(("/set", "/get")) or "/set/" in name:
        return Decoded("zigbee2mqtt")
    if name.endswith("/availability"):
        key = "z2m:" + name[: -len("/availability")]
        text = _text(payload)
        if text.startswith("{"):  # Z2M >= 1.30: {"state": "online"}; before: plain text
            value = _object(payload).get("state")
            text = value if isinstance(value, str) else repr(value)
        return Decoded(
            "zigbee2mqtt", states=(StateChange(key, "online", _on_off(text, payload, ("online",), ("offline",)), text),)
        )
    key = "z2m:" + name
    obj = _object(payload)
    readings = []
    for field_name, (metric, factor) in _Z2M_FIELDS.items():
        value = obj.get(field_name)
        if value is None:  # absent until the device first reports it; null after a failed poll
            continue
        readings.append(_measure(key, metric, _num(value, field_name, payload) * factor, ts, payload, {}))
    states: list[StateChange] = []
    unknown: list[UnknownValue] = []
    if "state" in obj:
        state = obj["state"]
        if not isinstance(state, str):
            raise ParseError("bad_state", raw=payload, device=key, detail=f"state: {state!r:.40}")
        if state in ("ON", "OFF"):
            states.append(StateChange(key, "output", state == "ON", state))
        else:
            unknown.append(UnknownValue(key, "state", state[:40]))
    dec = Decoded("zigbee2mqtt", readings=tuple(readings), states=tuple(states), unknown=tuple(unknown))
    return _keep_rest(dec, payload)

"""Plug decoders: every shared real/constructed payload -> the full expected readings; bad input -> ParseError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.counter import MonotonicCounter
from drivers.plugs.parse import REASONS, Announcement, StateChange, decode
from drivers.plugs.session import PlugSession
from kyojo.contract.vocab import ParseError, Reading, reading
from tests import kit

DATA = kit.DATA / "plugs"
TS = 1_762_082_665.0


def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def R(device: str, metric: str, value: float) -> Reading:
    return reading(device, "", metric, value, TS)


def PVCE(dev: str, p: float, v: float | None, c: float | None, e: float | None) -> list[Reading]:
    """power, voltage, current, energy (in that order, skipping None)."""
    out = [R(dev, "power", p)]
    out += [R(dev, "voltage", v)] if v is not None else []
    out += [R(dev, "current", c)] if c is not None else []
    out += [R(dev, "energy", e)] if e is not None else []
    return out


TASMOTA = _load("tasmota.json")["messages"]
DENKY = "tasmota:emoncms/ch2i/factory/denky_D6C0C0"
# (readings, states) expected for each message of tasmota.json, in file order.
TASMOTA_EXPECTED: list[tuple[list[Reading], list[StateChange]]] = [
    (PVCE("tasmota:pow1", 2635, 227, 11.661, 6294.0), []),  # Total 6.294 kWh
    (PVCE("tasmota:pow1", 2629, 226, 11.677, 6404.0), []),  # StatusSNS wrapper
    ([R(DENKY, "power", 170), R(DENKY, "current", 1.0), R(DENKY, "energy", 9_098_245.0)], []),  # "Period": 9
    ([R(DENKY, "power", 190), R(DENKY, "current", 1.0), R(DENKY, "energy", 9_098_255.0)], []),
    ([R(DENKY, "power", 170), R(DENKY, "current", 1.0), R(DENKY, "energy", 9_098_265.0)], []),
    ([], [StateChange("tasmota:tasmota_XXXXXX", "online", True, "Online")]),
    ([], [StateChange("tasmota:state/sonoff", "online", False, "Offline")]),
    ([], [StateChange("tasmota:demo-sensor", "output", True, "ON")]),  # {"POWER":"ON"}
    ([], [StateChange("tasmota:demo-sensor", "output", True, "ON")]),  # ON (plain)
    ([], [StateChange("tasmota:demo-sensor", "output", True, "ON")]),  # STATE
    (PVCE("tasmota:tasmota_XXXXXX", 0.0, 234.31, 0.039, 17.0), []),  # tariffs as arrays are ignored
    ([R("tasmota:tasmota_XXXXXX/1", "energy", 1200.0), R("tasmota:tasmota_XXXXXX/2", "energy", 3400.0)], []),
    ([R("tasmota:tasmota_XXXXXX/Phase1", "energy", 1200.0), R("tasmota:tasmota_XXXXXX/Phase2", "energy", 3400.0)], []),
    ([], []),  # only ApparentPower per channel: nothing in our vocabulary
    ([R("tasmota:tasmota_XXXXXX", "energy", 5600.0)], []),  # STATUS10
]

GEN1 = _load("shelly_gen1.json")["messages"]
PLUG_S = "shelly:shellyplug-s-C45BBE"
GEN1_EXPECTED: list[tuple[list[Reading], list[StateChange]]] = [
    ([], [StateChange(PLUG_S, "online", True, "true")]),
    ([], [StateChange(f"{PLUG_S}/0", "output", True, "on")]),
    ([R(f"{PLUG_S}/0", "power", 12.34)], []),
    ([R(f"{PLUG_S}/0", "energy", 2057.6)], []),  # 123456 watt-minutes / 60
    ([], []),  # overpower_value
    ([], []),  # temperature
    ([], []),  # overtemperature
]


#: the Shelly Gen2+ device dumps, one file per device (``<model>_<fw>.json``; the cover-profile excerpt has no firmware)
GEN2_FILES = ("S4PL-00416EU_1.8.99-dev134818.json", "S3SW-002P16EU_1.6.1.json", "shelly_gen2plus.json")


def _gen2_cases() -> list[tuple[str, bytes, list[Reading], list[StateChange]]]:
    records = [record for name in GEN2_FILES for record in _load(name)["records"]]
    strip, pm2 = "shelly:shellypstripg4-aabbccddeeff", "shelly:shelly2pmg3-aabbccddeeff"
    expected = {
        (0, "switch:0"): PVCE(f"{strip}/0", 0.0, 232.5, 0.017, 6468.282),  # apower 0 at 0.017 A: quirk 4
        (0, "switch:1"): PVCE(f"{strip}/1", 1.7, 232.6, 0.017, 4227.56),
        (0, "switch:2"): PVCE(f"{strip}/2", 0.0, 231.2, 0.0, 336.76),
        (0, "switch:3"): PVCE(f"{strip}/3", 15.4, 231.2, 0.169, 18440.297),
        (1, "switch:0"): PVCE(f"{pm2}/0", 0.0, 216.2, 0.0, 0.0),
        (1, "switch:1"): PVCE(f"{pm2}/1", 0.0, 216.3, 0.0, 0.0),
        (2, "cover:0"): PVCE(f"{pm2}/cover:0", 0.0, 219.2, 0.0, 314.614),  # cover profile: same meter
    }
    outputs = {(0, 0): True, (0, 1): True, (0, 2): False, (0, 3): True, (1, 0): False, (1, 1): False}
    cases = []
    for i, record in enumerate(records):
        prefix = record.get("device", {}).get("id", "shelly2pmg3-aabbccddeeff")
        for comp, status in record["status"].items():
            if comp == "sys":
                continue
            idx = int(comp.split(":")[1])
            states = (
                [StateChange(f"shelly:{prefix}/{idx}", "output", outputs[i, idx], str(outputs[i, idx]).lower())]
                if comp.startswith("switch")
                else []
            )
            topic = f"{prefix}/status/{comp}"
            cases.append((topic, json.dumps(status).encode(), expected[i, comp], states))
    notify = _load(GEN2_FILES[0])["notify_status_example"]  # constructed from the power strip's switch:3
    cases.append(
        (
            notify["topic"],
            json.dumps(notify["payload"]).encode(),
            PVCE(f"{strip}/3", 15.4, 231.2, 0.169, 18440.297),
            [],
        )
    )
    return cases


GEN2_CASES = _gen2_cases()
Z2M = _load("zigbee2mqtt.json")["example_payload"]


def _check(topic: str, payload: bytes, readings: list[Reading], states: list[StateChange]) -> None:
    dec = decode(topic, payload, received_at=TS)
    assert list(dec.readings) == readings
    assert list(dec.states) == states
    for r in dec.readings:
        assert r.unit == {"power": "W", "energy": "Wh", "voltage": "V", "current": "A"}[r.metric]


@pytest.mark.parametrize(
    ("msg", "expected"), list(zip(TASMOTA, TASMOTA_EXPECTED, strict=True)), ids=[m["topic"] for m in TASMOTA]
)
def test_tasmota_payloads(msg: dict[str, Any], expected: tuple[list[Reading], list[StateChange]]) -> None:
    _check(msg["topic"], msg["payload"].encode(), *expected)


@pytest.mark.parametrize(
    ("msg", "expected"), list(zip(GEN1, GEN1_EXPECTED, strict=True)), ids=[m["topic"] for m in GEN1]
)
def test_shelly_gen1_payloads(msg: dict[str, Any], expected: tuple[list[Reading], list[StateChange]]) -> None:
    _check(msg["topic"], msg["payload"].encode(), *expected)


@pytest.mark.parametrize(("topic", "payload", "readings", "states"), GEN2_CASES, ids=[c[0] for c in GEN2_CASES])
def test_shelly_gen2_payloads(topic: str, payload: bytes, readings: list[Reading], states: list[StateChange]) -> None:
    _check(topic, payload, readings, states)


def test_zigbee2mqtt_payload() -> None:
    key = "z2m:kitchen_kettle_plug"
    _check(
        Z2M["topic"],
        json.dumps(Z2M["payload"]).encode(),
        PVCE(key, 1834, 231, 7.92, 12_370.0),  # energy 12.37 kWh
        [StateChange(key, "output", True, "ON")],
    )


def test_device_time_is_kept_but_not_trusted() -> None:
    msg = TASMOTA[0]  # Time 2018-02-15 earlier than TotalStartTime 2018-11-14 (quirk 2)
    dec = decode(msg["topic"], msg["payload"].encode(), received_at=TS)
    assert all(r.ts == TS and r.extra["device_time"] == "2018-02-15T17:37:10" for r in dec.readings)


def test_shelly_notify_status_is_partial() -> None:
    """NotifyStatus carries only changed keys: a power-only delta yields power only, no zero energy."""
    payload = {"src": "shellyplugsg3-x", "method": "NotifyStatus", "params": {"ts": 1.5, "switch:0": {"apower": 3.2}}}
    dec = decode("shellyplugsg3-x/events/rpc", json.dumps(payload).encode(), received_at=TS)
    assert dec.readings == (R("shelly:shellyplugsg3-x/0", "power", 3.2),)
    other = {"src": "x", "method": "NotifyEvent", "params": {"events": []}}
    assert decode("x/events/rpc", json.dumps(other).encode(), received_at=TS).readings == ()


def test_z2m_missing_and_null_fields_and_availability() -> None:
    dec = decode("zigbee2mqtt/a/b plug", b'{"power": null, "linkquality": 12}', received_at=TS)
    assert dec.readings == () and dec.states == ()
    assert decode("zigbee2mqtt/a/b plug/availability", b'{"state":"offline"}', received_at=TS).states == (
        StateChange("z2m:a/b plug", "online", False, "offline"),
    )
    assert decode("zigbee2mqtt/p/availability", b"online", received_at=TS).states[0].value is True
    assert decode("zigbee2mqtt/p/set", b"{}", received_at=TS).readings == ()


def test_discovery_announcements() -> None:
    cfg = {"ip": "192.0.2.7", "dn": "Kettle", "fn": ["Kettle"], "hn": "tasmota-5A3C7F", "mac": "A4CF125A3C7F",
           "md": "Sonoff Pow R2", "t": "tasmota_5A3C7F", "ft": "%prefix%/%topic%/", "sw": "13.2.0"}  # fmt: skip
    dec = decode("tasmota/discovery/A4CF125A3C7F/config", json.dumps(cfg).encode(), received_at=TS)
    assert dec.announcements == (
        Announcement(
            "tasmota", "tasmota:tasmota_5A3C7F", "Sonoff Pow R2", "A4CF125A3C7F", "192.0.2.7", "Kettle", "13.2.0"
        ),
    )
    custom = {**cfg, "ft": "emoncms/ch2i/factory/%topic%/%prefix%/", "t": "denky_D6C0C0"}
    dec = decode("tasmota/discovery/A4CF125A3C7F/config", json.dumps(custom).encode(), received_at=TS)
    assert dec.announcements[0].device == DENKY  # same key as its readings on a custom FullTopic
    ann = {"id": "shellyplug-s-C45BBE", "model": "SHPLG-S", "mac": "C45BBE", "ip": "192.0.2.8", "fw_ver": "1.14"}
    dec = decode("shellies/announce", json.dumps(ann).encode(), received_at=TS)
    assert dec.announcements[0].device == PLUG_S and dec.announcements[0].model == "SHPLG-S"
    devices = [
        {"friendly_name": "Coordinator", "type": "Coordinator"},
        {"friendly_name": "kettle", "ieee_address": "0xa4c1", "definition": {"model": "TS011F_plug_1", "vendor": "Tuya",
         "exposes": [{"type": "switch", "features": [{"property": "state"}]}, {"property": "energy"}]}},
        {"friendly_name": "door", "definition": {"model": "MCCGQ11LM", "exposes": [{"property": "contact"}]}},
    ]  # fmt: skip
    dec = decode("zigbee2mqtt/bridge/devices", json.dumps(devices).encode(), received_at=TS)
    assert [a.device for a in dec.announcements] == ["z2m:kettle"]


MALFORMED = [
    ("nope", b"1", "unknown_topic"),
    ("home/livingroom/temperature", b"21.5", "unknown_topic"),
    ("tele/pow1/SENSOR", b"\xff\xfe", "not_utf8"),
    ("tele/pow1/SENSOR", b'{"ENERGY":{"Power":', "bad_json"),
    ("tele/pow1/SENSOR", b'{"ENERGY":{"Power":NaN}}', "bad_json"),
    ("tele/pow1/SENSOR", b"[1,2]", "bad_shape"),
    ("tele/pow1/SENSOR", b'{"ENERGY":[1]}', "bad_shape"),
    ("tele/pow1/SENSOR", b'{"ENERGY":{"Power":"12"}}', "bad_number"),
    ("tele/pow1/SENSOR", b'{"ENERGY":{"Total":-1.0}}', "bad_number"),
    ("tele/pow1/SENSOR", b'{"ENERGY":{"Power":1e999}}', "bad_number"),
    ("tele/pow1/LWT", b"online", "bad_state"),
    ("shellies/shellyplug-s-1/relay/0/energy", b"12a", "bad_number"),
    ("shellies/shellyplug-s-1/relay/0", b"ON", "bad_state"),
    ("shellyplus-1/status/switch:0", b'{"aenergy": 5}', "bad_shape"),
    ("shellyplus-1/events/rpc", b'{"method":"NotifyStatus","params":[]}', "bad_shape"),
    ("zigbee2mqtt/plug", b'{"energy": true}', "bad_number"),
    ("zigbee2mqtt/plug", b'{"state": "on"}', "bad_state"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), MALFORMED)
def test_malformed_has_stable_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        decode(topic, payload, received_at=TS)
    assert info.value.reason == reason
    assert reason in REASONS


TOPICS = st.sampled_from(
    [
        "tele/pow1/SENSOR", "stat/pow1/STATUS8", "tele/pow1/STATE", "tele/pow1/LWT", "stat/pow1/POWER2",
        "stat/pow1/RESULT", "tasmota/discovery/AA/config", "shellies/announce", "shellies/x/online",
        "shellies/x/relay/0", "shellies/x/relay/0/power", "shellies/x/relay/1/energy", "shellies/x/emeter/0/total",
        "x/events/rpc", "x/status/switch:0", "x/status/cover:1", "x/online", "zigbee2mqtt/p",
        "zigbee2mqtt/p/availability", "zigbee2mqtt/bridge/devices",
    ]
) | st.text(max_size=40)  # fmt: skip
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["ENERGY", "Power", "Total", "POWER", "StatusSNS", "switch:0", "apower", "aenergy", "total",
                         "params", "method", "t", "ft", "id", "power", "energy", "state", "friendly_name"]),
        inner,
        max_size=4,
    ),
    max_leaves=12,
)  # fmt: skip
PAYLOADS = st.binary(max_size=64) | JSONISH.map(lambda v: json.dumps(v).encode())


@settings(max_examples=400, deadline=None)
@given(topic=TOPICS, payload=PAYLOADS)
def test_random_input_raises_only_parse_error(topic: str, payload: bytes) -> None:
    reason = None
    try:
        decode(topic, payload, received_at=TS)
    except ParseError as err:
        reason = err.reason
    assert reason is None or reason in REASONS


@settings(max_examples=200, deadline=None)
@given(topic=TOPICS, payload=PAYLOADS)
def test_session_never_raises(topic: str, payload: bytes) -> None:
    PlugSession("home1", {}).feed(topic, payload, TS)


# ---------------------------------------------------------------------------------------------------------
# counters: resets and roll-overs give neither negative nor doubled energy
# ---------------------------------------------------------------------------------------------------------


def test_counter_reset_keeps_cumulative_monotonic() -> None:
    c = MonotonicCounter()
    assert [c.update(v) for v in (100.0, 150.0, 5.0, 20.0, 0.0, 7.0)] == [100.0, 150.0, 155.0, 170.0, 170.0, 177.0]
    assert c.resets == 2 and c.last_raw == 7.0


def test_counter_rollover_with_modulus() -> None:
    c = MonotonicCounter(modulus=100_000)
    assert [c.update(v) for v in (99_990, 99_999, 3, 10)] == [99_990, 99_999, 100_003, 100_010]


def test_counter_replayed_value_and_noise_hold() -> None:
    c = MonotonicCounter(tolerance=0.01)
    assert [c.update(v) for v in (10.0, 10.0, 9.995, 10.5)] == [10.0, 10.0, 10.0, 10.5]
    assert c.resets == 0


def test_counter_state_roundtrip() -> None:
    c = MonotonicCounter()
    c.update(50.0)
    c.update(1.0)
    d = MonotonicCounter()
    d.restore(c.to_dict())
    assert d.update(2.0) == c.update(2.0) == 52.0


def test_session_gen1_reboot_and_mapping() -> None:
    """Shelly Gen1 watt-minute counter restarts at 0 on reboot: energy keeps rising, raw kept in extra."""
    s = PlugSession("home1", {f"{PLUG_S}/0": "fridge"})
    out = []
    for t, wmin in enumerate((6000, 6600, 60, 120)):
        out += s.feed("shellies/shellyplug-s-C45BBE/relay/0/energy", str(wmin).encode(), TS + t)
    assert [r.value for r in out] == [100.0, 110.0, 111.0, 112.0]
    assert {r.device for r in out} == {"home1-fridge"} and {r.subject for r in out} == {"home1"}
    assert out[2].extra["raw_energy_wh"] == "1.0" and out[2].extra["resets"] == "1"
    assert s.feed("shellies/other/relay/0/power", b"5", TS) == []
    assert [u.device for u in s.unpaired()] == ["shelly:other/0"]
    s.feed("tele/pow1/LWT", b"nonsense", TS)
    assert s.errors["bad_state"] == 1


def test_session_z2m_energy_reset() -> None:
    """TS011F energy reset from the dev console (quirk 7): 12.37 kWh -> 0 -> 0.01 kWh."""
    s = PlugSession("home1", {"z2m:kettle": "kettle"})
    vals = []
    for kwh in (12.37, 12.38, 0.0, 0.01):
        rs = s.feed("zigbee2mqtt/kettle", json.dumps({"energy": kwh}).encode(), TS)
        vals += [r.value for r in rs]
    assert vals == [12370.0, 12380.0, 12380.0, 12390.0]

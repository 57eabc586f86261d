"""An unknown enumerated value is not a reason to drop the rest of a plug message (issue 20, section 4).

Plug JSON has no "reserved for future use" clause; the closest is a state word a family does not define (a
Zigbee2MQTT ``state`` other than ON/OFF, a Tasmota ``POWER<n>`` other than ON/OFF). Such a word is reported
(:attr:`Decoded.unknown`, counted as ``reserved_values``) and the readings and other states of the same message
are kept. A message whose only content is such a word is still ``bad_state`` (nothing to keep; the existing
``("zigbee2mqtt/plug", b'{"state": "on"}', "bad_state")`` case), and a non-string state stays ``bad_state``.
Unknown keys were already ignored; that is checked here on the real payloads too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from drivers.plugs.parse import UnknownValue, decode
from drivers.plugs.session import PlugSession
from kyojo.contract.vocab import ParseError
from tests.kit import DATA

Z2M: dict[str, Any] = json.loads((DATA / "plugs" / "zigbee2mqtt.json").read_text(encoding="utf-8"))["example_payload"]
TASMOTA: list[dict[str, Any]] = json.loads((DATA / "plugs" / "tasmota.json").read_text(encoding="utf-8"))["messages"]
STATE = next(m for m in TASMOTA if m["topic"] == "tele/demo-sensor/STATE")


def _z2m(**changes: object) -> bytes:
    return json.dumps({**Z2M["payload"], **changes}).encode()


def test_z2m_unknown_state_keeps_the_readings() -> None:
    dec = decode(Z2M["topic"], _z2m(state="TOGGLE"), received_at=5.0)
    assert {r.metric: r.value for r in dec.readings} == {
        "power": 1834.0,
        "current": 7.92,
        "voltage": 231.0,
        "energy": 12370.0,
    }
    assert dec.states == ()
    assert dec.unknown == (UnknownValue("z2m:kitchen_kettle_plug", "state", "TOGGLE"),)
    same = decode(Z2M["topic"], _z2m(), received_at=5.0)
    assert same.readings == dec.readings and same.unknown == ()  # the capture itself: nothing unknown


def test_z2m_unknown_keys_and_enum_values_are_ignored() -> None:
    # child_lock / indicator_mode / power_outage_memory are enums we do not use: a new value is not our business
    dec = decode(Z2M["topic"], _z2m(indicator_mode="rainbow", child_lock="MAYBE", new_key={"x": 1}), received_at=5.0)
    assert len(dec.readings) == 4 and dec.states[0].value is True and dec.unknown == ()


def test_tasmota_unknown_power_word_keeps_the_other_relay() -> None:
    payload = json.loads(STATE["payload"])
    del payload["POWER"]
    payload.update({"POWER1": "ON", "POWER2": "BLINK"})  # a two-relay device (constructed from the capture)
    dec = decode("tele/demo-sensor/STATE", json.dumps(payload).encode(), received_at=5.0)
    assert [(s.device, s.value) for s in dec.states] == [("tasmota:demo-sensor/1", True)]
    assert dec.unknown == (UnknownValue("tasmota:demo-sensor/2", "POWER2", "BLINK"),)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        # the unknown word is all the message had for us: still refused, as before
        ("tele/demo-sensor/STATE", STATE["payload"].replace('"POWER":"ON"', '"POWER":"BLINK"').encode()),
        (Z2M["topic"], b'{"state": "on"}'),
        # not a word at all: a malformed message, refused whatever else it carries
        (Z2M["topic"], _z2m(state=1)),
        ("tele/demo-sensor/STATE", STATE["payload"].replace('"POWER":"ON"', '"POWER":true').encode()),
        # plain-text single-value messages: the value is the message
        ("tele/pow1/LWT", b"online"),
    ],
)
def test_invalid_states_are_still_refused(topic: str, payload: bytes) -> None:
    with pytest.raises(ParseError) as info:
        decode(topic, payload, received_at=0.0)
    assert info.value.reason == "bad_state"


def test_session_counts_unknown_values_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    session = PlugSession("home-1", {"z2m:kitchen_kettle_plug": "kettle"})
    with caplog.at_level(logging.INFO, logger="drivers.plugs.session"):
        for i in range(25):
            out = session.feed(Z2M["topic"], _z2m(state="TOGGLE", energy=12.37 + i / 1000), float(i * 10))
            assert {r.metric for r in out} >= {"power", "current", "voltage"}
    assert session.reserved_values == {"zigbee2mqtt:state": 25}
    assert session.errors == {}
    assert "z2m:kitchen_kettle_plug" not in session.states  # an unknown word is not an on/off state
    assert len([r for r in caplog.records if "unknown state" in r.getMessage()]) == 1

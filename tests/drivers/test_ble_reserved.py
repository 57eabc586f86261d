"""A reserved value is not an error (issue 20, section 4): BLE characteristics.

Each case starts from a curated vector (``tests/data/ble/vectors.json``, id in the comment) and changes only the
field the specification reserves for future use; the rest of the value must decode exactly as the vector says,
and the reserved value must be reported. Values the specification makes invalid (truncation, wrong lengths,
RR bytes that do not pair up) are still refused with their typed errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from drivers.ble import convert, gatt, racp
from drivers.ble.cli import register
from drivers.ble.driver import BleDriver
from drivers.ble.errors import BadLength, BleParseError, Inconsistent, TrailingBytes, Truncated
from tests.kit import DATA

VECTORS: dict[str, dict[str, Any]] = {
    v["id"]: v for v in json.loads((DATA / "ble" / "vectors.json").read_text(encoding="utf-8"))
}


def _patched(vector_id: str, offset: int, value: int) -> tuple[int, bytes, dict[str, Any]]:
    """The vector's characteristic, its bytes with the one byte at ``offset`` replaced, and its expected JSON."""
    vector = VECTORS[vector_id]
    data = bytearray.fromhex(vector["hex"])
    data[offset] = value
    expected = {k: v for k, v in vector["expected"].items() if k != "valid"}
    return int(vector["characteristic_uuid"], 16), bytes(data), expected


# (vector, byte offset, new byte, fields of the vector's expected JSON that change, reserved values reported)
CASES: list[tuple[str, int, int, dict[str, Any], dict[str, int]]] = [
    # Heart Rate Measurement: Flags bits 5-7 RFU (dev-003: HR 85, contact, EE 50, RR 33)
    ("dev-003", 0, 0x1E | 0xE0, {"flags": 0xFE}, {"flags": 0xE0}),
    # Blood Pressure Measurement: Flags bit 7 RFU (dev-014)
    ("dev-014", 0, 0x9E, {"flags": 0x9E}, {"flags": 0x80}),
    # Temperature Measurement: Temperature Type 0x2A (RFU: 1..9 defined) (dev-017)
    ("dev-017", 12, 0x2A, {"temperature_type": 0x2A, "temperature_type_name": "reserved"}, {"temperature_type": 42}),
    # Temperature Measurement: Flags bit 3 RFU (dev-017)
    ("dev-017", 0, 0x0E, {"flags": 0x0E}, {"flags": 0x08}),
    # Weight Measurement: Flags bits 4-7 RFU (dev-028)
    ("dev-028", 0, 0xF0, {"flags": 0xF0}, {"flags": 0xF0}),
    # PLX Continuous: Flags bit 7 RFU (dev-025)
    ("dev-025", 0, 0x80, {"flags": 0x80}, {"flags": 0x80}),
    # Current Time: Day of Week 9 (8..255 RFU) (dev-046)
    ("dev-046", 7, 9, {"day_of_week": 9, "day_of_week_name": "reserved"}, {"day_of_week": 9}),
    # Current Time: Adjust Reason bit 6 RFU (dev-046)
    ("dev-046", 9, 0x41, {"adjust_reason": None}, {"adjust_reason": 0x40}),
    # Date Time: month 13 (1..12 defined, 0 unknown, the rest RFU) (dev-041)
    ("dev-041", 2, 13, {"month": 13}, {"month": 13}),
]


@pytest.mark.parametrize(("vector_id", "offset", "byte", "changed", "reserved"), CASES)
def test_reserved_value_keeps_the_rest(
    vector_id: str, offset: int, byte: int, changed: dict[str, Any], reserved: dict[str, int]
) -> None:
    uuid, data, expected = _patched(vector_id, offset, byte)
    value = gatt.decode(uuid, data)  # not refused
    got = gatt.as_json(value)
    for key, want in expected.items():
        if key in changed:
            if changed[key] is not None:
                assert got[key] == changed[key], key
        else:
            assert got[key] == want or json.dumps(got[key]) == json.dumps(want), key
    assert gatt.reserved_values(value) == reserved
    # the vector shape stays exactly the vectors' by default; --reserved adds one object
    assert "reserved" not in got
    with_reserved = gatt.as_json(value, reserved=True)
    assert with_reserved.get("reserved", {}) == reserved


def test_reserved_year_and_timestamp_in_a_measurement() -> None:
    """A reserved Time Stamp value (month 13) in a blood pressure measurement: the pressures and pulse are
    still Readings, the device time is left out (not a usable time), the value is reported."""
    uuid, data, _ = _patched("dev-014", 9, 13)  # dev-014: time stamp 0000-04-17 -> month 13
    value = gatt.decode(uuid, data)
    assert isinstance(value, gatt.BloodPressureMeasurement)
    assert value.timestamp is not None and value.timestamp.month == 13
    assert value.timestamp.to_datetime() is None
    assert (value.systolic, value.diastolic, value.mean_arterial_pressure) == (138.0, 88.0, 120.0)
    assert gatt.reserved_values(value) == {"timestamp.month": 13}
    conv = convert.to_readings(value, device="d", subject="s", ts=0.0)
    assert {r.metric for r in conv.readings} == {"systolic", "diastolic", "mean_arterial_pressure", "pulse_rate"}
    assert all("device_time" not in r.extra for r in conv.readings)
    year = gatt.decode(0x2A08, bytes.fromhex("e80304110f3300"))  # year 1000: RFU
    assert isinstance(year, gatt.DateTime)
    assert gatt.reserved_values(year) == {"year": 1000}
    assert year.to_datetime() is None


def test_blood_pressure_status_reserved_bits_and_pulse_range() -> None:
    # dev-014 Measurement Status 0x0001 (body movement) -> 0x8019: + pulse range 3 (RFU) + bit 15 (RFU)
    uuid, data, _ = _patched("dev-014", 17, 0x19)
    data = data[:18] + b"\x80"
    value = gatt.decode(uuid, data)
    assert isinstance(value, gatt.BloodPressureMeasurement)
    status = value.measurement_status
    assert status is not None and status.body_movement_detected and status.pulse_rate_range == "reserved"
    assert gatt.reserved_values(value) == {"measurement_status": 0x8000, "measurement_status.pulse_rate_range": 3}
    assert {r.metric for r in convert.to_readings(value, device="d", subject="s", ts=0.0).readings} == {
        "systolic",
        "diastolic",
        "mean_arterial_pressure",
        "pulse_rate",
    }


def test_glucose_reserved_type_location_and_status_bits() -> None:
    # dev-021: Type-Sample Location 0x12 (capillary plasma, finger), status 0x0105 -> TSL 0x6B (both RFU),
    # status 0x8105 (bit 15 RFU) and flags bit 6 (RFU)
    vector = VECTORS["dev-021"]
    data = bytearray.fromhex(vector["hex"])
    data[0] |= 0x40
    data[14] = 0x6B
    data[16] = 0x81
    value = gatt.decode(0x2A18, bytes(data))
    assert isinstance(value, gatt.GlucoseMeasurement)
    assert (value.type, value.type_name, value.sample_location, value.sample_location_name) == (
        11,
        "reserved",
        6,
        "reserved",
    )
    assert value.concentration == vector["expected"]["concentration"]
    assert value.sequence_number == 1 and value.time_offset_min == -5
    assert value.sensor_status is not None and "device_battery_low" in value.sensor_status.set
    assert gatt.reserved_values(value) == {"flags": 0x40, "type": 11, "sample_location": 6, "sensor_status": 0x8000}


def test_glucose_context_reserved_enumerations() -> None:
    # dev-022 reports Carbohydrate ID 3, Meal 4, Tester 2/Health 1 and Extended Flags 0xB3 (all RFU in GLS 1.0)
    vector = VECTORS["dev-022"]
    data = bytearray.fromhex(vector["hex"])
    data[4] = 0x09  # Carbohydrate ID 9: RFU
    data[7] = 0x07  # Meal 7: RFU
    value = gatt.decode(0x2A34, bytes(data))
    assert isinstance(value, gatt.GlucoseMeasurementContext)
    assert value.carbohydrate_kg == vector["expected"]["carbohydrate_kg"]
    assert value.hba1c_pct == vector["expected"]["hba1c_pct"]
    assert gatt.reserved_values(value) == {"extended_flags": 0xB3, "carbohydrate_id": 9, "meal": 7}


def test_plx_reserved_status_bits() -> None:
    # dev-027 spot-check: Measurement Status and Device and Sensor Status present; set status bit 0 (RFU) and
    # device status bit 23 (RFU)
    vector = VECTORS["dev-027"]
    data = bytearray.fromhex(vector["hex"])
    data[12] |= 0x01
    data[16] |= 0x80
    value = gatt.decode(0x2A5E, bytes(data))
    assert isinstance(value, gatt.PlxSpotCheckMeasurement)
    assert (value.spo2_pct, value.pulse_rate_bpm) == (94.0, 147.0)
    assert value.measurement_status is not None
    assert value.measurement_status.set == tuple(vector["expected"]["measurement_status"]["set"])
    assert gatt.reserved_values(value) == {"measurement_status": 0x0001, "device_and_sensor_status": 0x800000}


def test_body_composition_reserved_flags_follow_the_vector_rule() -> None:
    """dev-033 sets flag bits 13 and 15, which its README says "must be ignored": the default JSON is exactly
    the vector's, and the bits are reported only as reserved values."""
    vector = VECTORS["dev-033"]
    value = gatt.decode(0x2A9C, bytes.fromhex(vector["hex"]))
    assert gatt.reserved_values(value) == {"flags": 0xA000}
    assert "reserved" not in gatt.as_json(value)


def test_battery_level_reserved_and_sfloat_reserved_word() -> None:
    value = gatt.decode(0x2A19, b"\x65")  # 101: RFU
    assert gatt.reserved_values(value) == {"battery_level_pct": 101}
    # dev-015 with the diastolic SFLOAT replaced by the reserved special word 0x0801
    data = bytearray.fromhex(VECTORS["dev-015"]["hex"])
    data[3:5] = b"\x01\x08"
    bp = gatt.decode(0x2A35, bytes(data))
    assert gatt.as_json(bp)["diastolic"] == "RESERVED"
    assert gatt.reserved_values(bp) == {"diastolic": 0x0801}


@pytest.mark.parametrize(
    ("uuid", "hexval", "error"),
    [
        # not reserved values but broken ones: still refused with the same typed errors as before
        (0x2A37, "1055a101a2", Inconsistent),  # RR flag with an odd number of RR bytes
        (0x2A37, "f0", Truncated),  # reserved flags do not excuse a missing heart rate
        (0x2A08, "e2070d110f330000", BadLength),  # Date Time with 8 bytes (month 13 too)
        (0x2A2B, "e707010214160709ff", BadLength),  # Current Time with 9 bytes (day of week 9 too)
        (0x2A1C, "0eb00e00fedc070c050b321b", Truncated),  # reserved flag bit 3 + type flag, type byte missing
        (0x2A9D, "f0b03600", TrailingBytes),  # reserved weight flags do not announce fields
        (0x2A19, "6565", BadLength),
    ],
)
def test_invalid_values_are_still_refused(uuid: int, hexval: str, error: type[BleParseError]) -> None:
    with pytest.raises(error):
        gatt.decode(uuid, bytes.fromhex(hexval))


def test_cli_reserved_option() -> None:
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """Stand-in for ``kyojo decode``."""

    register(app)
    result = CliRunner().invoke(app, ["ble", "--reserved", "2A2B", "e707010214160709ff01"])
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert out["valid"] is True
    assert out["day_of_week_name"] == "reserved"
    assert out["reserved"] == {"day_of_week": 9}
    plain = json.loads(CliRunner().invoke(app, ["ble", "2A2B", "e707010214160709ff01"]).output)
    assert "reserved" not in plain and plain["valid"] is True


class _Link:
    records = None

    def health(self) -> dict[str, object]:
        return {}


def test_driver_counts_reserved_values_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    driver = BleDriver("hr-1", "p1", _Link(), clock=lambda: 0.0)  # type: ignore[arg-type]
    reserved_hr = bytes.fromhex("e648")  # flags 0xE6: contact detected + RFU bits 5-7; HR 72
    with caplog.at_level(logging.INFO, logger="drivers.ble.driver"):
        for _ in range(50):
            readings = driver.decode(0x2A37, reserved_hr, 1.0)
            assert [(r.metric, r.value) for r in readings] == [("heart_rate", 72.0)]
    health = driver.health()
    assert health["reserved_values"] == {"0x2A37:flags": 50}
    assert health["parse_errors"] == {}
    assert len([r for r in caplog.records if "reserved" in r.getMessage()]) == 1


def test_racp_reserved_response_code_is_reported() -> None:
    """RACP Response Code values 0x00 and 0x0A-0xFF are RFU (GLS 1.0, RACP): parsed, not ok, and named."""
    answer = racp.parse_response(bytes([0x06, 0x00, 0x01, 0x0C]))
    assert (answer.request_op, answer.code, answer.ok) == (0x01, 0x0C, False)
    assert answer.reserved
    assert "reserved response code 0x0C" in answer.describe()
    assert not racp.parse_response(bytes([0x06, 0x00, 0x01, 0x01])).reserved
    with pytest.raises(racp.RacpError):
        racp.parse_response(bytes([0x06, 0x00, 0x01]))  # truncated: still refused


_FLAGGED = [
    v
    for v in VECTORS.values()
    if v["characteristic_uuid"] is not None
    and v["expected"]["valid"]
    and int(v["characteristic_uuid"], 16) in {0x2A37, 0x2A35, 0x2A1C, 0x2A18, 0x2A5E, 0x2A5F, 0x2A9D}
]
# reserved (RFU) flag bits per characteristic (GSS; see drivers/ble/characteristics/reserved.py)
_RFU_FLAGS = {0x2A37: 0xE0, 0x2A35: 0xE0, 0x2A1C: 0xF8, 0x2A18: 0xE0, 0x2A5E: 0xE0, 0x2A5F: 0xE0, 0x2A9D: 0xF0}


@settings(max_examples=200, deadline=None)
@given(vector=st.sampled_from(_FLAGGED), bits=st.integers(1, 0xFF))
def test_reserved_flag_bits_never_change_the_decode(vector: dict[str, Any], bits: int) -> None:
    """Any combination of RFU flag bits on any curated vector: the same decode, the bits reported."""
    uuid = int(vector["characteristic_uuid"], 16)
    rfu = bits & _RFU_FLAGS[uuid]
    if not rfu:
        return
    data = bytearray.fromhex(vector["hex"])
    data[0] |= rfu
    lenient = bool(vector.get("lenient"))
    value = gatt.decode(uuid, bytes(data), lenient=lenient)
    want = gatt.as_json(gatt.decode(uuid, bytes.fromhex(vector["hex"]), lenient=lenient))
    got = gatt.as_json(value)
    assert got["flags"] == want["flags"] | rfu
    assert {k: v for k, v in got.items() if k != "flags"} == {k: v for k, v in want.items() if k != "flags"}
    assert gatt.reserved_values(value)["flags"] == rfu

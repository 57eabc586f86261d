"""Sans-IO BLE decoders against the curated vectors, the CLI, the Reading conversion, and random bytes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from drivers.ble import convert, gatt, ieee11073
from drivers.ble.cli import register
from drivers.ble.errors import BadLength, BleParseError, Inconsistent, TrailingBytes, Truncated, UnknownCharacteristic
from drivers.ble.ieee11073 import Special
from kyojo.contract.vocab import ParseError
from tests.kit import DATA

VECTORS: list[dict[str, Any]] = json.loads((DATA / "ble" / "vectors.json").read_text())


def _same(got: object, want: object) -> bool:
    """Equal as JSON values, floats with rel. tolerance 1e-9 (the vectors' convention)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if want is None or isinstance(want, bool | str):
        return type(got) is type(want) and got == want
    assert isinstance(want, int | float)
    return isinstance(got, int | float) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=1e-9)


@pytest.fixture(scope="module")
def decode_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """Stand-in for the lead's ``kyojo decode`` group."""

    register(app)
    return app


def _cli(app: typer.Typer, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["ble", *args])
    return result.exit_code, json.loads(result.output)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector_through_cli(decode_app: typer.Typer, vector: dict[str, Any]) -> None:
    """Every vector, through ``kyojo decode ble`` exactly as an installer would type it."""
    expected = vector["expected"]
    if vector["characteristic_uuid"] is None:
        fmt = "sfloat" if "SFLOAT" in vector["format"] else "float"
        code, out = _cli(decode_app, "--format", fmt, vector["hex"])
    else:
        extra = ["--lenient"] if vector.get("lenient") else []
        code, out = _cli(decode_app, *extra, vector["characteristic_uuid"], vector["hex"])
    assert code == 0
    if expected["valid"]:
        assert _same(out, expected), out
    else:
        assert out["valid"] is False
        assert out["error"] == expected["error"]


@pytest.mark.parametrize("vector", [v for v in VECTORS if v.get("lenient")], ids=lambda v: v["id"])
def test_lenient_vectors_are_rejected_by_default(vector: dict[str, Any]) -> None:
    """The strict default refuses padding; the error says where the unexpected bytes start."""
    with pytest.raises(TrailingBytes) as info:
        gatt.decode(vector["characteristic_uuid"], bytes.fromhex(vector["hex"]))
    assert info.value.offset == 3
    assert info.value.reason == "trailing_bytes"


@pytest.mark.parametrize("form", ["2A37", "2a37", "0x2A37", "00002A37-0000-1000-8000-00805F9B34FB"])
def test_uuid_forms(decode_app: typer.Typer, form: str) -> None:
    code, out = _cli(decode_app, form, "0055")
    assert (code, out["heart_rate_bpm"]) == (0, 85)


@pytest.mark.parametrize(
    "args",
    [
        ("2AFF", "00"),  # no decoder
        ("12345678-0000-1000-8000-00805f9b34fb", "00"),  # not a SIG UUID
        ("2A37", "0g"),  # not hex
        ("2A37",),  # missing the value
        ("--format", "sfloat", "2A37", "0000"),  # --format takes only HEX
    ],
)
def test_cli_bad_arguments_exit_2_with_json(decode_app: typer.Typer, args: tuple[str, ...]) -> None:
    code, out = _cli(decode_app, *args)
    assert code == 2
    assert out["valid"] is False
    assert out["error"]


def test_cli_bare_number_wrong_size(decode_app: typer.Typer) -> None:
    assert _cli(decode_app, "--format", "float", "0000") == (
        0,
        {"valid": False, "error": "FLOAT is exactly 4 bytes", "reason": "length"},
    )


def test_cli_readings_option(decode_app: typer.Typer) -> None:
    code, out = _cli(decode_app, "--readings", "2A35", "1e8a00580078000000041114293b3c00012700")
    assert code == 0
    assert {r["metric"]: r["value"] for r in out["readings"]} == {
        "systolic": 138,
        "diastolic": 88,
        "mean_arterial_pressure": 120,
        "pulse_rate": 60,
    }


# ------------------------------------------------------------------------------------------------------------
# IEEE-11073 numbers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "value"),
    [
        (0x0062, 98.0),  # plain two's complement exponent: not 0x8062 as biased-exponent libraries write
        (0xF0BD, 18.9),
        (0x0E0D, -499.0),  # 12-bit mantissa 0xE0D is negative (pitfall 4)
        (0x77FF, 2047e7),  # mantissa 0x7FF is NaN only with exponent 0
        (0x8001, 1e-8),
        (0x0802 | 0x1000, -20460.0),
        (0x07FF, Special.NAN),
        (0x0800, Special.NRES),
        (0x07FE, Special.POS_INF),
        (0x0802, Special.NEG_INF),
        (0x0801, Special.RESERVED),
    ],
)
def test_sfloat(word: int, value: float | Special) -> None:
    got = ieee11073.sfloat_from_word(word)
    assert got == value if isinstance(value, Special) else math.isclose(got, value, rel_tol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("word", "value"),
    [
        (0xFF000172, 37.0),
        (0xFE000EB0, 37.6),
        (0x00FFFFFF, -1.0),
        (0x80000001, 1e-128),
        (0x7F000001, 1e127),
        (0x00800002, Special.NEG_INF),
        (0x007FFFFE, Special.POS_INF),
    ],
)
def test_float(word: int, value: float | Special) -> None:
    got = ieee11073.float_from_word(word)
    assert got == value if isinstance(value, Special) else math.isclose(got, value, rel_tol=1e-12)  # type: ignore[arg-type]


@given(st.integers(0, 0xFFFF))
def test_sfloat_total(word: int) -> None:
    value = ieee11073.sfloat_from_word(word)
    assert isinstance(value, Special) or math.isfinite(value)


# ------------------------------------------------------------------------------------------------------------
# Errors: typed, with offsets
# ------------------------------------------------------------------------------------------------------------


def test_truncated_carries_offset() -> None:
    with pytest.raises(Truncated) as info:
        gatt.decode(0x2A35, bytes.fromhex("010203040506"))
    err = info.value
    assert (err.offset, err.need, err.have, err.characteristic) == (5, 2, 1, 0x2A35)
    assert isinstance(err, ParseError)
    assert err.reason == "truncated"


@pytest.mark.parametrize(
    ("uuid", "hexval", "error"),
    [
        (0x2A37, "1055a101a2", Inconsistent),  # odd RR bytes
        (0x2A08, "e20704110f330000", BadLength),  # 8 bytes
        (0x2A19, "", BadLength),
        (0x2A9D, "00b03600", TrailingBytes),
        (0x2A5E, "00640060", Truncated),
    ],
)
def test_rejections(uuid: int, hexval: str, error: type[BleParseError]) -> None:
    with pytest.raises(error):
        gatt.decode(uuid, bytes.fromhex(hexval))


def test_unknown_characteristic() -> None:
    with pytest.raises(UnknownCharacteristic):
        gatt.decode(0x2A00, b"x")


@settings(max_examples=150, deadline=None)
@given(uuid=st.sampled_from(sorted(gatt.CHARACTERISTICS)), data=st.binary(max_size=40), lenient=st.booleans())
def test_random_bytes_raise_only_parse_error(uuid: int, data: bytes, lenient: bool) -> None:
    """For every characteristic: random bytes decode, or raise a ParseError, and conversion never raises."""
    try:
        value = gatt.decode(uuid, data, lenient=lenient)
    except ParseError:
        return
    gatt.as_json(value)
    json.dumps(gatt.as_json(value))
    convert.to_readings(value, device="d", subject="s", ts=0.0)


@settings(max_examples=100, deadline=None)
@given(uuid=st.sampled_from(sorted(gatt.CHARACTERISTICS)), flags=st.integers(0, 0xFFFF), tail=st.binary(max_size=40))
def test_flag_driven_random_values(uuid: int, flags: int, tail: bytes) -> None:
    """Random flags with plausible-length bodies reach deeper branches than raw random bytes."""
    data = flags.to_bytes(2, "little")[: 2 if uuid == 0x2A9C else 1] + tail
    try:
        value = gatt.decode(uuid, data, lenient=True)
    except ParseError:
        return
    convert.to_readings(value, device="d", subject="s", ts=0.0)


# ------------------------------------------------------------------------------------------------------------
# Readings: units converted once, implausible values held back
# ------------------------------------------------------------------------------------------------------------


def _conv(uuid: int, hexval: str) -> convert.Conversion:
    return convert.to_readings(gatt.decode(uuid, bytes.fromhex(hexval)), device="dev1", subject="p1", ts=100.0)


def _values(conv: convert.Conversion) -> dict[str, float]:
    return {r.metric: r.value for r in conv.readings}


def test_heart_rate_readings_and_rr_ms() -> None:
    conv = _conv(0x2A37, "16480004")  # contact detected, HR 72, RR 1024/1024 s
    assert [(r.metric, r.value, r.unit) for r in conv.readings] == [
        ("heart_rate", 72.0, "bpm"),
        ("rr_interval", 1000.0, "ms"),
    ]
    assert all(r.ts == 100.0 and r.device == "dev1" and r.subject == "p1" for r in conv.readings)


def test_heart_rate_out_of_range_is_flagged() -> None:
    conv = _conv(0x2A37, "01aa01")  # 426 bpm (uint16)
    assert conv.readings == ()
    assert conv.flagged == (convert.Flagged("heart_rate", 426, "implausible"),)
    assert _conv(0x2A37, "0013").flagged[0].reason == "implausible"  # 19 bpm


def test_heart_rate_without_skin_contact_is_held_back() -> None:
    conv = _conv(0x2A37, "04aa")
    assert conv.readings == ()
    assert conv.flagged[0].reason == "no_skin_contact"


def test_blood_pressure_kpa_to_mmhg() -> None:
    # flags kPa; 16.0 / 10.7 / 12.5 kPa as SFLOAT with exponent -1
    conv = _conv(0x2A35, "01a0f06bf07df0")
    values = _values(conv)
    assert values["systolic"] == pytest.approx(16.0 * 7.50062)
    assert values["diastolic"] == pytest.approx(10.7 * 7.50062)
    assert all(r.unit == "mmHg" for r in conv.readings)


def test_blood_pressure_nan_slot_is_flagged() -> None:
    conv = _conv(0x2A35, "0082005a00ff07")  # 130 / 90 mmHg, MAP NaN
    assert _values(conv) == {"systolic": 130.0, "diastolic": 90.0}
    assert conv.flagged == (convert.Flagged("mean_arterial_pressure", "NaN", "special_value"),)


def test_intermediate_cuff_pressure_gives_no_readings() -> None:
    value = gatt.decode(0x2A36, bytes.fromhex("005000ff07ff07"))
    assert isinstance(value, gatt.IntermediateCuffPressure)
    assert value.cuff_pressure == 80.0
    assert convert.to_readings(value, device="d", subject="s", ts=0).readings == ()


def test_temperature_fahrenheit_to_celsius() -> None:
    conv = _conv(0x2A1C, "01842600fe")  # 9860e-2 = 98.60 degF
    assert _values(conv)["body_temperature"] == pytest.approx(37.0)
    conv = _conv(0x2A1C, "01b00e00fe")  # 37.60 degF is 3.1 degC: a unit mix-up on the device, not a person
    assert conv.flagged[0].reason == "implausible"


def test_glucose_units() -> None:
    # kg/L: 0.00095 kg/L = 95 mg/dL (SFLOAT 95e-5: exponent -5 = 0xB)
    conv = _conv(0x2A18, "020100e307021b0b0a1e5fb011")
    assert _values(conv) == {"glucose": pytest.approx(95.0)}
    assert conv.readings[0].extra["device_time"] == "2019-02-27T11:10:30"
    # mol/L: 0.0053 mol/L = 5.3 mmol/L (SFLOAT 53e-4: exponent -4 = 0xC)
    conv = _conv(0x2A18, "060100e307021b0b0a1e35c011")
    assert _values(conv)["glucose"] == pytest.approx(5.3 * 18.016)


def test_glucose_control_solution_and_status_are_held_back() -> None:
    assert _conv(0x2A18, "020100e307021b0b0a1e5fb01a").flagged[0].reason == "control_solution"
    # status bit 5: result higher than the device can process
    conv = _conv(0x2A18, "0a0100e307021b0b0a1e5fb0112000")
    assert conv.readings == ()
    assert conv.flagged[0].reason == "sensor_status:sensor_result_higher_than_device_can_process"


def test_spo2_out_of_range_and_invalid_status() -> None:
    assert _conv(0x2A5F, "0065005a00").flagged[0] == convert.Flagged("spo2", 101.0, "implausible")
    conv = _conv(0x2A5F, "0462005a000080")  # status bit 15 invalid measurement
    assert conv.readings == ()
    assert {f.reason for f in conv.flagged} == {"device_status:invalid_measurement_detected"}


def test_weight_pounds_to_kg_and_unsuccessful() -> None:
    assert _values(_conv(0x2A9D, "01543d")) == {"weight": pytest.approx(157 * 0.45359237)}
    conv = _conv(0x2A9D, "00ffff")
    assert conv.readings == ()
    assert conv.flagged == (convert.Flagged("weight", None, "measurement_unsuccessful"),)


def test_body_composition_readings() -> None:
    assert _values(_conv(0x2A9C, "000e4600401fb036e803")) == {"body_fat": 7.0, "weight": 70.0}


def test_battery_level() -> None:
    assert _values(_conv(0x2A19, "55")) == {"battery_level": 85.0}
    assert _conv(0x2A19, "65").flagged[0].reason == "implausible"


def test_parsers_are_sans_io() -> None:
    """The decoders and the converter import neither bleak nor asyncio (a truck gateway never loads them)."""
    code = (
        "import sys; import drivers.ble.gatt, drivers.ble.convert, drivers.ble.profiles; "
        "print(sorted(m for m in ('bleak', 'asyncio', 'bumble') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

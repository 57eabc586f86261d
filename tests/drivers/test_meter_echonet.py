"""ECHONET Lite codec and the smart meter (0x0288) properties: byte vectors in, decoded values out."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.meter.echonet import (
    CONTROLLER,
    EOJ,
    ESV,
    SMART_METER,
    UNIT_KWH,
    Currents,
    FixedTimeEnergy,
    Frame,
    Property,
    decode_frame,
    encode_frame,
    get_request,
    parse_cumulative,
    parse_currents,
    parse_fixed_time,
    parse_instant_power,
)
from drivers.meter.skstack import parse_line
from drivers.meter.smartmeter import MeterDecoder, describe
from kyojo.contract.vocab import ParseError, Reading

#: An ERXUDP line in the BP35A1 format carrying a Get_Res with 0xE7 = 0x000001F8 (504 W). Constructed from
#: the BP35A1 reference's ERXUDP layout and the ECHONET Lite frame format, not captured from a meter.
ERXUDP_E7 = (
    "ERXUDP FE80:0000:0000:0000:021C:6400:030C:12A4 FE80:0000:0000:0000:021D:1290:1234:5678 0E1A 0E1A "
    "001C6400030C12A4 1 0012 1081000102880105FF017201E704000001F8"
)


def test_get_request_bytes() -> None:
    # 10 81 | TID 0001 | SEOJ 05FF01 (controller) | DEOJ 028801 (meter) | ESV 62 Get | OPC 2 | E7 00 | E0 00
    assert get_request(1, (0xE7, 0xE0)) == bytes.fromhex("1081000105FF010288016202E700E000")


def test_erxudp_get_res_to_power() -> None:
    msg = parse_line(ERXUDP_E7)
    assert msg is not None and not isinstance(msg, type(None))
    frame = decode_frame(msg.data)  # type: ignore[union-attr]
    assert frame == Frame(1, SMART_METER, CONTROLLER, ESV.GET_RES, (Property(0xE7, bytes.fromhex("000001F8")),))
    dec = MeterDecoder("home1-meter", "home1")
    assert dec.readings(frame, 100.0) == [Reading("home1-meter", "home1", "power", 504.0, "W", 100.0)]


def test_roundtrip_and_setget() -> None:
    f = Frame(0xBEEF, CONTROLLER, SMART_METER, ESV.SETGET, (Property(0x80, b"\x30"),), (Property(0xE7),))
    assert decode_frame(encode_frame(f)) == f
    g = Frame(7, NODE := EOJ(0x0E, 0xF0, 0x01), EOJ(0x0E, 0xF0, 0x01), ESV.INF, (Property(0xD5, b"\x01\x02\x88\x01"),))
    assert decode_frame(encode_frame(g)) == g and NODE.class_code == 0x0EF0


@pytest.mark.parametrize(
    ("edt", "watts"),
    [("000001F8", 504), ("FFFFFE0C", -500), ("00000000", 0), ("7FFFFFFD", 2147483645),
     ("7FFFFFFE", None), ("7FFFFFFF", None), ("80000000", None)],
)  # fmt: skip
def test_e7_signed_power_and_sentinels(edt: str, watts: int | None) -> None:
    assert parse_instant_power(bytes.fromhex(edt)) == watts


@pytest.mark.parametrize(
    ("edt", "currents"),
    [("007B7FFE", Currents(12.3, None)),  # single-phase 2-wire: T phase 'no data'
     ("00280014", Currents(4.0, 2.0)),
     ("FFF60032", Currents(-1.0, 5.0)),  # signed: reverse current with PV
     ("7FFF8000", Currents(None, None))],
)  # fmt: skip
def test_e8_currents(edt: str, currents: Currents) -> None:
    assert parse_currents(bytes.fromhex(edt)) == currents


def test_unit_table_and_cumulative() -> None:
    assert UNIT_KWH[0x01] == 0.1 and UNIT_KWH[0x0D] == 10000.0 and UNIT_KWH[0x04] == 0.0001
    assert parse_cumulative(bytes.fromhex("0001E240")) == 123456
    assert parse_cumulative(bytes.fromhex("FFFFFFFE")) is None
    with pytest.raises(ParseError) as info:
        parse_cumulative(bytes.fromhex("05F5E100"))  # 100,000,000: beyond 8 digits
    assert info.value.reason == "bad_edt"


def test_fixed_time_ea() -> None:
    # 2025-06-02 12:30:00, count 0x0001E240
    edt = bytes.fromhex("07E906020C1E00" + "0001E240")
    assert parse_fixed_time(edt) == FixedTimeEnergy(dt.datetime(2025, 6, 2, 12, 30), 123456)
    with pytest.raises(ParseError):
        parse_fixed_time(bytes.fromhex("07E90D020C1E000001E240"))  # month 13


def _res(tid: int, *props: tuple[int, str], esv: ESV = ESV.GET_RES) -> Frame:
    return Frame(tid, SMART_METER, CONTROLLER, esv, tuple(Property(e, bytes.fromhex(h)) for e, h in props))


def test_meter_energy_units_coefficient_and_rollover() -> None:
    dec = MeterDecoder("m", "h")
    assert dec.readings(_res(1, (0xE0, "00000010")), 0.0) == []  # unit unknown: nothing to convert yet
    # 0xD3 coefficient 2, 0xD7 6 digits, 0xE1 0x01 = 0.1 kWh; E0 999990 -> 999990 x 2 x 0.1 kWh
    dec.readings(_res(2, (0xD3, "00000002"), (0xD7, "06"), (0xE1, "01")), 0.0)
    values = []
    for i, count in enumerate((999_990, 999_999, 5, 5)):  # polled every 2 min: 1.8 kWh in 2 min is 54 kW
        rs = dec.readings(_res(3 + i, (0xE0, count.to_bytes(4, "big").hex())), 120.0 * i)
        values.append(rs[0].value)
    assert values == [199_998_000.0, 199_999_800.0, 200_001_000.0, 200_001_000.0]  # wrapped at 10**6, no dip
    assert rs[0].extra == {"raw_count": "5", "rollovers": "1"}


def test_meter_currents_export_fixed_time_and_sna() -> None:
    dec = MeterDecoder("m", "h", export=True)
    dec.readings(_res(1, (0xD7, "06"), (0xE1, "02")), 0.0)  # 0.01 kWh
    rs = dec.readings(_res(2, (0xE7, "FFFFFE0C"), (0xE8, "FFF60032"), (0xE3, "00000064")), 10.0)
    assert [(r.device, r.metric, r.value) for r in rs] == [
        ("m", "power", -500.0), ("m-r", "current", -1.0), ("m-t", "current", 5.0), ("m-export", "energy", 1000.0),
    ]  # fmt: skip
    # Get_SNA: 0xE7 unavailable (PDC 0), 0xE0 present
    sna = Frame(3, SMART_METER, CONTROLLER, ESV.GET_SNA, (Property(0xE7), Property(0xE0, bytes.fromhex("00000064"))))
    assert [(r.metric, r.value) for r in dec.readings(sna, 20.0)] == [("energy", 1000.0)]
    # 0xEA INF: 12:30 JST = 03:30 UTC, later than the last poll (ts 20) -> a reading at the fixed time
    inf = _res(4, (0xEA, "07E906020C1E0000000065"), esv=ESV.INF)
    (r,) = dec.readings(inf, 30.0)
    assert r.ts == dt.datetime(2025, 6, 2, 3, 30, tzinfo=dt.UTC).timestamp() and r.value == 1010.0
    # an older fixed-time value must not look like a roll-over
    old = _res(5, (0xEA, "07E906020C000000000010"), esv=ESV.INF)
    assert dec.readings(old, 40.0) == [] and dec.normal.resets == 0


def test_describe() -> None:
    d = describe(_res(9, (0xE7, "000001F8"), (0xE8, "007B7FFE"), (0x99, "AB")))
    assert d["esv"] == "GET_RES" and d["seoj"] == "028801"
    assert [p.get("value") for p in d["properties"]] == [504, {"r": 12.3, "t": None}, "ab"]


@pytest.mark.parametrize(
    ("hexframe", "reason"),
    [("", "not_echonet"), ("1082000102880105FF017200", "not_echonet"), ("10810001028801", "truncated"),
     ("1081000102880105FF017201E70400", "truncated"), ("1081000102880105FF017201E7040000000100", "trailing_bytes"),
     ("1081000102880105FF019900", "bad_esv")],
)  # fmt: skip
def test_bad_frames(hexframe: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        decode_frame(bytes.fromhex(hexframe))
    assert info.value.reason == reason


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40) | st.binary(max_size=30).map(lambda b: b"\x10\x81" + b))
def test_random_frames_only_parse_error(data: bytes) -> None:
    dec = MeterDecoder("m", "h", export=True, unit_kwh=0.1)
    try:
        frame = decode_frame(data)
        describe(frame)
        dec.readings(frame, 0.0)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60).map(lambda s: "ERXUDP " + s) | st.text(max_size=30).map(lambda s: "EVENT " + s))
def test_random_lines_only_parse_error(line: str) -> None:
    with contextlib.suppress(ParseError):
        parse_line(line)

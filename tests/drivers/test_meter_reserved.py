"""A reserved value is not an error (issue 20, section 4): ECHONET Lite frames and the smart meter 0x0288.

Frames are the repo's own vectors (``test_meter_echonet.ERXUDP_E7``'s Get_Res with 0xE7 = 504 W) with only the
reserved field changed. Reserved: ESV codes inside the ESV ranges that are not assigned (Part II 3.2.5), 0xE1
unit codes not assigned by the Appendix (class 0x0288). Still refused: EHD other than 1081, ESV outside
0x50-0x7F, truncated frames, wrong PDC, and out-of-range values of numeric properties (0xD3, 0xD7, 0xE0).
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.meter.driver import BRouteMeter
from drivers.meter.echonet import (
    CONTROLLER,
    ESV,
    SMART_METER,
    Frame,
    Property,
    ReservedValue,
    decode_frame,
    encode_frame,
    is_reserved_esv,
    parse_unit,
)
from drivers.meter.smartmeter import MeterDecoder, describe
from kyojo.contract.vocab import ParseError, Reading

#: the Get_Res of tests/drivers/test_meter_echonet.py::ERXUDP_E7: TID 1, meter -> controller, E7 = 504 W
GET_RES_E7 = bytes.fromhex("1081000102880105FF017201E704000001F8")


def _with_esv(frame: bytes, esv: int) -> bytes:
    return frame[:10] + bytes((esv,)) + frame[11:]


@pytest.mark.parametrize("esv", [0x75, 0x79, 0x7B, 0x7D, 0x64, 0x6D, 0x54, 0x5D])
def test_reserved_esv_frame_is_decoded_and_reported(esv: int) -> None:
    assert is_reserved_esv(esv)
    frame = decode_frame(_with_esv(GET_RES_E7, esv))  # not refused
    assert frame.esv == esv
    assert frame.props == (Property(0xE7, bytes.fromhex("000001F8")),)
    d = describe(frame)
    assert d["esv"] == f"reserved_0x{esv:02X}" and d["reserved"] is True
    assert d["properties"][0]["value"] == 504  # the rest of the frame is decoded
    dec = MeterDecoder("m", "h")
    assert dec.readings(frame, 1.0) == []  # what a reserved service means is unknown: no Readings
    assert dec.reserved == {f"esv:0x{esv:02X}": 1}


@pytest.mark.parametrize("esv", [0x00, 0x4F, 0x80, 0x99, 0xFF])
def test_esv_outside_the_esv_ranges_is_still_refused(esv: int) -> None:
    with pytest.raises(ParseError) as info:
        decode_frame(_with_esv(GET_RES_E7, esv))
    assert info.value.reason == "bad_esv"


def test_reserved_unit_code_keeps_power_and_withholds_energy() -> None:
    """0xE1 = 0x05 (unassigned) in a Get_Res that also carries 0xE7 and 0xE0: power is read, energy is not
    converted with a unit nobody knows, the value is counted; a known unit later restores energy."""
    dec = MeterDecoder("m", "h")
    frame = Frame(
        2,
        SMART_METER,
        CONTROLLER,
        ESV.GET_RES,
        (Property(0xE1, b"\x05"), Property(0xE7, bytes.fromhex("000001F8")), Property(0xE0, bytes.fromhex("00000064"))),
    )
    assert dec.readings(decode_frame(encode_frame(frame)), 10.0) == [Reading("m", "h", "power", 504.0, "W", 10.0)]
    assert dec.reserved == {"epc:0xE1": 1}
    assert dec.unit_reserved and not dec.ready
    prop = describe(frame)["properties"][0]
    assert prop == {"epc": "0xE1", "pdc": 1, "edt": "05", "name": "cumulative_energy_unit_kwh", "value": None,
                    "reserved": True}  # fmt: skip
    known = Frame(3, SMART_METER, CONTROLLER, ESV.GET_RES, (Property(0xE1, b"\x01"), Property(0xE0, bytes(4))))
    assert [r.metric for r in dec.readings(known, 20.0)] == ["energy"]
    assert not dec.unit_reserved


def test_reserved_operation_status_is_reported_in_describe() -> None:
    frame = Frame(
        5, SMART_METER, CONTROLLER, ESV.GET_RES, (Property(0x80, b"\x42"), Property(0xE7, b"\x00\x00\x01\xf8"))
    )
    props = describe(frame)["properties"]
    assert props[0]["value"] is None and props[0]["reserved"] is True and props[0]["edt"] == "42"
    assert props[1]["value"] == 504
    assert (
        describe(Frame(6, SMART_METER, CONTROLLER, ESV.GET_RES, (Property(0x80, b"\x30"),)))["properties"][0]["value"]
        == "on"
    )


@pytest.mark.parametrize("code", [0x05, 0x09, 0x0E, 0xFF])
def test_parse_unit_reserved_codes_raise_the_typed_reserved_error(code: int) -> None:
    with pytest.raises(ReservedValue) as info:
        parse_unit(bytes((code,)))
    assert isinstance(info.value, ParseError)
    assert (info.value.reason, info.value.epc) == ("reserved_value", 0xE1)


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ((Property(0xE1, b"\x01\x00"), Property(0xE7, bytes(4))), "bad_edt"),  # E1 with PDC 2: impossible length
        ((Property(0xD7, b"\x09"), Property(0xE7, bytes(4))), "bad_edt"),  # 9 digits: outside 1..8, not a code
        ((Property(0xD3, bytes(4)), Property(0xE7, bytes(4))), "bad_edt"),  # coefficient 0: outside 1..999999
        ((Property(0xE1, b"\x01"), Property(0xE0, bytes.fromhex("05F5E100"))), "bad_edt"),  # > 99,999,999
    ],
)
def test_invalid_property_values_still_refuse_the_frame(props: tuple[Property, ...], reason: str) -> None:
    frame = Frame(4, SMART_METER, CONTROLLER, ESV.GET_RES, props)
    with pytest.raises(ParseError) as info:
        MeterDecoder("m", "h").readings(frame, 0.0)
    assert info.value.reason == reason
    assert not isinstance(info.value, ReservedValue)


@pytest.mark.parametrize(
    ("hexframe", "reason"),
    [("1082000102880105FF017201E704000001F8", "not_echonet"),  # EHD2 0x82: format 2, no property list
     ("1081000102880105FF017501E70400", "truncated"),  # a reserved ESV does not excuse a short EDT
     ("1081000102880105FF017501E704000001F800", "trailing_bytes")],
)  # fmt: skip
def test_framing_errors_with_reserved_esv_are_still_refused(hexframe: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        decode_frame(bytes.fromhex(hexframe))
    assert info.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(esv=st.integers(0x50, 0x7F), body=st.binary(max_size=24))
def test_any_esv_in_range_decodes_or_raises_only_parse_error(esv: int, body: bytes) -> None:
    data = GET_RES_E7[:10] + bytes((esv,)) + body
    dec = MeterDecoder("m", "h", unit_kwh=0.1)
    try:
        frame = decode_frame(data)
        describe(frame)
        dec.readings(frame, 0.0)
    except ParseError:
        pass


def _no_port() -> None:
    raise AssertionError("no I/O in this test")


class _Clock:
    def now(self) -> float:
        return 5.0


def test_driver_health_counts_reserved_values_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    drv = BRouteMeter("m", "h", port_factory=_no_port, rbid="x" * 32, password="p" * 12, clock=_Clock())  # type: ignore[arg-type]
    dec = MeterDecoder("m", "h")
    drv.decoder = dec
    frame = decode_frame(_with_esv(GET_RES_E7, 0x75))
    with caplog.at_level(logging.INFO, logger="drivers.meter.driver"):
        for _ in range(20):
            assert drv._decode([frame, decode_frame(GET_RES_E7)], dec) == [Reading("m", "h", "power", 504.0, "W", 5.0)]
    health = drv.health()
    assert health["reserved_values"] == {"esv:0x75": 20}
    assert health["parse_errors"] == {}
    assert len([r for r in caplog.records if "reserved" in r.getMessage()]) == 1

"""A reserved value is not an error (issue 20, section 4): NMEA 0183 sentences.

Sentences are the ZED-F9P capture's own (``tests/data/nmea/ZED-F9P_HPG1.11.log``, epoch 00:39:56) with one
field changed and the checksum recomputed. Kept and reported: a status letter other than A/V, a mode or
navigational-status letter NMEA 0183 4.11 does not define, a GGA quality beyond 0-8, a GSA system id beyond 1-6,
a talker ID outside the known set. Still refused: a bad checksum, an empty or non-letter status, truncation.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gnss.nmea import (
    GGA,
    GSA,
    GSV,
    RMC,
    ChecksumError,
    FieldError,
    NmeaDecoder,
    NmeaError,
    NmeaReader,
    Reject,
    checksum,
    parse_sentence,
    unknown_values,
)
from drivers.gnss.transport import SerialNmeaSource

# the 00:39:56 epoch of ZED-F9P_HPG1.11.log (RMC, GGA, GSA, GLL), verbatim
RMC_LINE = "$GNRMC,003956.00,A,4552.65403,S,17030.00668,E,0.025,,120419,,,A,V*07"
GGA_LINE = "$GNGGA,003956.00,4552.65403,S,17030.00668,E,1,12,0.64,14.2,M,1.8,M,,*56"
GSA_LINE = "$GNGSA,A,3,82,66,81,,,,,,,,,,1.05,0.64,0.83,2*0C"
GLL_LINE = "$GNGLL,4552.65403,S,17030.00668,E,003956.00,A,A*6C"
# the next epoch's RMC, to close the epoch above
NEXT_RMC = "$GNRMC,003957.00,A,4552.65403,S,17030.00668,E,0.025,,120419,,,A,V*06"

LAT = -(45 + 52.65403 / 60)
LON = 170 + 30.00668 / 60


def _field(line: str, index: int, value: str) -> str:
    """``line`` with data field ``index`` (the address is field 0) replaced and the checksum recomputed."""
    body = line[1 : line.index("*")].split(",")
    body[index] = value
    text = ",".join(body)
    return f"${text}*{checksum(text):02X}"


def _address(line: str, address: str) -> str:
    body = line[1 : line.index("*")].split(",")
    body[0] = address
    text = ",".join(body)
    return f"${text}*{checksum(text):02X}"


@pytest.mark.parametrize(
    ("line", "unknown"),
    [
        (_field(RMC_LINE, 2, "X"), {"RMC.status": "X"}),
        (_field(RMC_LINE, 12, "Q"), {"RMC.mode": "Q"}),
        (_field(RMC_LINE, 13, "Z"), {"RMC.nav_status": "Z"}),
        (_field(GLL_LINE, 6, "B"), {"GLL.status": "B"}),
        (_field(GLL_LINE, 7, "Q"), {"GLL.mode": "Q"}),
        (_field(GGA_LINE, 6, "9"), {"GGA.quality": "9"}),
        (_field(GSA_LINE, 18, "9"), {"GSA.system_id": "9"}),
        (_field(GSA_LINE, 1, "X"), {"GSA.op_mode": "X"}),
        (_field(GSA_LINE, 2, "7"), {"GSA.fix_type": "7"}),
        (_address(GGA_LINE, "GZGGA"), {"GGA.talker": "GZ"}),
    ],
)
def test_unknown_value_is_kept_and_reported(line: str, unknown: dict[str, str]) -> None:
    s = parse_sentence(line)  # not refused
    assert unknown_values(s) == unknown
    if isinstance(s, RMC | GGA):
        assert (s.lat, s.lon) == (pytest.approx(LAT), pytest.approx(LON))  # the rest of the sentence is decoded
    if isinstance(s, RMC):
        assert (s.speed_knots, s.time) == (0.025, 2396.0)
    if isinstance(s, GSA):
        assert s.prns == (82, 66, 81) and s.pdop == 1.05


def test_the_capture_itself_has_no_unknown_values() -> None:
    for line in (RMC_LINE, GGA_LINE, GSA_LINE, GLL_LINE):
        assert unknown_values(parse_sentence(line)) == {}
    rmc = parse_sentence(RMC_LINE)
    assert isinstance(rmc, RMC) and rmc.nav_status == "V"  # NMEA 4.10 navigational status, now decoded


def _epoch(*lines: str) -> list[object]:
    reader = NmeaReader()
    return [*reader.feed(("\r\n".join([*lines, NEXT_RMC]) + "\r\n").encode()), *reader.flush()][:1]


def test_unknown_gga_quality_does_not_deny_the_fix() -> None:
    """GGA quality 9 (beyond 0-8) used to count as "no fix" and cancel the epoch's RMC A: now it abstains."""
    (fix,) = _epoch(_field(GGA_LINE, 6, "9"), RMC_LINE)
    assert fix.lat == pytest.approx(LAT)  # type: ignore[attr-defined]


def test_unknown_rmc_status_neither_asserts_nor_denies() -> None:
    (fix,) = _epoch(GGA_LINE, _field(RMC_LINE, 2, "X"))
    assert fix.quality == 1  # type: ignore[attr-defined]  # GGA's fix stands


@pytest.mark.parametrize(
    ("line", "reason", "exc"),
    [
        (_field(RMC_LINE, 2, ""), Reject.BAD_FIELD, FieldError),  # status missing: not a value at all
        (_field(RMC_LINE, 2, "7"), Reject.BAD_FIELD, FieldError),  # not a letter
        (_field(RMC_LINE, 2, "AV"), Reject.BAD_FIELD, FieldError),  # not one letter
        (_field(GGA_LINE, 6, "x"), Reject.BAD_FIELD, FieldError),  # quality not a number
        (RMC_LINE.replace("*07", "*08"), Reject.BAD_CHECKSUM, ChecksumError),
        (_address(GGA_LINE, "G1GGA"), Reject.UNSUPPORTED, NmeaError),  # a talker ID is two letters
        ("$GNRMC,003956.00,X,4552.65403,S*" + f"{checksum('GNRMC,003956.00,X,4552.65403,S'):02X}", Reject.TRUNCATED,
         NmeaError),
    ],
)  # fmt: skip
def test_invalid_values_are_still_refused(line: str, reason: Reject, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        parse_sentence(line)
    assert info.value.reason == reason  # type: ignore[attr-defined]


def test_decoder_counts_unknown_values_and_calls_the_hook() -> None:
    seen: list[tuple[str, str]] = []
    dec = NmeaDecoder(on_unknown=lambda name, value: seen.append((name, value)))
    line = _field(RMC_LINE, 13, "Z")
    out = dec.feed(((line + "\r\n") * 5).encode())
    assert len(out) == 5
    assert dec.stats.as_dict()["reserved_values"] == {"RMC.nav_status": 5}
    assert dec.stats.rejects == {}
    assert seen == [("RMC.nav_status", "Z")] * 5


def test_serial_source_logs_unknown_values_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    src = SerialNmeaSource("/dev/null-gnss")
    line = _field(GGA_LINE, 6, "9")
    with caplog.at_level(logging.INFO, logger="drivers.gnss.transport"):
        for _ in range(30):
            src.reader.feed((line + "\r\n").encode())
    assert src.reader.summary()["reserved_values"] == {"GGA.quality": 30}
    assert len([r for r in caplog.records if "unknown GGA.quality" in r.getMessage()]) == 1


@settings(max_examples=200, deadline=None)
@given(
    status=st.characters(min_codepoint=0x41, max_codepoint=0x5A),
    mode=st.characters(min_codepoint=0x41, max_codepoint=0x5A),
    nav=st.characters(min_codepoint=0x41, max_codepoint=0x5A),
)
def test_any_letter_in_the_letter_fields_keeps_the_sentence(status: str, mode: str, nav: str) -> None:
    """Whatever letter a receiver puts in RMC status, mode and navigational status, the sentence decodes with
    the same time, position and speed, and only the unknown letters are reported."""
    line = _field(_field(_field(RMC_LINE, 2, status), 12, mode), 13, nav)
    s = parse_sentence(line)
    assert isinstance(s, RMC)
    assert (s.time, s.lat, s.lon, s.speed_knots) == (2396.0, pytest.approx(LAT), pytest.approx(LON), 0.025)
    assert (s.status, s.mode, s.nav_status) == (status, mode, nav)
    assert set(unknown_values(s)) <= {"RMC.status", "RMC.mode", "RMC.nav_status"}
    assert ("RMC.status" in unknown_values(s)) == (status not in "AV")


def test_gsv_signal_id_is_one_hex_digit() -> None:
    """NMEA 4.10/4.11 GSV signal id is a hex digit (1-F): 'B' was silently read as no signal id."""
    line = "$GAGSV,3,3,09,33,62,034,08,7*41"  # ZED-F9P_HPG1.11.log
    s = parse_sentence(line)
    assert isinstance(s, GSV) and s.signal_id == 7
    hexed = parse_sentence(_field(line, 8, "B"))
    assert isinstance(hexed, GSV) and hexed.signal_id == 11 and hexed.sats == s.sats

"""The sans-IO NMEA parser, stream decoder and fix assembler, on sentences taken from the real captures."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gnss.nmea import (
    GBS,
    GGA,
    GLL,
    GNS,
    GSA,
    GST,
    GSV,
    RMC,
    VTG,
    ZDA,
    ChecksumError,
    FixAssembler,
    NmeaDecoder,
    NmeaError,
    NmeaReader,
    Reject,
    SatInView,
    UnsupportedSentence,
    checksum,
    parse_sentence,
    strip_capture_header,
)
from kyojo.contract.vocab import ParseError
from tests.kit import DATA

# --- one real sentence per type, with the full expected object (sources: tests/data/nmea/*.log) ------------

CASES = [
    (  # mt3339.log (DGPS fix, W hemisphere)
        "$GPGGA,202640.000,4404.1306,N,12118.8515,W,2,10,0.98,1127.7,M,-19.6,M,0000,0000*6C",
        GGA("GP", 73600.0, 44 + 4.1306 / 60, -(121 + 18.8515 / 60), 2, 10, 0.98, 1127.7, -19.6),
    ),
    (  # ZED-F9P_HPG1.11.log (S/E hemisphere, empty track, NMEA 4.10 nav status)
        "$GNRMC,003956.00,A,4552.65403,S,17030.00668,E,0.025,,120419,,,A,V*07",
        RMC("GN", 2396.0, "A", -(45 + 52.65403 / 60), 170 + 30.00668 / 60, 0.025, None, date(2019, 4, 12), "A", "V"),
    ),
    (  # ZED-F9P_HPG1.11.log: NMEA 4.10 system id in the last field
        "$GNGSA,A,3,82,66,81,,,,,,,,,,1.05,0.64,0.83,2*0C",
        GSA("GN", "A", 3, (82, 66, 81), 1.05, 0.64, 0.83, 2),
    ),
    (
        "$GPGSV,3,3,12,19,13,123,27,03,07,176,19,05,05,328,13,47,,,*41",
        GSV(
            "GP",
            3,
            3,
            12,
            (
                SatInView(19, 13, 123, 27),
                SatInView(3, 7, 176, 19),
                SatInView(5, 5, 328, 13),
                SatInView(47, None, None, None),
            ),
            None,
        ),
    ),
    ("$GNVTG,,T,,M,0.025,N,0.045,K,A*3B", VTG("GN", None, None, 0.025, 0.045, "A")),
    (
        "$GNGLL,4552.65403,S,17030.00668,E,003956.00,A,A*6C",
        GLL("GN", 2396.0, -(45 + 52.65403 / 60), 170 + 30.00668 / 60, "A", "A"),
    ),
    ("$GPZDA,202640.000,13,04,2015,,*54", ZDA("GP", 73600.0, date(2015, 4, 13))),
    ("$GNGST,003956.00,235111,,,,2.3,3.5,4.0*46", GST("GN", 2396.0, 235111.0, 2.3, 3.5, 4.0)),
    ("$GNGBS,003956.00,2.3,3.5,4.0,,,,,,*55", GBS("GN", 2396.0, 2.3, 3.5, 4.0, None)),
]


@pytest.mark.parametrize(("line", "expected"), CASES, ids=[c[0][1:6] for c in CASES])
def test_parse_real_sentences(line: str, expected: object) -> None:
    got = parse_sentence(line + "\r\n")
    assert got == expected
    assert parse_sentence(line.encode()) == expected


def test_gns_and_bd_talker_from_beidou_capture() -> None:
    lines = [
        ln
        for ln in strip_capture_header(_data("beidou-bd.log")).decode().splitlines()
        if ln.startswith(("$GNGNS", "$BDGSA"))
    ]
    gns = [parse_sentence(x) for x in lines if x.startswith("$GNGNS")]
    assert gns and all(isinstance(g, GNS) for g in gns)
    fixed = [g for g in gns if isinstance(g, GNS) and g.lat is not None]
    assert fixed and all(isinstance(g, GNS) and g.lon is not None and g.lon > 100 for g in fixed)  # near Shanghai
    bd = [parse_sentence(x) for x in lines if x.startswith("$BDGSA")]
    assert bd and all(isinstance(s, GSA) and s.talker == "BD" for s in bd)


def _data(name: str) -> bytes:
    return (DATA / "nmea" / name).read_bytes()


# --- rejects with stable reasons --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason", "exc"),
    [
        # firefly-II.log: the GGA checksums are wrong (and the quality field empty)
        ("$GPGGA,005947.00,3715.6616,N,12157.6709,W,,11,0.8,86.0,M,-30.1,M,,*54", Reject.BAD_CHECKSUM, ChecksumError),
        ("$GPBOD,,T,,M,,*", Reject.NO_CHECKSUM, ChecksumError),  # garmin-geko201.log
        ("$POLYN,EPH,0,00000000", Reject.NO_CHECKSUM, ChecksumError),  # mtk-3301.log
        ("$GNRMC,001053.00,A,4404.14083,N,12118.85886,W,0.", Reject.TRUNCATED, NmeaError),  # ublox-8.log end
        ("$GPRMC,000346.03,A,4808\x00\x00\x00", Reject.GARBLED, NmeaError),  # gp-320fw coldboot
        ("$GPGSA,A,1,,,,,,,,,,,,,,,*1E0,*4E", Reject.GARBLED, NmeaError),  # two sentences glued together
        ("$PMTK010,001*2E", Reject.UNSUPPORTED, UnsupportedSentence),
        ("$GPRMB,V,,,,,,,,,,,,A,S*0E", Reject.UNSUPPORTED, UnsupportedSentence),
        ("$GPGGA,1,2*" + f"{checksum('GPGGA,1,2'):02X}", Reject.TRUNCATED, NmeaError),
        ("GPGGA,202640.000", Reject.GARBLED, NmeaError),
        ("$" + "A" * 300, Reject.TOO_LONG, NmeaError),
    ],
)
def test_rejects_have_stable_reasons(line: str, reason: Reject, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        parse_sentence(line)
    assert isinstance(info.value, ParseError)
    assert info.value.reason == reason


def _with_checksum(body: str) -> str:
    return f"${body}*{checksum(body):02X}"


def test_placeholder_fields_in_void_sentences_are_none_not_errors() -> None:
    # mtk-3301.log before its first fix: latitude 89 deg 60 min (impossible) and a 1980 date, status V
    rmc = parse_sentence("$GPRMC,235946.005,V,8960.000000,N,00000.000000,E,0.000,0.00,050180,,,N*47")
    assert isinstance(rmc, RMC) and rmc.lat is None and rmc.lon is None and rmc.status == "V"
    gga = parse_sentence("$GPGGA,235946.005,8960.000000,N,00000.000000,E,0,0,,137.000,M,13.000,M,,*49")
    assert isinstance(gga, GGA) and gga.lat is None and gga.quality == 0
    # the same impossible latitude in a sentence that claims a fix is an error
    with pytest.raises(NmeaError) as info:
        parse_sentence(_with_checksum("GPRMC,235946.005,A,8960.000000,N,00000.000000,E,0.0,0.0,230808,,,A"))
    assert info.value.reason == Reject.BAD_FIELD
    with pytest.raises(NmeaError):
        parse_sentence(_with_checksum("GPRMC,235946.005,A,4808.9993,N,01135.0798,E,0.0,0.0,310208,,,A"))


# --- the stream decoder -----------------------------------------------------------------------------------


def test_stream_handles_noise_run_together_and_split_chunks() -> None:
    gsa = "$GPGSA,A,1,,,,,,,,,,,,,,,*1E"
    rmc = "$GPRMC,235949.00,V,0000.0000,N,00000.0000,E,,,161206,,,N*44"
    stream = b"\x82b\xba\xaa\xff\x00" + (gsa + rmc + "\r\n").encode() + b" $GNRMC,001053.00,A,4404.14,N,1"
    dec = NmeaDecoder()
    out = []
    for i in range(len(stream)):  # one byte at a time, as a slow serial line
        out += dec.feed(stream[i : i + 1])
    out += dec.flush()
    assert [type(s).__name__ for s in out] == ["GSA", "RMC"]
    assert dec.stats.rejects == {"noise": 1, "truncated": 1}
    assert dec.stats.sentences == 2


def test_interrupted_sentence_is_truncated() -> None:
    dec = NmeaDecoder()
    out = dec.feed(b"$GPGSV,3,1,11,23,87,270,,13,68,270,$GPRMC,000002.00,V,0000.0000,N,00000.0000,E,,,260910,,,N*48\n")
    assert [type(s).__name__ for s in out] == ["RMC"]
    assert dec.stats.rejects == {"truncated": 1}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    reader = NmeaReader()
    for c in chunks:
        reader.feed(c)
    reader.flush()
    s = reader.summary()
    assert s["bytes"] == sum(map(len, chunks))


_NMEA_ALPHABET = st.sampled_from(list("$*,.0123456789ABCDEFGPNSWEVTMKLRZ\r\n \x00\xff-"))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=120), st.text(_NMEA_ALPHABET, max_size=120), st.binary(max_size=120)))
def test_random_lines_raise_only_parse_error(line: str | bytes) -> None:
    reason = None
    try:
        parse_sentence(line)
    except ParseError as err:
        reason = err.reason
    assert reason is None or reason in set(Reject)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([c[0] for c in CASES]),
    st.integers(min_value=1, max_value=70),
    st.sampled_from(list(",.0123456789ANSWEV-")),
)
def test_mutated_real_sentences_with_fixed_checksum(line: str, pos: int, ch: str) -> None:
    """Corrupt a field but recompute the checksum: the field decoders must still raise only ParseError."""
    body = line[1 : line.index("*")]
    pos = min(pos, len(body) - 1)
    body = body[:pos] + ch + body[pos + 1 :]
    with contextlib.suppress(ParseError):
        parse_sentence(_with_checksum(body))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([c[0] for c in CASES] + ["\x00", "garbage", "$GP", "*7F"]), max_size=30))
def test_random_sentence_sequences_assemble_without_raising(lines: list[str]) -> None:
    reader = NmeaReader()
    reader.feed("\r\n".join(lines).encode("latin-1"))
    for fix in reader.flush():
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180


# --- fix assembly -----------------------------------------------------------------------------------------


def _assemble(lines: list[str], **kw: object) -> tuple[list[object], FixAssembler]:
    asm = FixAssembler(**kw)  # type: ignore[arg-type]
    fixes = [f for f in (asm.push(parse_sentence(x)) for x in lines) if f is not None]
    last = asm.flush()
    return [*fixes, *([last] if last else [])], asm


MT3339_EPOCH = [
    "$GPGGA,202640.000,4404.1306,N,12118.8515,W,2,10,0.98,1127.7,M,-19.6,M,0000,0000*6C",
    "$GPGSA,A,3,20,16,09,03,07,10,23,19,27,30,,,1.64,0.98,1.31*05",
    "$GPRMC,202640.000,A,4404.1306,N,12118.8515,W,0.03,225.97,130415,,,D*73",
    "$GPZDA,202640.000,13,04,2015,,*54",
]


def test_epoch_combines_date_from_rmc_with_gga() -> None:
    fixes, _ = _assemble(MT3339_EPOCH)
    assert len(fixes) == 1
    f = fixes[0]
    assert f.as_dict() == {  # type: ignore[attr-defined]
        "time": "2015-04-13T20:26:40.000Z",
        "lat": 44.068843333,
        "lon": -121.314191667,
        "alt_m": 1127.7,
        "speed_mps": round(0.03 * 1852 / 3600, 4),
        "course_deg": 225.97,
        "quality": 2,
        "sats": 10,
        "hdop": 0.98,
    }


def test_simulated_demo_mode_is_not_a_fix() -> None:
    # garmin-geko201.log: GGA quality 8 (simulator) while RMC says V
    lines = [
        "$GPRMC,214350,V,4023.8600,N,00339.1630,W,10.8,0.0,140605,2.5,W,S*21",
        "$GPGGA,214350,4023.8600,N,00339.1630,W,8,09,2.0,695.7,M,51.6,M,,*5A",
    ]
    fixes, asm = _assemble(lines)
    assert fixes == [] and asm.stats.simulated == 1
    fixes, _ = _assemble(lines, accept_simulated=True)
    assert len(fixes) == 1


def test_week_rollover_date_moves_forward_1024_weeks() -> None:
    # gp-320fw coldboot: the receiver reports 1999-08-22 for 2019-04-07 (10-bit week counter wrapped)
    line = _with_checksum("GPRMC,000425.00,A,4808.9993,N,01135.0798,E,000.1,000.0,220899,003.0,E,A")
    fixes, asm = _assemble([line], date_floor=date(2010, 1, 1))
    assert fixes[0].time == datetime(2019, 4, 7, 0, 4, 25, tzinfo=UTC)  # type: ignore[attr-defined]
    assert asm.stats.rollover_corrected == 1


def test_date_carries_over_midnight() -> None:
    rmc = _with_checksum("GPRMC,235959.00,A,4808.9993,N,01135.0798,E,0.0,0.0,070419,,,A")
    gga = _with_checksum("GPGGA,000000.00,4808.9993,N,01135.0798,E,1,04,01.4,00460.0,M,0046.2,M,,")
    fixes, _ = _assemble([rmc, gga])
    assert [f.time for f in fixes] == [  # type: ignore[attr-defined]
        datetime(2019, 4, 7, 23, 59, 59, tzinfo=UTC),
        datetime(2019, 4, 8, 0, 0, 0, tzinfo=UTC),
    ]


def test_placeholder_position_and_lost_fix() -> None:
    zero = _with_checksum("GPGGA,000410.00,0000.0000,N,00000.0000,E,1,04,1.0,1.0,M,,M,,")
    fixes, asm = _assemble([zero])
    assert fixes == [] and asm.stats.placeholder == 1
    lost = "$GPRMC,,V,,,,,,,,,,N*53"  # telit-he910.log before the first fix: every field empty, even the time
    fixes, asm = _assemble([lost, "$GPGGA,,,,,,0,,,,M,,M,,*66", lost])
    assert fixes == [] and asm.stats.no_fix == 2


def test_parser_module_does_no_io_imports() -> None:
    import subprocess
    import sys

    code = "import sys, drivers.gnss.nmea, drivers.gnss.gpsd_json, drivers.gnss.truck; " + (
        "print(sorted(m for m in ('serial', 'asyncio', 'socket') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"

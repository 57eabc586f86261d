"""Sans-IO NMEA 0183 decoding: bytes -> sentences -> fixes.

Three layers, none of which does I/O (no serial, socket or asyncio import here):

- :func:`parse_sentence` turns one line (``$GPGGA,...*hh``) into a frozen sentence object, or raises an
  :class:`NmeaError` (a :class:`drivers.base.ParseError`) whose ``reason`` is one of :class:`Reject`.
- :class:`NmeaDecoder` takes arbitrary byte chunks as they come off a serial line (binary noise, run-together
  and truncated sentences, CR, LF or CRLF) and returns the sentences it could parse. It never raises on bad
  input: it counts each reject by reason in :attr:`NmeaDecoder.stats`.
- :class:`FixAssembler` groups the sentences of one epoch (same UTC time of day) and, when the next epoch
  starts, turns them into one :class:`Fix` (date from RMC/ZDA, time, position and altitude from GGA, speed and
  course from RMC/VTG, quality, satellites, HDOP) or decides there was no fix.

:class:`NmeaReader` chains the decoder and the assembler (bytes in, fixes out).

NMEA 0183 framing facts used throughout: a sentence starts with ``$``, then the address field (2-character
talker ID + 3-character sentence type, or ``P`` + maker code for proprietary sentences), comma-separated data
fields, ``*`` and two hex digits: the XOR of every byte strictly between ``$`` and ``*``; it ends with CR LF.
The standard caps a sentence at 82 characters including ``$`` and CR LF; real receivers exceed it slightly
(NMEA 4.10 GSV/GSA extras, proprietary sentences), so the decoder allows up to :data:`MAX_SENTENCE`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from drivers.base import ParseError

#: longest line (bytes, without CR LF) the decoder still tries to parse; longer runs are junk
MAX_SENTENCE = 256
#: talker IDs we decode: GPS, any-GNSS combined, GLONASS, Galileo, BeiDou (NMEA 4.10 and the older BD), QZSS,
#: NavIC (IRNSS)
TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB", "BD", "GQ", "GI"})
#: 1 international knot = 1852 m per hour, exactly
KNOT_MPS = 1852.0 / 3600.0
#: GPS week-number rollover: the 10-bit week counter wraps every 1024 weeks
GPS_ROLLOVER = timedelta(weeks=1024)


class Reject(StrEnum):
    """Stable reasons for rejecting input (counter labels, also :attr:`NmeaError.reason`)."""

    BAD_CHECKSUM = "bad_checksum"  # '*' followed by something other than the 2 hex digits of the XOR
    NO_CHECKSUM = "no_checksum"  # complete-looking sentence without '*hh' (or '*' with no digits)
    TRUNCATED = "truncated"  # cut short: too few fields, or interrupted by the next '$' / end of stream
    GARBLED = "garbled"  # non-printable bytes, or an address field that is not talker+type
    BAD_FIELD = "bad_field"  # a field of a valid-status sentence does not parse (or is out of range)
    UNSUPPORTED = "unsupported"  # well-formed but not a sentence we decode (proprietary $P..., RMB, BOD...)
    NOISE = "noise"  # bytes between sentences that are not a sentence at all (binary, line junk)
    TOO_LONG = "too_long"  # a line longer than MAX_SENTENCE


class NmeaError(ParseError):
    """A line that is not a decodable NMEA sentence; ``reason`` is a :class:`Reject` value."""


class ChecksumError(NmeaError):
    """Missing or wrong checksum."""


class UnsupportedSentence(NmeaError):
    """A well-formed sentence of a type (or talker) this parser does not decode."""

    def __init__(self, sentence_type: str, *, raw: bytes | str | None = None) -> None:
        super().__init__(Reject.UNSUPPORTED, raw=raw, detail=sentence_type)
        self.sentence_type = sentence_type


class FieldError(NmeaError):
    """A data field that does not parse."""


# ----------------------------------------------------------------------------------------------------------
# Sentences
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GGA:
    """Global positioning system fix data."""

    talker: str
    time: float | None  # seconds since UTC midnight
    lat: float | None
    lon: float | None
    quality: int | None  # 0 none, 1 GPS, 2 DGPS, 3 PPS, 4 RTK, 5 float RTK, 6 estimated, 7 manual, 8 simulator
    sats: int | None
    hdop: float | None
    alt_m: float | None  # above mean sea level
    geoid_sep_m: float | None


@dataclass(frozen=True, slots=True)
class RMC:
    """Recommended minimum specific GNSS data."""

    talker: str
    time: float | None
    status: str  # A valid, V void
    lat: float | None
    lon: float | None
    speed_knots: float | None
    course_deg: float | None
    date: date | None
    mode: str | None  # NMEA 2.3+: A autonomous, D differential, E estimated, M manual, S simulator, N no fix


@dataclass(frozen=True, slots=True)
class GSA:
    """GNSS DOP and active satellites."""

    talker: str
    op_mode: str  # M manual, A automatic 2D/3D
    fix_type: int | None  # 1 no fix, 2 2D, 3 3D
    prns: tuple[int, ...]
    pdop: float | None
    hdop: float | None
    vdop: float | None
    system_id: int | None  # NMEA 4.10: 1 GPS, 2 GLONASS, 3 Galileo, 4 BeiDou, 5 QZSS


@dataclass(frozen=True, slots=True)
class SatInView:
    prn: int
    elevation_deg: int | None
    azimuth_deg: int | None
    snr_dbhz: int | None


@dataclass(frozen=True, slots=True)
class GSV:
    """GNSS satellites in view (one of ``total`` messages)."""

    talker: str
    total: int
    number: int
    in_view: int | None
    sats: tuple[SatInView, ...]
    signal_id: int | None


@dataclass(frozen=True, slots=True)
class VTG:
    """Course over ground and ground speed."""

    talker: str
    course_true_deg: float | None
    course_mag_deg: float | None
    speed_knots: float | None
    speed_kmh: float | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class GLL:
    """Geographic position, latitude/longitude."""

    talker: str
    time: float | None
    lat: float | None
    lon: float | None
    status: str
    mode: str | None


@dataclass(frozen=True, slots=True)
class ZDA:
    """Time and date (UTC)."""

    talker: str
    time: float | None
    date: date | None


@dataclass(frozen=True, slots=True)
class GNS:
    """GNSS fix data (multi-constellation successor of GGA)."""

    talker: str
    time: float | None
    lat: float | None
    lon: float | None
    mode: str  # one character per constellation (GPS, GLONASS, Galileo, BeiDou, ...)
    sats: int | None
    hdop: float | None
    alt_m: float | None
    geoid_sep_m: float | None


@dataclass(frozen=True, slots=True)
class GST:
    """GNSS pseudorange error statistics (1-sigma, metres)."""

    talker: str
    time: float | None
    rms: float | None
    lat_err_m: float | None
    lon_err_m: float | None
    alt_err_m: float | None


@dataclass(frozen=True, slots=True)
class GBS:
    """GNSS satellite fault detection (expected errors, metres)."""

    talker: str
    time: float | None
    lat_err_m: float | None
    lon_err_m: float | None
    alt_err_m: float | None
    failed_prn: int | None


Sentence = GGA | RMC | GSA | GSV | VTG | GLL | ZDA | GNS | GST | GBS


# ----------------------------------------------------------------------------------------------------------
# Field decoders (raise FieldError; empty field -> None)
# ----------------------------------------------------------------------------------------------------------


def _float(s: str, what: str) -> float | None:
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        raise FieldError(Reject.BAD_FIELD, detail=f"{what}={s!r}") from None
    if not math.isfinite(v):
        raise FieldError(Reject.BAD_FIELD, detail=f"{what}={s!r}")
    return v


def _int(s: str, what: str) -> int | None:
    if not s:
        return None
    if not s.isdigit():
        raise FieldError(Reject.BAD_FIELD, detail=f"{what}={s!r}")
    return int(s)


def _tod(s: str) -> float | None:
    """UTC time ``hhmmss`` or ``hhmmss.ss`` -> seconds since midnight (second 60 allowed for a leap second)."""
    if not s:
        return None
    if len(s) < 6 or not s[:6].isdigit() or (len(s) > 6 and (s[6] != "." or not s[7:].isdigit())):
        raise FieldError(Reject.BAD_FIELD, detail=f"time={s!r}")
    hh, mm, ss = int(s[0:2]), int(s[2:4]), float(s[4:])
    if hh > 23 or mm > 59 or ss >= 61:
        raise FieldError(Reject.BAD_FIELD, detail=f"time={s!r}")
    return hh * 3600 + mm * 60 + ss


def _coord(value: str, hemi: str, deg_digits: int, limit: float, hemis: str) -> float | None:
    """``ddmm.mmmm`` (latitude, 2 degree digits) or ``dddmm.mmmm`` (longitude, 3) plus hemisphere -> degrees.

    The minutes may carry any number of decimals (4 common, 5 u-blox, 6-7 MediaTek/SkyTraq). South and West
    are negative.
    """
    if not value and not hemi:
        return None
    dot = value.find(".")
    int_part = value if dot < 0 else value[:dot]
    frac = "" if dot < 0 else value[dot + 1 :]
    if len(int_part) != deg_digits + 2 or not int_part.isdigit() or (frac and not frac.isdigit()):
        raise FieldError(Reject.BAD_FIELD, detail=f"coordinate={value!r}")
    if hemi not in hemis:
        raise FieldError(Reject.BAD_FIELD, detail=f"hemisphere={hemi!r}")
    deg = int(int_part[:deg_digits])
    minutes = float(int_part[deg_digits:] + ("." + frac if frac else ""))
    if minutes >= 60.0:
        raise FieldError(Reject.BAD_FIELD, detail=f"minutes >= 60 in {value!r}")
    v = deg + minutes / 60.0
    if v > limit:
        raise FieldError(Reject.BAD_FIELD, detail=f"coordinate out of range {value!r}")
    return -v if hemi == hemis[1] else v


def _latlon(f: Sequence[str], i: int) -> tuple[float | None, float | None]:
    """Latitude at fields i, i+1 and longitude at i+2, i+3."""
    lat = _coord(f[i], f[i + 1], 2, 90.0, "NS")
    lon = _coord(f[i + 2], f[i + 3], 3, 180.0, "EW")
    if (lat is None) != (lon is None):
        raise FieldError(Reject.BAD_FIELD, detail="latitude without longitude")
    return lat, lon


def _ddmmyy(s: str) -> date | None:
    """RMC date ``ddmmyy``; two-digit years 80-99 are 19xx (GPS time starts in 1980), 00-79 are 20xx."""
    if not s:
        return None
    if len(s) != 6 or not s.isdigit():
        raise FieldError(Reject.BAD_FIELD, detail=f"date={s!r}")
    dd, mm, yy = int(s[0:2]), int(s[2:4]), int(s[4:6])
    try:
        return date(1900 + yy if yy >= 80 else 2000 + yy, mm, dd)
    except ValueError:
        raise FieldError(Reject.BAD_FIELD, detail=f"date={s!r}") from None


def _field(f: Sequence[str], i: int) -> str:
    return f[i] if i < len(f) else ""


def _need(f: Sequence[str], n: int, raw: str) -> None:
    """At least ``n`` fields including the address field."""
    if len(f) < n:
        raise NmeaError(Reject.TRUNCATED, raw=raw, detail=f"{f[0]} has {len(f)} fields, needs {n}")


def _void_safe(fn: Any, valid: bool, *args: Any) -> Any:
    """Decode a field; in a sentence that itself says "no fix", unparseable placeholders just become None.

    Receivers without a fix fill position and date with junk (``8960.000000,N``, ``050180``); that is not an
    error of the sentence, only of data nobody may use.
    """
    try:
        return fn(*args)
    except FieldError:
        if valid:
            raise
        return (None, None) if fn is _latlon else None


# ----------------------------------------------------------------------------------------------------------
# Sentence decoders. Field indices below count the address field ("GPGGA") as field 0.
# ----------------------------------------------------------------------------------------------------------


def _gga(t: str, f: list[str], raw: str) -> GGA:
    # 1 time, 2-3 lat N/S, 4-5 lon E/W, 6 quality, 7 satellites used, 8 HDOP, 9 altitude MSL, 10 'M',
    # 11 geoid separation, 12 'M', 13 age of DGPS data, 14 DGPS station id
    _need(f, 10, raw)
    quality = _int(f[6], "quality")
    valid = quality is not None and quality > 0
    lat, lon = _void_safe(_latlon, valid, f, 2)
    return GGA(
        t,
        _tod(f[1]),
        lat,
        lon,
        quality,
        _int(f[7], "satellites"),
        _float(f[8], "hdop"),
        _float(f[9], "altitude"),
        _float(_field(f, 11), "geoid separation"),
    )


def _rmc(t: str, f: list[str], raw: str) -> RMC:
    # 1 time, 2 status A/V, 3-4 lat, 5-6 lon, 7 speed over ground (knots), 8 course over ground (deg true),
    # 9 date ddmmyy, 10-11 magnetic variation, 12 mode (NMEA 2.3), 13 navigational status (NMEA 4.10)
    _need(f, 10, raw)
    status = f[2]
    if status not in ("A", "V"):
        raise FieldError(Reject.BAD_FIELD, raw=raw, detail=f"status={status!r}")
    valid = status == "A"
    lat, lon = _void_safe(_latlon, valid, f, 3)
    return RMC(
        t,
        _tod(f[1]),
        status,
        lat,
        lon,
        _void_safe(_float, valid, f[7], "speed"),
        _void_safe(_float, valid, f[8], "course"),
        _void_safe(_ddmmyy, valid, f[9]),
        _field(f, 12) or None,
    )


def _system_id(s: str) -> int | None:
    # NMEA 4.10 GNSS system id (1-15); SiRF-TriG puts a DOP-like decimal in this slot, which is not an id
    return int(s, 16) if len(s) == 1 and s in _HEX else None


def _gsa(t: str, f: list[str], raw: str) -> GSA:
    # 1 mode M/A, 2 fix type 1/2/3, 3-14 PRNs of satellites used (12 slots), 15 PDOP, 16 HDOP, 17 VDOP,
    # 18 GNSS system id (NMEA 4.10)
    _need(f, 18, raw)
    prns = tuple(p for p in (_int(x, "prn") for x in f[3:15]) if p is not None)
    return GSA(
        t,
        f[1],
        _int(f[2], "fix type"),
        prns,
        _float(f[15], "pdop"),
        _float(f[16], "hdop"),
        _float(f[17], "vdop"),
        _system_id(_field(f, 18)),
    )


def _gsv(t: str, f: list[str], raw: str) -> GSV:
    # 1 number of messages, 2 message number, 3 satellites in view, then per satellite (up to 4):
    # PRN, elevation (deg), azimuth (deg), SNR (dB-Hz); NMEA 4.10 appends a signal id
    _need(f, 4, raw)
    total, number = _int(f[1], "total"), _int(f[2], "number")
    if total is None or number is None or not 1 <= number <= total:
        raise FieldError(Reject.BAD_FIELD, raw=raw, detail="message numbering")
    body = f[4:]
    signal = None
    if len(body) % 4 == 1:
        signal = _int(body[-1], "signal id") if body[-1].isdigit() else None
        body = body[:-1]
    elif len(body) % 4:
        raise NmeaError(Reject.TRUNCATED, raw=raw, detail="partial satellite block")
    sats = []
    for k in range(0, len(body), 4):
        prn = _int(body[k], "prn")
        if prn is None:
            continue
        sats.append(SatInView(prn, _int(body[k + 1], "el"), _int(body[k + 2], "az"), _int(body[k + 3], "snr")))
    return GSV(t, total, number, _int(f[3], "in view"), tuple(sats), signal)


def _vtg(t: str, f: list[str], raw: str) -> VTG:
    # 1 course true, 2 'T', 3 course magnetic, 4 'M', 5 speed knots, 6 'N', 7 speed km/h, 8 'K', 9 mode (2.3)
    _need(f, 9, raw)
    return VTG(
        t,
        _float(f[1], "course"),
        _float(f[3], "magnetic course"),
        _float(f[5], "speed knots"),
        _float(f[7], "speed km/h"),
        _field(f, 9) or None,
    )


def _gll(t: str, f: list[str], raw: str) -> GLL:
    # 1-2 lat, 3-4 lon, 5 time, 6 status A/V, 7 mode (2.3)
    _need(f, 7, raw)
    status = f[6]
    if status not in ("A", "V"):
        raise FieldError(Reject.BAD_FIELD, raw=raw, detail=f"status={status!r}")
    lat, lon = _void_safe(_latlon, status == "A", f, 1)
    return GLL(t, _tod(f[5]), lat, lon, status, _field(f, 7) or None)


def _zda(t: str, f: list[str], raw: str) -> ZDA:
    # 1 time, 2 day, 3 month, 4 year (4 digits), 5 local zone hours, 6 local zone minutes
    _need(f, 5, raw)
    day, month, year = _int(f[2], "day"), _int(f[3], "month"), _int(f[4], "year")
    d = None
    if day is not None and month is not None and year is not None:
        try:
            d = date(year, month, day)
        except ValueError:
            raise FieldError(Reject.BAD_FIELD, raw=raw, detail=f"date {year}-{month}-{day}") from None
    return ZDA(t, _tod(f[1]), d)


def _gns(t: str, f: list[str], raw: str) -> GNS:
    # 1 time, 2-3 lat, 4-5 lon, 6 mode (one char per constellation: N no fix, A autonomous, D differential,
    # P precise, R RTK, F float RTK, E estimated, M manual, S simulator), 7 satellites, 8 HDOP, 9 altitude MSL,
    # 10 geoid separation, 11 age of differential data, 12 station id, 13 navigational status (4.10)
    _need(f, 11, raw)
    mode = f[6]
    valid = any(c in "ADPRFE" for c in mode)
    lat, lon = _void_safe(_latlon, valid, f, 2)
    return GNS(
        t,
        _tod(f[1]),
        lat,
        lon,
        mode,
        _int(f[7], "satellites"),
        _float(f[8], "hdop"),
        _float(f[9], "altitude"),
        _float(f[10], "geoid separation"),
    )


def _gst(t: str, f: list[str], raw: str) -> GST:
    # 1 time, 2 RMS of pseudorange residuals, 3 semi-major sigma, 4 semi-minor sigma, 5 orientation,
    # 6 latitude sigma (m), 7 longitude sigma (m), 8 altitude sigma (m)
    _need(f, 9, raw)
    return GST(
        t,
        _tod(f[1]),
        _float(f[2], "rms"),
        _float(f[6], "lat err"),
        _float(f[7], "lon err"),
        _float(f[8], "alt err"),
    )


def _gbs(t: str, f: list[str], raw: str) -> GBS:
    # 1 time, 2 expected latitude error (m), 3 longitude error, 4 altitude error, 5 id of most likely failed
    # satellite, 6 probability of missed detection, 7 bias estimate, 8 bias std dev, (4.10: 9 system, 10 signal)
    _need(f, 9, raw)
    return GBS(
        t,
        _tod(f[1]),
        _float(f[2], "lat err"),
        _float(f[3], "lon err"),
        _float(f[4], "alt err"),
        _int(f[5], "failed prn"),
    )


_DECODERS: dict[str, Any] = {
    "GGA": _gga,
    "RMC": _rmc,
    "GSA": _gsa,
    "GSV": _gsv,
    "VTG": _vtg,
    "GLL": _gll,
    "ZDA": _zda,
    "GNS": _gns,
    "GST": _gst,
    "GBS": _gbs,
}
#: minimum field count per type (address included), used to tell a truncated sentence from a checksum-less one
_MIN_FIELDS = {"GGA": 10, "RMC": 10, "GSA": 18, "GSV": 4, "VTG": 9, "GLL": 7, "ZDA": 5, "GNS": 11, "GST": 9, "GBS": 9}

_HEX = frozenset("0123456789ABCDEFabcdef")


def checksum(body: str | bytes) -> int:
    """XOR of the bytes between ``$`` and ``*`` (pass exactly that part)."""
    data = body.encode("ascii", "replace") if isinstance(body, str) else body
    c = 0
    for b in data:
        c ^= b
    return c


def parse_sentence(line: str | bytes) -> Sentence:
    """Decode one sentence, ``$`` to checksum (trailing CR/LF/spaces ignored).

    Raises :class:`NmeaError` (reason in :class:`Reject`) and nothing else: :class:`ChecksumError` for a
    missing or wrong checksum, :class:`UnsupportedSentence` for well-formed sentences of other types or talkers
    (proprietary ``$P...``), :class:`FieldError` for fields that do not parse.
    """
    if isinstance(line, bytes | bytearray):
        try:
            text = bytes(line).decode("ascii")
        except UnicodeDecodeError:
            raise NmeaError(Reject.GARBLED, raw=bytes(line), detail="non-ASCII bytes") from None
    elif isinstance(line, str):
        text = line
    else:
        raise NmeaError(Reject.GARBLED, detail=f"not text: {type(line).__name__}")
    text = text.rstrip("\r\n ")
    if not text.startswith("$"):
        raise NmeaError(Reject.GARBLED, raw=text, detail="does not start with '$'")
    if len(text) > MAX_SENTENCE:
        raise NmeaError(Reject.TOO_LONG, raw=text, detail=f"{len(text)} characters")
    if not text.isprintable() or not text.isascii():
        raise NmeaError(Reject.GARBLED, raw=text, detail="non-printable characters")
    star = text.find("*")
    body = text[1:] if star < 0 else text[1:star]
    parts = body.split(",")
    address = parts[0]
    if star < 0 or star == len(text) - 1:
        # no checksum: a sentence cut short, or one whose sender omits it (legal only in very old NMEA)
        typ = address[2:]
        if len(address) < 5 and not address.startswith("P"):
            raise NmeaError(Reject.TRUNCATED, raw=text, detail="no checksum, no complete address")
        if len(address) == 5 and typ in _MIN_FIELDS and len(parts) < _MIN_FIELDS[typ]:
            raise NmeaError(Reject.TRUNCATED, raw=text, detail="no checksum and too few fields")
        raise ChecksumError(Reject.NO_CHECKSUM, raw=text)
    digits = text[star + 1 :]
    if len(digits) != 2 or not set(digits) <= _HEX:
        # e.g. "*1E0,*4E": the tail of another sentence glued on; the line is damaged, whatever the XOR says
        raise NmeaError(Reject.GARBLED, raw=text, detail=f"checksum field {digits[:8]!r}")
    want, got = int(digits, 16), checksum(body)
    if want != got:
        raise ChecksumError(Reject.BAD_CHECKSUM, raw=text, detail=f"sent {want:02X}, computed {got:02X}")
    if "$" in body:
        raise NmeaError(Reject.GARBLED, raw=text, detail="'$' inside a sentence")
    if address.startswith("P") and len(address) >= 2 and address.isalnum():
        raise UnsupportedSentence(address, raw=text)  # proprietary: P + maker code (+ type)
    if len(address) != 5 or not address.isalnum() or not address.isupper():
        raise NmeaError(Reject.GARBLED, raw=text, detail=f"address field {address!r}")
    talker, typ = address[:2], address[2:]
    decoder = _DECODERS.get(typ)
    if decoder is None or talker not in TALKERS:
        raise UnsupportedSentence(address, raw=text)
    try:
        sentence: Sentence = decoder(talker, parts, text)
    except FieldError as err:
        if err.raw is None:
            err.raw = text
        raise
    return sentence


# ----------------------------------------------------------------------------------------------------------
# Stream decoder
# ----------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DecoderStats:
    """What the stream decoder saw. ``rejects`` counts by :class:`Reject` value (``unsupported`` excluded)."""

    bytes: int = 0
    sentences: int = 0  # decoded
    by_type: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    unsupported: Counter[str] = field(default_factory=Counter)  # well-formed, not ours: by address field

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "sentences": self.sentences,
            "by_type": dict(sorted(self.by_type.items())),
            "rejects": dict(sorted(self.rejects.items())),
            "unsupported": dict(sorted(self.unsupported.items())),
        }


class NmeaDecoder:
    """Bytes as they arrive -> decoded sentences. Never raises on input; counts what it drops.

    Lines end at CR or LF. Within a line every ``$`` starts a sentence, so two sentences run together
    (``...*1E$GPRMC,...``) both get their chance, and a sentence interrupted by the next ``$`` fails its own
    checks (``truncated``). Text before the first ``$`` of a line is ``noise`` unless blank. A partial line
    waits for more bytes; :meth:`flush` decodes it at the end of a stream.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()
        self.last_error: NmeaError | None = None

    def feed(self, data: bytes) -> list[Sentence]:
        """Decode every complete line in ``data`` (plus what was buffered)."""
        self.stats.bytes += len(data)
        self._buf += data
        out: list[Sentence] = []
        start = 0
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n:
            b = buf[i]
            if b in (0x0A, 0x0D):
                if i > start:
                    self._line(bytes(buf[start:i]), out)
                start = i + 1
            i += 1
        rest = buf[start:]
        if len(rest) > MAX_SENTENCE:
            # no line end in sight: keep only from the last '$' (a sentence may be arriving), drop the rest
            cut = rest.rfind(b"$")
            keep = rest[cut:] if cut >= 0 and len(rest) - cut <= MAX_SENTENCE else b""
            self._line(bytes(rest[: len(rest) - len(keep)]), out)
            rest = bytearray(keep)
        self._buf = bytearray(rest)
        return out

    def flush(self) -> list[Sentence]:
        """End of stream: decode the partial last line (usually a truncated sentence)."""
        out: list[Sentence] = []
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf = bytearray()
        return out

    def reset(self) -> None:
        """Forget a partial line (e.g. after a reconnect); keeps the counters."""
        self._buf = bytearray()

    def _line(self, line: bytes, out: list[Sentence]) -> None:
        parts = line.split(b"$")
        head = parts[0]
        if head.strip(b" \t\x00"):
            self._reject(NmeaError(Reject.NOISE, raw=head, detail=f"{len(head)} bytes"))
        last = len(parts) - 1
        for k, part in enumerate(parts[1:], start=1):
            if k < last and b"*" not in part:
                # the next '$' arrived before this sentence's checksum: it was cut off
                self._reject(NmeaError(Reject.TRUNCATED, raw=b"$" + part, detail="interrupted by '$'"))
                continue
            self._one(b"$" + part, out)

    def _one(self, raw: bytes, out: list[Sentence]) -> None:
        try:
            s = parse_sentence(raw)
        except UnsupportedSentence as err:
            self.stats.unsupported[err.sentence_type] += 1
            return
        except NmeaError as err:
            self._reject(err)
            return
        self.stats.sentences += 1
        self.stats.by_type[type(s).__name__] += 1
        out.append(s)

    def _reject(self, err: NmeaError) -> None:
        self.stats.rejects[err.reason] += 1
        self.last_error = err


# ----------------------------------------------------------------------------------------------------------
# Fix assembly
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fix:
    """One position fix assembled from an epoch's sentences. Units: degrees, metres, m/s, degrees true.

    ``time`` is None when no trustworthy date has been seen yet (no valid RMC/ZDA); ``time_of_day`` is always
    known (seconds since UTC midnight).
    """

    time: datetime | None
    time_of_day: float
    lat: float
    lon: float
    alt_m: float | None
    speed_mps: float | None
    course_deg: float | None
    quality: int
    sats: int | None
    hdop: float | None

    @property
    def ts(self) -> float | None:
        """POSIX seconds, or None without a date."""
        return None if self.time is None else self.time.timestamp()

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``kyojo gnss replay``."""
        t = None
        if self.time is not None:
            t = self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "time": t,
            "lat": round(self.lat, 9),
            "lon": round(self.lon, 9),
            "alt_m": self.alt_m,
            "speed_mps": None if self.speed_mps is None else round(self.speed_mps, 4),
            "course_deg": self.course_deg,
            "quality": self.quality,
            "sats": self.sats,
            "hdop": self.hdop,
        }


@dataclass(slots=True)
class AssemblerStats:
    epochs: int = 0
    fixes: int = 0
    no_fix: int = 0  # epochs where a sentence says "no fix" (or nothing says "fix")
    simulated: int = 0  # epochs flagged as simulator / manual input (GGA 7-8, mode S/M)
    placeholder: int = 0  # epochs claiming a fix at exactly 0 N 0 E
    no_date: int = 0  # fixes emitted without a date (time None)
    rollover_corrected: int = 0  # dates moved forward by 1024 weeks

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


#: sentences that carry a UTC time of day (and so delimit epochs)
_TIMED = (GGA, RMC, GLL, GNS, ZDA, GST, GBS)
#: RMC/GLL/GNS mode letter -> GGA-style quality (NMEA 2.3 mode indicator)
_MODE_QUALITY = {"A": 1, "D": 2, "P": 3, "R": 4, "F": 5, "E": 6}
_DEFAULT_DATE_FLOOR = date(2000, 1, 1)


class FixAssembler:
    """Sentences in receiver order -> one :class:`Fix` per epoch that has a valid position.

    An epoch is the run of sentences sharing one UTC time of day; sentences without a time (GSA, GSV, VTG)
    belong to the epoch in progress. The epoch closes when a sentence with another time arrives (or on
    :meth:`flush`), so a fix comes out one sentence after its epoch ends.

    Validity: an epoch is a fix when at least one sentence asserts a fix (GGA quality 1-6, RMC/GLL status A,
    GNS mode with A/D/P/R/F/E) and none asserts the opposite (GGA quality 0, status V, mode N) or a simulated
    or manual position (GGA 7/8, mode S/M: a Garmin in demo mode reports GGA quality 8 and RMC V; such
    positions must never reach a city dashboard unless ``accept_simulated``). A fix at exactly 0 N 0 E is a
    placeholder, not a position.

    Dates: RMC dates are trusted only from status-A sentences, ZDA dates only in epochs that are fixes. Dates
    before ``date_floor`` are GPS week-rollover artefacts (a 10-bit week counter) and move forward in steps of
    1024 weeks until they reach the floor. Epochs without their own date reuse the last one, turning the day
    over at midnight.
    """

    def __init__(self, *, date_floor: date = _DEFAULT_DATE_FLOOR, accept_simulated: bool = False) -> None:
        self.date_floor = date_floor
        self.accept_simulated = accept_simulated
        self.stats = AssemblerStats()
        self._tod: float | None = None
        self._sentences: list[Sentence] = []
        self._keys: set[tuple[str, str]] = set()
        self._last_date: date | None = None
        self._last_tod: float | None = None

    def push(self, s: Sentence) -> Fix | None:
        """Add one sentence; returns the fix of the previous epoch when this sentence starts a new one."""
        fix = None
        if isinstance(s, _TIMED):
            t = s.time
            key = (s.talker, type(s).__name__)
            if (
                (t is not None and self._tod is not None and abs(t - self._tod) > 1e-3)
                or key in self._keys
                or (t is not None and self._tod is None and self._keys)
            ):
                # a new time, or a timed sentence we already have (no-fix receivers leave the time empty)
                fix = self._close()
            if t is not None:
                self._tod = t
            self._keys.add(key)
        self._sentences.append(s)
        return fix

    def flush(self) -> Fix | None:
        """Close the epoch in progress (end of stream, or the line went quiet)."""
        return self._close()

    def reset(self) -> None:
        """Drop the epoch in progress (after a reconnect); keeps the last date and the counters."""
        self._tod = None
        self._sentences = []
        self._keys = set()

    def _rollover(self, d: date) -> date:
        if d >= self.date_floor:
            return d
        while d < self.date_floor:
            d += GPS_ROLLOVER
        self.stats.rollover_corrected += 1
        return d

    def _close(self) -> Fix | None:
        ss, tod = self._sentences, self._tod
        self._sentences, self._tod, self._keys = [], None, set()
        if not ss:
            return None
        self.stats.epochs += 1
        if tod is None:  # only possible without a fix: receivers send empty time fields until they have one
            self.stats.no_fix += 1
            return None
        yes = no = sim = False
        pos: tuple[float, float] | None = None
        pos_rank = 9
        alt = speed = course = hdop = gsa_hdop = vtg_speed = vtg_course = None
        quality: int | None = None
        mode_quality: int | None = None
        sats_gn: int | None = None
        sats_by_talker: dict[str, int] = {}
        rmc_date = zda_date = sim_date = None

        def position(lat: float | None, lon: float | None, rank: int) -> None:
            nonlocal pos, pos_rank
            if lat is not None and lon is not None and rank < pos_rank:
                pos, pos_rank = (lat, lon), rank

        for s in ss:
            if isinstance(s, GGA):
                if s.quality is not None:
                    if 1 <= s.quality <= 6:
                        yes = True
                        quality = s.quality if quality is None else max(quality, s.quality)
                    elif s.quality in (7, 8):
                        sim = True
                    else:
                        no = True
                if s.quality is not None and s.quality > 0:
                    position(s.lat, s.lon, 0 if s.talker == "GN" else 1)
                    alt = s.alt_m if alt is None else alt
                    hdop = s.hdop if hdop is None else hdop
                    if s.sats is not None:
                        if s.talker == "GN":
                            sats_gn = s.sats
                        else:
                            sats_by_talker[s.talker] = s.sats
            elif isinstance(s, RMC):
                if s.status == "A" and s.mode not in ("N", "S", "M"):
                    yes = True
                    position(s.lat, s.lon, 3)
                    rmc_date = s.date or rmc_date
                    mode_quality = mode_quality or _MODE_QUALITY.get(s.mode or "A")
                    speed = None if s.speed_knots is None else s.speed_knots * KNOT_MPS
                    course = s.course_deg
                elif s.mode in ("S", "M"):
                    sim = True
                    sim_date = s.date
                else:
                    no = True
            elif isinstance(s, GNS):
                modes = set(s.mode)
                if modes & set("ADPRFE"):
                    yes = True
                    position(s.lat, s.lon, 2)
                    alt = s.alt_m if alt is None else alt
                    hdop = s.hdop if hdop is None else hdop
                    if sats_gn is None and not sats_by_talker:
                        sats_gn = s.sats
                    mode_quality = mode_quality or max(_MODE_QUALITY.get(c, 0) for c in s.mode)
                elif modes & set("SM"):
                    sim = True
                elif modes == {"N"}:
                    no = True
            elif isinstance(s, GLL):
                if s.status == "A" and s.mode not in ("N", "S", "M"):
                    yes = True
                    position(s.lat, s.lon, 4)
                elif s.mode in ("S", "M"):
                    sim = True
                else:
                    no = True
            elif isinstance(s, VTG):
                if s.mode != "N":
                    if s.speed_knots is not None:
                        vtg_speed = s.speed_knots * KNOT_MPS
                    elif s.speed_kmh is not None:
                        vtg_speed = s.speed_kmh / 3.6
                    vtg_course = s.course_true_deg if vtg_course is None else vtg_course
            elif isinstance(s, GSA):
                gsa_hdop = s.hdop if gsa_hdop is None else gsa_hdop
            elif isinstance(s, ZDA):
                zda_date = s.date or zda_date

        if sim and not self.accept_simulated:
            self.stats.simulated += 1
            return None
        if sim and pos is None:
            # accepted simulator output: take its position even though the sentences call it void
            for s in ss:
                if isinstance(s, GGA | RMC | GNS | GLL) and s.lat is not None and s.lon is not None:
                    pos = (s.lat, s.lon)
                    break
        fix_ok = (yes or sim) and (not no or sim) and pos is not None
        if not fix_ok or pos is None:
            self.stats.no_fix += 1
            return None
        if pos == (0.0, 0.0):
            self.stats.placeholder += 1
            return None

        day = rmc_date or zda_date or (sim_date if sim else None)
        if day is not None:
            day = self._rollover(day)
        elif self._last_date is not None and self._last_tod is not None:
            day = self._last_date
            if tod < self._last_tod - 43200.0:  # time went back by more than half a day: midnight passed
                day += timedelta(days=1)
        when = None
        if day is not None:
            self._last_date, self._last_tod = day, tod
            when = datetime.combine(day, time(0), tzinfo=UTC) + timedelta(seconds=tod)
        else:
            self.stats.no_date += 1

        sats: int | None = sats_gn if sats_gn is not None else (sum(sats_by_talker.values()) or None)
        self.stats.fixes += 1
        return Fix(
            time=when,
            time_of_day=tod,
            lat=pos[0],
            lon=pos[1],
            alt_m=alt,
            speed_mps=speed if speed is not None else vtg_speed,
            course_deg=course if course is not None else vtg_course,
            quality=quality if quality is not None else (mode_quality or 1),
            sats=sats,
            hdop=hdop if hdop is not None else gsa_hdop,
        )


class NmeaReader:
    """Bytes in, fixes out: an :class:`NmeaDecoder` feeding a :class:`FixAssembler`."""

    def __init__(self, *, date_floor: date = _DEFAULT_DATE_FLOOR, accept_simulated: bool = False) -> None:
        self.decoder = NmeaDecoder()
        self.assembler = FixAssembler(date_floor=date_floor, accept_simulated=accept_simulated)

    def feed(self, data: bytes) -> list[Fix]:
        """Fixes completed by these bytes."""
        return self._push(self.decoder.feed(data))

    def flush(self) -> list[Fix]:
        """End of stream (or a quiet line): the partial line and the epoch in progress."""
        fixes = self._push(self.decoder.flush())
        last = self.assembler.flush()
        if last is not None:
            fixes.append(last)
        return fixes

    def reset(self) -> None:
        """After a reconnect: forget partial input, keep counters and the last date."""
        self.decoder.reset()
        self.assembler.reset()

    def _push(self, sentences: Iterable[Sentence]) -> list[Fix]:
        fixes = []
        for s in sentences:
            f = self.assembler.push(s)
            if f is not None:
                fixes.append(f)
        return fixes

    def summary(self) -> dict[str, Any]:
        """Counts for a status page or the replay's last line."""
        d = self.decoder.stats.as_dict()
        d.update(self.assembler.stats.as_dict())
        return d


def strip_capture_header(data: bytes) -> bytes:
    """Drop the leading ``#`` comment lines of a gpsd-style capture file (as gpsfake does)."""
    pos = 0
    while data.startswith(b"#", pos):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return b""
        pos = nl + 1
    return data[pos:]

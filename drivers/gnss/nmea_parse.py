"""One NMEA 0183 line -> one sentence object: field decoders, per-type sentence decoders and
:func:`parse_sentence` (checksum, address and field checks; raises :class:`NmeaError` with a :class:`Reject`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Any

from drivers.gnss.nmea_sentences import (
    GBS,
    GGA,
    GLL,
    GNS,
    GSA,
    GST,
    GSV,
    MAX_SENTENCE,
    RMC,
    VTG,
    ZDA,
    ChecksumError,
    FieldError,
    NmeaError,
    Reject,
    SatInView,
    Sentence,
    UnsupportedSentence,
)

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
    # 1-8 claim a position; a quality beyond the defined 0-8 is kept as sent (reported by unknown_values) and,
    # like 0, does not make placeholder position fields an error
    valid = quality is not None and 1 <= quality <= 8
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
    if len(status) != 1 or not status.isalpha():
        raise FieldError(Reject.BAD_FIELD, raw=raw, detail=f"status={status!r}")
    # A valid, V warning; another letter is not an error (issue 20 item 4): kept as sent, treated as not valid
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
        _field(f, 13) or None,
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
        # NMEA 4.10/4.11 signal id: one hex digit (1-F, per constellation); read as hex, not only 0-9
        signal = int(body[-1], 16) if len(body[-1]) == 1 and body[-1] in _HEX else None
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
    if len(status) != 1 or not status.isalpha():
        raise FieldError(Reject.BAD_FIELD, raw=raw, detail=f"status={status!r}")  # empty or not a letter
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
        _field(f, 13) or None,
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


def _sentence_text(line: str | bytes) -> str:
    """The line as printable ASCII text from ``$`` on, CR/LF/spaces stripped, or :class:`NmeaError`."""
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
    return text


def parse_sentence(line: str | bytes) -> Sentence:
    """Decode one sentence, ``$`` to checksum (trailing CR/LF/spaces ignored).

    Values the parser does not know (a status or mode letter, GGA quality, navigational status, system id or
    talker ID that NMEA 0183 4.11 does not define) are kept as sent; :func:`unknown_values` lists them.

    Raises :class:`NmeaError` (reason in :class:`Reject`) and nothing else: :class:`ChecksumError` for a
    missing or wrong checksum, :class:`UnsupportedSentence` for well-formed sentences of other types or talkers
    (proprietary ``$P...``), :class:`FieldError` for fields that do not parse.
    """
    text = _sentence_text(line)
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
    if decoder is None or not talker.isalpha():
        raise UnsupportedSentence(address, raw=text)
    # A talker ID outside TALKERS (e.g. a constellation added by a later NMEA 0183 edition) is decoded like the
    # others and reported by unknown_values, not refused: the sentence's layout depends on its type only.
    try:
        sentence: Sentence = decoder(talker, parts, text)
    except FieldError as err:
        if err.raw is None:
            err.raw = text
        raise
    return sentence

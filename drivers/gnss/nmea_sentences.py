"""NMEA 0183 vocabulary: limits, reject reasons, errors and the frozen sentence types (one per type we decode).

Framing facts: a sentence starts with ``$``, then the address field (2-character talker ID + 3-character
sentence type, or ``P`` + maker code for proprietary sentences), comma-separated data fields, ``*`` and two hex
digits: the XOR of every byte strictly between ``$`` and ``*``; it ends with CR LF. The standard caps a sentence
at 82 characters including ``$`` and CR LF; real receivers exceed it slightly (NMEA 4.10 GSV/GSA extras,
proprietary sentences), so the decoder allows up to :data:`MAX_SENTENCE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from kyojo.contract.errors import ParseError

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
    nav_status: str | None = None  # NMEA 4.10+: S safe, C caution, U unsafe, V not valid for navigation


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
    nav_status: str | None = None  # NMEA 4.10+: S safe, C caution, U unsafe, V not valid for navigation


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
# Values this parser does not know: reported, never a reason to refuse the sentence (issue 20, section 4)
# ----------------------------------------------------------------------------------------------------------

#: RMC / GLL status (NMEA 0183 4.11, RMC and GLL field "Status"): A data valid, V navigation receiver warning
STATUS_LETTERS = frozenset("AV")
#: the mode indicator of RMC, GLL, VTG (NMEA 2.3+) and, per constellation, GNS (NMEA 0183 4.11): A autonomous,
#: D differential, E estimated (dead reckoning), F float RTK, M manual input, N no fix, P precise, R RTK,
#: S simulator
MODE_LETTERS = frozenset("ADEFMNPRS")
#: RMC / GNS navigational status (NMEA 0183 4.10+): S safe, C caution, U unsafe, V not valid for navigation
NAV_STATUS_LETTERS = frozenset("SCUV")
#: GGA GPS quality indicator values NMEA 0183 4.11 defines: 0 fix not available ... 8 simulator mode
GGA_QUALITIES = frozenset(range(9))
#: GSA GNSS System ID (NMEA 0183 4.11): 1 GPS, 2 GLONASS, 3 Galileo, 4 BeiDou, 5 QZSS, 6 NavIC (IRNSS)
SYSTEM_IDS = frozenset(range(1, 7))


def unknown_values(s: Sentence) -> dict[str, str]:
    """The fields of ``s`` that hold a value this parser does not know (a letter or code the standard does not
    define, or one of a later edition), as ``{"RMC.status": "X"}``; empty when there are none.

    Such a sentence is decoded, not refused: an unknown status letter or GGA quality neither asserts nor denies
    a fix (:class:`~drivers.gnss.nmea_fix.FixAssembler` abstains on it), an unknown mode letter is kept as sent,
    a talker ID outside :data:`TALKERS` (a constellation or device of a later edition) decodes like any other.
    """
    out: dict[str, str] = {}
    name = type(s).__name__
    if s.talker not in TALKERS:
        out[f"{name}.talker"] = s.talker
    if isinstance(s, RMC | GLL) and s.status not in STATUS_LETTERS:
        out[f"{name}.status"] = s.status
    if isinstance(s, RMC | GLL | VTG) and s.mode is not None and s.mode not in MODE_LETTERS:
        out[f"{name}.mode"] = s.mode
    if isinstance(s, GNS) and not set(s.mode) <= MODE_LETTERS:
        out[f"{name}.mode"] = s.mode
    if isinstance(s, RMC | GNS) and s.nav_status is not None and s.nav_status not in NAV_STATUS_LETTERS:
        out[f"{name}.nav_status"] = s.nav_status
    if isinstance(s, GGA) and s.quality is not None and s.quality not in GGA_QUALITIES:
        out[f"{name}.quality"] = str(s.quality)
    if isinstance(s, GSA) and s.system_id is not None and s.system_id not in SYSTEM_IDS:
        out[f"{name}.system_id"] = str(s.system_id)
    if isinstance(s, GSA) and s.op_mode not in ("M", "A"):
        out[f"{name}.op_mode"] = s.op_mode  # GSA mode 1: M manual, A automatic 2D/3D
    if isinstance(s, GSA) and s.fix_type is not None and s.fix_type not in (1, 2, 3):
        out[f"{name}.fix_type"] = str(s.fix_type)  # GSA mode 2: 1 fix not available, 2 2D, 3 3D
    return out

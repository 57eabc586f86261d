"""Sans-IO NMEA 0183 decoding: bytes -> sentences -> fixes (the public face of the GNSS parser).

Three layers, none of which does I/O (no serial, socket or asyncio import here), each in its own module and all
re-exported from here:

- :mod:`drivers.gnss.nmea_sentences`: limits, :class:`Reject` reasons, the :class:`NmeaError` family and the
  frozen sentence types.
- :func:`parse_sentence` (:mod:`drivers.gnss.nmea_parse`) turns one line (``$GPGGA,...*hh``) into a frozen
  sentence object, or raises an :class:`NmeaError` (a :class:`kyojo.contract.errors.ParseError`) whose ``reason`` is one
  of :class:`Reject`.
- :class:`NmeaDecoder` (:mod:`drivers.gnss.nmea_framing`) takes arbitrary byte chunks as they come off a serial
  line (binary noise, run-together and truncated sentences, CR, LF or CRLF) and returns the sentences it could
  parse. It never raises on bad input: it counts each reject by reason in :attr:`NmeaDecoder.stats`.
- :class:`FixAssembler` (:mod:`drivers.gnss.nmea_fix`) groups the sentences of one epoch (same UTC time of day)
  and, when the next epoch starts, turns them into one :class:`Fix` (date from RMC/ZDA, time, position and
  altitude from GGA, speed and course from RMC/VTG, quality, satellites, HDOP) or decides there was no fix.

:class:`NmeaReader`, defined here, chains the decoder and the assembler (bytes in, fixes out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from drivers.gnss.nmea_fix import _DEFAULT_DATE_FLOOR, AssemblerStats, Fix, FixAssembler
from drivers.gnss.nmea_framing import DecoderStats, NmeaDecoder
from drivers.gnss.nmea_parse import checksum, parse_sentence
from drivers.gnss.nmea_sentences import (
    GBS,
    GGA,
    GLL,
    GNS,
    GPS_ROLLOVER,
    GSA,
    GST,
    GSV,
    KNOT_MPS,
    MAX_SENTENCE,
    RMC,
    TALKERS,
    VTG,
    ZDA,
    ChecksumError,
    FieldError,
    NmeaError,
    Reject,
    SatInView,
    Sentence,
    UnsupportedSentence,
    unknown_values,
)

__all__ = [
    "GBS",
    "GGA",
    "GLL",
    "GNS",
    "GPS_ROLLOVER",
    "GSA",
    "GST",
    "GSV",
    "KNOT_MPS",
    "MAX_SENTENCE",
    "RMC",
    "TALKERS",
    "VTG",
    "ZDA",
    "AssemblerStats",
    "ChecksumError",
    "DecoderStats",
    "FieldError",
    "Fix",
    "FixAssembler",
    "NmeaDecoder",
    "NmeaError",
    "NmeaReader",
    "Reject",
    "SatInView",
    "Sentence",
    "UnsupportedSentence",
    "checksum",
    "parse_sentence",
    "strip_capture_header",
    "unknown_values",
]


class NmeaReader:
    """Bytes in, fixes out: an :class:`NmeaDecoder` feeding a :class:`FixAssembler`."""

    def __init__(
        self,
        *,
        date_floor: date = _DEFAULT_DATE_FLOOR,
        accept_simulated: bool = False,
        on_unknown: Callable[[str, str], None] | None = None,
    ) -> None:
        self.decoder = NmeaDecoder(on_unknown=on_unknown)
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

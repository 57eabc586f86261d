"""Reading characteristic values: the little-endian cursor (:class:`_Reader`, which raises
:class:`Truncated` / :class:`TrailingBytes` with the offset), flag helpers and the field types several
profiles share (:class:`DateTime`, :class:`BitSet`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from drivers.ble.errors import TrailingBytes, Truncated
from drivers.ble.ieee11073 import Number, float_from_word, sfloat_from_word


class _Reader:
    """A cursor over one characteristic value; every read checks the length first."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if self.remaining < n:
            raise Truncated(need=n, offset=self.pos, have=self.remaining, raw=self.data)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def s16(self) -> int:
        return int.from_bytes(self.take(2), "little", signed=True)

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "little")

    def sfloat(self) -> Number:
        return sfloat_from_word(self.u16())

    def float32(self) -> Number:
        return float_from_word(int.from_bytes(self.take(4), "little"))

    def date_time(self) -> DateTime:
        # Reserved field values are kept as sent (DateTime.reserved_fields reports them), never refused.
        return DateTime(self.u16(), self.u8(), self.u8(), self.u8(), self.u8(), self.u8())

    def finish(self, lenient: bool) -> None:
        if self.remaining and not lenient:
            raise TrailingBytes(
                f"{self.remaining} unexpected bytes at offset {self.pos} after the last field",
                offset=self.pos,
                raw=self.data,
            )


def _bit(flags: int, n: int) -> bool:
    return bool(flags >> n & 1)


def _names(raw: int, names: dict[int, str]) -> tuple[str, ...]:
    """Names of the set bits, in bit order (unknown bits are reserved and left out: :func:`_reserved_bits`)."""
    return tuple(name for bit, name in sorted(names.items()) if raw >> bit & 1)


def _reserved_bits(raw: int, names: dict[int, str], width: int) -> int:
    """The set bits of a ``width``-bit field that ``names`` does not define (reserved for future use)."""
    defined = sum(1 << bit for bit in names)
    return raw & ((1 << width) - 1) & ~defined


@dataclass(frozen=True, slots=True)
class DateTime:
    """Date Time (0x2A08, and the Time Stamp field of the measurements); ``0`` year/month/day = not known.

    Device clocks carry no time zone: this is the device's local wall-clock time.
    """

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    def to_datetime(self) -> dt.datetime | None:
        """The naive wall-clock datetime, or None when the date is not known, impossible (e.g. 31 Feb) or
        carries a reserved value (:meth:`reserved_fields`)."""
        if not (self.year and self.month and self.day) or self.reserved_fields():
            return None
        try:
            return dt.datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)
        except ValueError:
            return None

    def reserved_fields(self) -> dict[str, int]:
        """The fields holding a value the specification reserves for future use, with that value.

        GATT Specification Supplement, characteristic "Date Time" (0x2A08): Year 1582..9999, 0 = not known;
        Month 1..12, 0 = not known; Day 1..31, 0 = not known; Hours 0..23; Minutes 0..59; Seconds 0..59; all
        other values are Reserved for Future Use. A reserved value makes only this time unusable
        (:meth:`to_datetime` is None): the measurement that carries it is still decoded.
        """
        out: dict[str, int] = {}
        if not (self.year == 0 or 1582 <= self.year <= 9999):
            out["year"] = self.year
        for name, top in _DATE_TIME_LIMITS:
            if getattr(self, name) > top:
                out[name] = getattr(self, name)
        return out


_DATE_TIME_LIMITS = (("month", 12), ("day", 31), ("hours", 23), ("minutes", 59), ("seconds", 59))


@dataclass(frozen=True, slots=True)
class BitSet:
    """A status bit field: the raw integer and the names of its set bits."""

    raw: int
    set: tuple[str, ...]

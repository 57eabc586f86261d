"""Reading characteristic values: the little-endian cursor (:class:`_Reader`, which raises
:class:`Truncated` / :class:`TrailingBytes` with the offset), flag helpers and the field types several
profiles share (:class:`DateTime`, :class:`BitSet`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from drivers.ble.errors import Inconsistent, TrailingBytes, Truncated
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
        start = self.pos
        return _check_date_time(DateTime(self.u16(), self.u8(), self.u8(), self.u8(), self.u8(), self.u8()), start)

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
    """Names of the set bits, in bit order (unknown bits are reserved and left out)."""
    return tuple(name for bit, name in sorted(names.items()) if raw >> bit & 1)


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
        """The naive wall-clock datetime, or None when the date is not known or impossible (e.g. 31 Feb)."""
        if not (self.year and self.month and self.day):
            return None
        try:
            return dt.datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)
        except ValueError:
            return None


def _check_date_time(value: DateTime, offset: int) -> DateTime:
    # Spec ranges: year 1582..9999 or 0, month 0..12, day 0..31, hours 0..23, minutes/seconds 0..59.
    if not (value.year == 0 or 1582 <= value.year <= 9999):
        raise Inconsistent(f"Date Time year {value.year} is reserved", offset=offset)
    limits = (("month", 12), ("day", 31), ("hours", 23), ("minutes", 59), ("seconds", 59))
    for name, top in limits:
        if getattr(value, name) > top:
            raise Inconsistent(f"Date Time {name} {getattr(value, name)} is out of range", offset=offset)
    return value


@dataclass(frozen=True, slots=True)
class BitSet:
    """A status bit field: the raw integer and the names of its set bits."""

    raw: int
    set: tuple[str, ...]

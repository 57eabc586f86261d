"""The device's own state, not a measurement: Date Time 0x2A08, Current Time 0x2A2B and Battery Level 0x2A19."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.ble.characteristics.fields import DateTime, _bit, _Reader
from drivers.ble.errors import BadLength


def decode_date_time(data: bytes, *, lenient: bool = False) -> DateTime:
    """Date Time: year uint16 (0 unknown), month, day (0 unknown), hours, minutes, seconds = exactly 7 bytes.

    Field values the GSS reserves (year 1..1581 or above 9999, month 13+, ...) are kept as sent and reported by
    :meth:`DateTime.reserved_fields`; only a wrong length is refused.
    """
    if len(data) != 7:
        raise BadLength("Date Time is exactly 7 bytes", offset=min(len(data), 7), raw=bytes(data))
    return _Reader(data).date_time()


#: Day of Week (GATT Specification Supplement, "Day of Week" 0x2A09): 0 unknown, 1 Monday .. 7 Sunday,
#: 8-255 Reserved for Future Use (decoded with the name ``"reserved"``)
DAYS_OF_WEEK = ("unknown", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True, slots=True)
class AdjustReason:
    """Adjust Reason (uint8) of Current Time; bits 4-7 reserved."""

    raw: int
    manual_time_update: bool
    external_reference_time_update: bool
    change_of_time_zone: bool
    change_of_dst: bool


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """Current Time (0x2A2B, read/notify)."""

    date_time: DateTime
    day_of_week: int
    day_of_week_name: str
    fractions256: int
    fraction_s: float
    adjust_reason: AdjustReason


def decode_current_time(data: bytes, *, lenient: bool = False) -> CurrentTime:
    """Date Time (7) + Day of Week uint8 + Fractions256 uint8 (1/256 s) + Adjust Reason uint8 = exactly 10.

    A reserved Day of Week (8..255), reserved Adjust Reason bits (4-7) or reserved Date Time field values are
    kept and reported (:func:`drivers.ble.gatt.reserved_values`); only a wrong length is refused.
    """
    if len(data) != 10:
        raise BadLength("Current Time is exactly 10 bytes", offset=min(len(data), 10), raw=bytes(data))
    r = _Reader(data)
    when = r.date_time()
    dow = r.u8()  # 8..255 are Reserved for Future Use: kept as sent, named "reserved", never refused
    frac = r.u8()
    adj = r.u8()
    reason = AdjustReason(adj, _bit(adj, 0), _bit(adj, 1), _bit(adj, 2), _bit(adj, 3))
    name = DAYS_OF_WEEK[dow] if dow < len(DAYS_OF_WEEK) else "reserved"
    return CurrentTime(when, dow, name, frac, frac / 256, reason)


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery Level (0x2A19): uint8 percent, 0..100 (101..255 reserved; flagged by the converter)."""

    battery_level_pct: int


def decode_battery_level(data: bytes, *, lenient: bool = False) -> BatteryLevel:
    """Exactly one byte."""
    if len(data) != 1:
        raise BadLength("Battery Level is exactly 1 byte", offset=min(len(data), 1), raw=bytes(data))
    return BatteryLevel(data[0])

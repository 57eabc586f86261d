"""SIG UUIDs of the decoded characteristics, and the 16-bit <-> 128-bit UUID conversions."""

from __future__ import annotations

import re

from drivers.ble.errors import UnknownCharacteristic

#: Bluetooth Base UUID: a 16-bit SIG UUID xxxx is 0000xxxx-0000-1000-8000-00805F9B34FB
BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

HEART_RATE_MEASUREMENT = 0x2A37
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
INTERMEDIATE_CUFF_PRESSURE = 0x2A36
TEMPERATURE_MEASUREMENT = 0x2A1C
GLUCOSE_MEASUREMENT = 0x2A18
GLUCOSE_MEASUREMENT_CONTEXT = 0x2A34
PLX_SPOT_CHECK_MEASUREMENT = 0x2A5E
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F
WEIGHT_MEASUREMENT = 0x2A9D
BODY_COMPOSITION_MEASUREMENT = 0x2A9C
DATE_TIME = 0x2A08
CURRENT_TIME = 0x2A2B
BATTERY_LEVEL = 0x2A19

_UUID16 = re.compile(r"^(?:0x)?([0-9a-f]{4})$")
_UUID128 = re.compile(r"^0000([0-9a-f]{4})" + re.escape(BASE_UUID_SUFFIX) + "$")


def uuid16(text: str) -> int:
    """Parse ``2A37``, ``0x2A37`` or the full 128-bit SIG form into the 16-bit number.

    Raises :class:`UnknownCharacteristic` for anything else (including vendor 128-bit UUIDs).
    """
    t = text.strip().lower()
    m = _UUID16.match(t) or _UUID128.match(t)
    if m is None:
        raise UnknownCharacteristic(f"not a 16-bit Bluetooth SIG UUID: {text!r}", offset=0)
    return int(m.group(1), 16)


def uuid128(short: int) -> str:
    """The full 128-bit string (lower case, as bleak reports UUIDs) of a 16-bit SIG UUID."""
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"

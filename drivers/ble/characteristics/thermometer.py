"""Health Thermometer profile: Temperature Measurement 0x2A1C."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.ble.characteristics.fields import DateTime, _bit, _Reader
from drivers.ble.ieee11073 import Number

TEMPERATURE_TYPES: dict[int, str] = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastro_intestinal_tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}


@dataclass(frozen=True, slots=True)
class TemperatureMeasurement:
    """Temperature Measurement (0x2A1C, indicate); ``temperature`` in ``unit`` as on the wire."""

    flags: int
    unit: Literal["degC", "degF"]
    temperature: Number
    timestamp: DateTime | None
    temperature_type: int | None
    temperature_type_name: str | None


def decode_temperature_measurement(data: bytes, *, lenient: bool = False) -> TemperatureMeasurement:
    """Flags: bit0 Fahrenheit, bit1 Time Stamp, bit2 Temperature Type. Temperature is a 32-bit FLOAT."""
    r = _Reader(data)
    flags = r.u8()
    temp = r.float32()
    ts = r.date_time() if _bit(flags, 1) else None
    ttype = r.u8() if _bit(flags, 2) else None
    r.finish(lenient)
    return TemperatureMeasurement(
        flags=flags,
        unit="degF" if _bit(flags, 0) else "degC",
        temperature=temp,
        timestamp=ts,
        temperature_type=ttype,
        temperature_type_name=None if ttype is None else TEMPERATURE_TYPES.get(ttype, "reserved"),
    )

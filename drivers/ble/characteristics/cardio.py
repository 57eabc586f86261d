"""Cardiovascular profiles: Heart Rate Measurement 0x2A37, Blood Pressure Measurement 0x2A35 and
Intermediate Cuff Pressure 0x2A36.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from drivers.ble.characteristics.fields import DateTime, _bit, _Reader
from drivers.ble.errors import Inconsistent
from drivers.ble.ieee11073 import Number

SensorContact = Literal["not_supported", "not_detected", "detected"]


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """Heart Rate Measurement (0x2A37, notify)."""

    flags: int
    heart_rate_bpm: int
    hr_format: Literal["uint8", "uint16"]
    sensor_contact: SensorContact
    energy_expended_kj: int | None
    rr_intervals_1_1024s: tuple[int, ...] | None
    rr_intervals_ms: tuple[float, ...] | None


def decode_heart_rate_measurement(data: bytes, *, lenient: bool = False) -> HeartRateMeasurement:
    """Flags: bit0 HR uint16, bits1-2 sensor contact, bit3 Energy Expended, bit4 RR intervals; bits5-7 reserved."""
    r = _Reader(data)
    flags = r.u8()
    wide = _bit(flags, 0)
    hr = r.u16() if wide else r.u8()
    # bits 1-2: 0/1 contact feature not supported, 2 supported but not detected, 3 detected
    contact_bits = flags >> 1 & 0b11
    contact: SensorContact = ("not_supported", "not_supported", "not_detected", "detected")[contact_bits]
    energy = r.u16() if _bit(flags, 3) else None  # kJ since the last reset
    rr: tuple[int, ...] | None = None
    if _bit(flags, 4):
        # RR intervals fill the rest of the value, uint16 each in 1/1024 s; the flag promises at least one.
        if r.remaining == 0 or r.remaining % 2:
            raise Inconsistent("RR flag set but RR bytes missing/odd", offset=r.pos, raw=r.data)
        rr = tuple(r.u16() for _ in range(r.remaining // 2))
    r.finish(lenient)
    return HeartRateMeasurement(
        flags=flags,
        heart_rate_bpm=hr,
        hr_format="uint16" if wide else "uint8",
        sensor_contact=contact,
        energy_expended_kj=energy,
        rr_intervals_1_1024s=rr,
        rr_intervals_ms=None if rr is None else tuple(v * 1000 / 1024 for v in rr),
    )


PressureUnit = Literal["mmHg", "kPa"]
PulseRateRange = Literal["within_range", "above_upper_limit", "below_lower_limit", "reserved"]


@dataclass(frozen=True, slots=True)
class BloodPressureStatus:
    """Measurement Status (uint16) of 0x2A35/0x2A36; bits 6-15 reserved."""

    raw: int
    body_movement_detected: bool
    cuff_too_loose: bool
    irregular_pulse_detected: bool
    pulse_rate_range: PulseRateRange
    improper_measurement_position: bool

    @classmethod
    def from_raw(cls, raw: int) -> BloodPressureStatus:
        ranges: tuple[PulseRateRange, ...] = ("within_range", "above_upper_limit", "below_lower_limit", "reserved")
        return cls(
            raw=raw,
            body_movement_detected=_bit(raw, 0),
            cuff_too_loose=_bit(raw, 1),
            irregular_pulse_detected=_bit(raw, 2),
            pulse_rate_range=ranges[raw >> 3 & 0b11],  # bits 3-4
            improper_measurement_position=_bit(raw, 5),
        )


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    """Blood Pressure Measurement (0x2A35, indicate); pressures in ``unit`` as on the wire."""

    flags: int
    unit: PressureUnit
    systolic: Number
    diastolic: Number
    mean_arterial_pressure: Number
    timestamp: DateTime | None
    pulse_rate_bpm: Number | None
    user_id: int | None  # 255 = unknown user
    measurement_status: BloodPressureStatus | None


@dataclass(frozen=True, slots=True)
class IntermediateCuffPressure:
    """Intermediate Cuff Pressure (0x2A36, notify): the live cuff pressure while a measurement runs.

    Same layout as 0x2A35 with the cuff pressure in the systolic slot; the diastolic and MAP slots are unused
    (the spec asks for NaN, some devices send 0) and are not reported.
    """

    flags: int
    unit: PressureUnit
    cuff_pressure: Number
    timestamp: DateTime | None
    pulse_rate_bpm: Number | None
    user_id: int | None
    measurement_status: BloodPressureStatus | None


def _decode_bp_fields(
    data: bytes, lenient: bool
) -> tuple[int, PressureUnit, tuple[Number, Number, Number], DateTime | None, Number | None, int | None, Any]:
    # Flags: bit0 kPa (else mmHg), bit1 Time Stamp, bit2 Pulse Rate, bit3 User ID, bit4 Measurement Status.
    r = _Reader(data)
    flags = r.u8()
    unit: PressureUnit = "kPa" if _bit(flags, 0) else "mmHg"
    pressures = (r.sfloat(), r.sfloat(), r.sfloat())
    ts = r.date_time() if _bit(flags, 1) else None
    pulse = r.sfloat() if _bit(flags, 2) else None
    user = r.u8() if _bit(flags, 3) else None
    status = BloodPressureStatus.from_raw(r.u16()) if _bit(flags, 4) else None
    r.finish(lenient)
    return flags, unit, pressures, ts, pulse, user, status


def decode_blood_pressure_measurement(data: bytes, *, lenient: bool = False) -> BloodPressureMeasurement:
    """Decode 0x2A35: systolic, diastolic, MAP (SFLOAT), [Date Time], [Pulse SFLOAT], [User], [Status]."""
    flags, unit, (sys_, dia, mean), ts, pulse, user, status = _decode_bp_fields(data, lenient)
    return BloodPressureMeasurement(flags, unit, sys_, dia, mean, ts, pulse, user, status)


def decode_intermediate_cuff_pressure(data: bytes, *, lenient: bool = False) -> IntermediateCuffPressure:
    """Decode 0x2A36 (layout of 0x2A35)."""
    flags, unit, (cuff, _, _), ts, pulse, user, status = _decode_bp_fields(data, lenient)
    return IntermediateCuffPressure(flags, unit, cuff, ts, pulse, user, status)

"""Weight Scale and Body Composition profiles: Weight Measurement 0x2A9D and Body Composition
Measurement 0x2A9C.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.ble.characteristics.fields import DateTime, _bit, _Reader

UnitSystem = Literal["SI", "imperial"]
#: "measurement unsuccessful" marker of the uint16 weight / body fat fields
UNSUCCESSFUL = 0xFFFF


def _mass(raw: int, imperial: bool) -> float:
    # Fixed wire resolution: 0.005 kg (SI) or 0.01 lb (imperial); integer arithmetic first, one division.
    return raw / 100 if imperial else raw * 5 / 1000


def _height(raw: int, imperial: bool) -> float:
    # 0.001 m (SI) or 0.1 in (imperial)
    return raw / 10 if imperial else raw / 1000


@dataclass(frozen=True, slots=True)
class WeightMeasurement:
    """Weight Measurement (0x2A9D, indicate); ``weight`` in ``weight_unit`` as on the wire."""

    flags: int
    unit_system: UnitSystem
    weight_raw: int
    weight: float | None  # None when the scale reports "measurement unsuccessful" (0xFFFF)
    weight_unit: Literal["kg", "lb"]
    measurement_unsuccessful: bool
    timestamp: DateTime | None
    user_id: int | None
    bmi: float | None
    height: float | None
    height_unit: Literal["m", "in"] | None


def decode_weight_measurement(data: bytes, *, lenient: bool = False) -> WeightMeasurement:
    """Flags: bit0 imperial, bit1 Time Stamp, bit2 User ID, bit3 BMI **and** Height; bits 4-7 reserved."""
    r = _Reader(data)
    flags = r.u8()
    imperial = _bit(flags, 0)
    raw = r.u16()
    ts = r.date_time() if _bit(flags, 1) else None
    user = r.u8() if _bit(flags, 2) else None
    bmi = height = None
    if _bit(flags, 3):
        bmi = r.u16() / 10  # 0.1 kg/m2
        height = _height(r.u16(), imperial)
    r.finish(lenient)
    unsuccessful = raw == UNSUCCESSFUL
    return WeightMeasurement(
        flags=flags,
        unit_system="imperial" if imperial else "SI",
        weight_raw=raw,
        weight=None if unsuccessful else _mass(raw, imperial),
        weight_unit="lb" if imperial else "kg",
        measurement_unsuccessful=unsuccessful,
        timestamp=ts,
        user_id=user,
        bmi=bmi,
        height=height,
        height_unit=None if height is None else ("in" if imperial else "m"),
    )


@dataclass(frozen=True, slots=True)
class BodyCompositionMeasurement:
    """Body Composition Measurement (0x2A9C, indicate); masses in ``mass_unit``, height in ``height_unit``."""

    flags: int
    unit_system: UnitSystem
    mass_unit: Literal["kg", "lb"]
    height_unit: Literal["m", "in"]
    measurement_unsuccessful: bool
    body_fat_pct: float | None
    timestamp: DateTime | None
    user_id: int | None
    basal_metabolism_kj: int | None
    muscle_pct: float | None
    muscle_mass: float | None
    fat_free_mass: float | None
    soft_lean_mass: float | None
    body_water_mass: float | None
    impedance_ohm: float | None
    weight: float | None
    height: float | None
    multiple_packet_measurement: bool


def decode_body_composition_measurement(data: bytes, *, lenient: bool = False) -> BodyCompositionMeasurement:
    """Flags (uint16): bit0 imperial, 1 Time Stamp, 2 User ID, 3 Basal Metabolism, 4 Muscle %, 5 Muscle Mass,
    6 Fat Free Mass, 7 Soft Lean Mass, 8 Body Water Mass, 9 Impedance, 10 Weight, 11 Height, 12 Multiple
    Packet Measurement; 13-15 reserved. Muscle Percentage comes before Muscle Mass."""
    r = _Reader(data)
    flags = r.u16()
    imp = _bit(flags, 0)
    fat_raw = r.u16()  # 0.1 %
    ts = r.date_time() if _bit(flags, 1) else None
    user = r.u8() if _bit(flags, 2) else None
    bmr = r.u16() if _bit(flags, 3) else None  # kJ
    muscle_pct = r.u16() / 10 if _bit(flags, 4) else None
    muscle = _mass(r.u16(), imp) if _bit(flags, 5) else None
    ffm = _mass(r.u16(), imp) if _bit(flags, 6) else None
    slm = _mass(r.u16(), imp) if _bit(flags, 7) else None
    water = _mass(r.u16(), imp) if _bit(flags, 8) else None
    impedance = r.u16() / 10 if _bit(flags, 9) else None  # 0.1 ohm
    weight = _mass(r.u16(), imp) if _bit(flags, 10) else None
    height = _height(r.u16(), imp) if _bit(flags, 11) else None
    r.finish(lenient)
    unsuccessful = fat_raw == UNSUCCESSFUL
    return BodyCompositionMeasurement(
        flags=flags,
        unit_system="imperial" if imp else "SI",
        mass_unit="lb" if imp else "kg",
        height_unit="in" if imp else "m",
        measurement_unsuccessful=unsuccessful,
        body_fat_pct=None if unsuccessful else fat_raw / 10,
        timestamp=ts,
        user_id=user,
        basal_metabolism_kj=bmr,
        muscle_pct=muscle_pct,
        muscle_mass=muscle,
        fat_free_mass=ffm,
        soft_lean_mass=slm,
        body_water_mass=water,
        impedance_ohm=impedance,
        weight=weight,
        height=height,
        multiple_packet_measurement=_bit(flags, 12),
    )

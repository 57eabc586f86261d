"""Glucose profile: Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from drivers.ble.characteristics.fields import BitSet, DateTime, _bit, _names, _Reader
from drivers.ble.ieee11073 import Number

GLUCOSE_TYPES: dict[int, str] = {
    1: "capillary_whole_blood",
    2: "capillary_plasma",
    3: "venous_whole_blood",
    4: "venous_plasma",
    5: "arterial_whole_blood",
    6: "arterial_plasma",
    7: "undetermined_whole_blood",
    8: "undetermined_plasma",
    9: "interstitial_fluid",
    10: "control_solution",
}
#: Sample Location (high nibble); 0 and 5-14 reserved
GLUCOSE_LOCATIONS: dict[int, str] = {
    1: "finger",
    2: "alternate_site",
    3: "earlobe",
    4: "control_solution",
    15: "not_available",
}
#: Sensor Status Annunciation bits (uint16); 12-15 reserved
GLUCOSE_SENSOR_STATUS: dict[int, str] = {
    0: "device_battery_low",
    1: "sensor_malfunction",
    2: "sample_size_insufficient",
    3: "strip_insertion_error",
    4: "strip_type_incorrect",
    5: "sensor_result_higher_than_device_can_process",
    6: "sensor_result_lower_than_device_can_process",
    7: "sensor_temperature_too_high",
    8: "sensor_temperature_too_low",
    9: "sensor_read_interrupted",
    10: "general_device_fault",
    11: "time_fault",
}


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    """Glucose Measurement (0x2A18, notify); concentration in ``concentration_unit`` as on the wire."""

    flags: int
    sequence_number: int
    base_time: DateTime
    time_offset_min: int | None  # sint16 minutes; user-facing time = base_time + offset
    concentration: Number | None
    concentration_unit: Literal["kg/L", "mol/L"] | None
    type: int | None
    sample_location: int | None
    type_name: str | None
    sample_location_name: str | None
    sensor_status: BitSet | None
    context_information_follows: bool

    def user_facing_time(self) -> dt.datetime | None:
        """Base time plus time offset (device wall clock), None if unknown."""
        base = self.base_time.to_datetime()
        if base is None:
            return None
        return base + dt.timedelta(minutes=self.time_offset_min or 0)


def decode_glucose_measurement(data: bytes, *, lenient: bool = False) -> GlucoseMeasurement:
    """Flags: bit0 Time Offset, bit1 Concentration + Type-Sample Location, bit2 mol/L (else kg/L),
    bit3 Sensor Status Annunciation, bit4 Context Information Follows."""
    r = _Reader(data)
    flags = r.u8()
    seq = r.u16()
    base = r.date_time()
    offset = r.s16() if _bit(flags, 0) else None
    conc: Number | None = None
    gtype = loc = None
    if _bit(flags, 1):
        conc = r.sfloat()
        tsl = r.u8()
        gtype, loc = tsl & 0x0F, tsl >> 4
    status = None
    if _bit(flags, 3):
        raw = r.u16()
        status = BitSet(raw, _names(raw, GLUCOSE_SENSOR_STATUS))
    r.finish(lenient)
    return GlucoseMeasurement(
        flags=flags,
        sequence_number=seq,
        base_time=base,
        time_offset_min=offset,
        concentration=conc,
        concentration_unit=None if conc is None else ("mol/L" if _bit(flags, 2) else "kg/L"),
        type=gtype,
        sample_location=loc,
        type_name=None if gtype is None else GLUCOSE_TYPES.get(gtype, "reserved"),
        sample_location_name=None if loc is None else GLUCOSE_LOCATIONS.get(loc, "reserved"),
        sensor_status=status,
        context_information_follows=_bit(flags, 4),
    )


@dataclass(frozen=True, slots=True)
class GlucoseMeasurementContext:
    """Glucose Measurement Context (0x2A34, notify); ``sequence_number`` matches its measurement."""

    flags: int
    sequence_number: int
    extended_flags: int | None
    carbohydrate_id: int | None  # 1 breakfast, 2 lunch, 3 dinner, 4 snack, 5 drink, 6 supper, 7 brunch
    carbohydrate_kg: Number | None
    meal: int | None  # 1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime
    tester: int | None  # 1 self, 2 health-care professional, 3 lab, 15 n/a
    health: int | None  # 1 minor issues, 2 major issues, 3 menses, 4 stress, 5 none, 15 n/a
    exercise_duration_s: int | None  # 65535 = overrun
    exercise_intensity_pct: int | None
    medication_id: int | None  # 1 rapid, 2 short, 3 intermediate, 4 long acting, 5 pre-mixed insulin
    medication_amount: Number | None
    medication_unit: Literal["kg", "L"] | None
    hba1c_pct: Number | None


def decode_glucose_measurement_context(data: bytes, *, lenient: bool = False) -> GlucoseMeasurementContext:
    """Flags: bit0 Carbohydrate, bit1 Meal, bit2 Tester-Health, bit3 Exercise, bit4 Medication, bit5 medication
    in litres (else kg), bit6 HbA1c, bit7 Extended Flags (a uint8 right after the sequence number)."""
    r = _Reader(data)
    flags = r.u8()
    seq = r.u16()
    ext = r.u8() if _bit(flags, 7) else None
    carb_id = carb = None
    if _bit(flags, 0):
        carb_id, carb = r.u8(), r.sfloat()
    meal = r.u8() if _bit(flags, 1) else None
    tester = health = None
    if _bit(flags, 2):
        th = r.u8()
        tester, health = th & 0x0F, th >> 4
    duration = intensity = None
    if _bit(flags, 3):
        duration, intensity = r.u16(), r.u8()
    med_id = med = None
    if _bit(flags, 4):
        med_id, med = r.u8(), r.sfloat()
    hba1c = r.sfloat() if _bit(flags, 6) else None
    r.finish(lenient)
    return GlucoseMeasurementContext(
        flags=flags,
        sequence_number=seq,
        extended_flags=ext,
        carbohydrate_id=carb_id,
        carbohydrate_kg=carb,
        meal=meal,
        tester=tester,
        health=health,
        exercise_duration_s=duration,
        exercise_intensity_pct=intensity,
        medication_id=med_id,
        medication_amount=med,
        medication_unit=None if med is None else ("L" if _bit(flags, 5) else "kg"),
        hba1c_pct=hba1c,
    )

"""Sans-IO decoders of the Bluetooth SIG health characteristics (GATT Specification Supplement layouts).

Each characteristic decodes to a frozen dataclass whose field names are the ones of the test vectors
(``tests/data/ble/vectors.json``); :func:`as_json` turns any of them into that JSON shape. Decoding is
pure: bytes in, dataclass out, or a :class:`~drivers.ble.errors.BleParseError` subclass with the offset.

Length policy: a field the flags announce but that does not fit raises :class:`Truncated`; bytes left after
the last announced field raise :class:`TrailingBytes` unless ``lenient=True`` (some devices, and Nordic's
library, pad values; the gateway enables it per device). Fixed-size values (Date Time, Current Time, Battery
Level) must have exactly their size. All multi-byte integers are little-endian.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, TypeAlias

from drivers.ble.errors import (
    BadLength,
    BleParseError,
    Inconsistent,
    TrailingBytes,
    Truncated,
    UnknownCharacteristic,
)
from drivers.ble.ieee11073 import Number, Special, float_from_word, sfloat_from_word

# ------------------------------------------------------------------------------------------------------------
# UUIDs
# ------------------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------------------
# Shared field types
# ------------------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------------------
# Heart Rate Measurement 0x2A37
# ------------------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------------------
# Blood Pressure Measurement 0x2A35 and Intermediate Cuff Pressure 0x2A36
# ------------------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------------------
# Temperature Measurement 0x2A1C
# ------------------------------------------------------------------------------------------------------------

#: Temperature Type (0x2A1D) values; 0 and 10-255 are reserved
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


# ------------------------------------------------------------------------------------------------------------
# Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34
# ------------------------------------------------------------------------------------------------------------

#: Type (low nibble of Type-Sample Location); 0 and 11-15 reserved
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


# ------------------------------------------------------------------------------------------------------------
# Pulse oximetry: PLX Spot-check 0x2A5E and Continuous 0x2A5F
# ------------------------------------------------------------------------------------------------------------

#: PLX Measurement Status bits (uint16); 0-4 reserved
PLX_MEASUREMENT_STATUS: dict[int, str] = {
    5: "measurement_ongoing",
    6: "early_estimated_data",
    7: "validated_data",
    8: "fully_qualified_data",
    9: "data_from_measurement_storage",
    10: "data_for_demonstration",
    11: "data_for_testing",
    12: "calibration_ongoing",
    13: "measurement_unavailable",
    14: "questionable_measurement_detected",
    15: "invalid_measurement_detected",
}
#: PLX Device and Sensor Status bits (uint24); 16-23 reserved
PLX_DEVICE_STATUS: dict[int, str] = {
    0: "extended_display_update_ongoing",
    1: "equipment_malfunction_detected",
    2: "signal_processing_irregularity_detected",
    3: "inadequate_signal_detected",
    4: "poor_signal_detected",
    5: "low_perfusion_detected",
    6: "erratic_signal_detected",
    7: "non_pulsatile_signal_detected",
    8: "questionable_pulse_detected",
    9: "signal_analysis_ongoing",
    10: "sensor_interference_detected",
    11: "sensor_unconnected_to_user",
    12: "unknown_sensor_connected",
    13: "sensor_displaced",
    14: "sensor_malfunctioning",
    15: "sensor_disconnected",
}


@dataclass(frozen=True, slots=True)
class PlxSpotCheckMeasurement:
    """PLX Spot-check Measurement (0x2A5E, indicate)."""

    flags: int
    spo2_pct: Number
    pulse_rate_bpm: Number
    timestamp: DateTime | None
    measurement_status: BitSet | None
    device_and_sensor_status: BitSet | None
    pulse_amplitude_index_pct: Number | None
    device_clock_not_set: bool


@dataclass(frozen=True, slots=True)
class PlxContinuousMeasurement:
    """PLX Continuous Measurement (0x2A5F, notify)."""

    flags: int
    spo2_pct: Number
    pulse_rate_bpm: Number
    spo2_fast_pct: Number | None
    pulse_rate_fast_bpm: Number | None
    spo2_slow_pct: Number | None
    pulse_rate_slow_bpm: Number | None
    measurement_status: BitSet | None
    device_and_sensor_status: BitSet | None
    pulse_amplitude_index_pct: Number | None


def _plx_status(r: _Reader) -> BitSet:
    raw = r.u16()
    return BitSet(raw, _names(raw, PLX_MEASUREMENT_STATUS))


def _plx_device_status(r: _Reader) -> BitSet:
    raw = r.u24()
    return BitSet(raw, _names(raw, PLX_DEVICE_STATUS))


def decode_plx_spot_check(data: bytes, *, lenient: bool = False) -> PlxSpotCheckMeasurement:
    """Flags: bit0 Timestamp, bit1 Measurement Status, bit2 Device and Sensor Status, bit3 Pulse Amplitude
    Index, bit4 device clock not set (no field)."""
    r = _Reader(data)
    flags = r.u8()
    spo2, pr = r.sfloat(), r.sfloat()
    ts = r.date_time() if _bit(flags, 0) else None
    status = _plx_status(r) if _bit(flags, 1) else None
    dev = _plx_device_status(r) if _bit(flags, 2) else None
    pai = r.sfloat() if _bit(flags, 3) else None
    r.finish(lenient)
    return PlxSpotCheckMeasurement(flags, spo2, pr, ts, status, dev, pai, _bit(flags, 4))


def decode_plx_continuous(data: bytes, *, lenient: bool = False) -> PlxContinuousMeasurement:
    """Flags: bit0 SpO2PR-Fast, bit1 SpO2PR-Slow, bit2 Measurement Status, bit3 Device and Sensor Status,
    bit4 Pulse Amplitude Index (bit0 means "fast values" here, "timestamp" in spot-check)."""
    r = _Reader(data)
    flags = r.u8()
    spo2, pr = r.sfloat(), r.sfloat()
    fast = (r.sfloat(), r.sfloat()) if _bit(flags, 0) else (None, None)
    slow = (r.sfloat(), r.sfloat()) if _bit(flags, 1) else (None, None)
    status = _plx_status(r) if _bit(flags, 2) else None
    dev = _plx_device_status(r) if _bit(flags, 3) else None
    pai = r.sfloat() if _bit(flags, 4) else None
    r.finish(lenient)
    return PlxContinuousMeasurement(flags, spo2, pr, fast[0], fast[1], slow[0], slow[1], status, dev, pai)


# ------------------------------------------------------------------------------------------------------------
# Weight Scale: Weight Measurement 0x2A9D; Body Composition Measurement 0x2A9C
# ------------------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------------------
# Time and battery: Date Time 0x2A08, Current Time 0x2A2B, Battery Level 0x2A19
# ------------------------------------------------------------------------------------------------------------


def decode_date_time(data: bytes, *, lenient: bool = False) -> DateTime:
    """Date Time: year uint16 (0 unknown), month, day (0 unknown), hours, minutes, seconds = exactly 7 bytes."""
    if len(data) != 7:
        raise BadLength("Date Time is exactly 7 bytes", offset=min(len(data), 7), raw=bytes(data))
    return _Reader(data).date_time()


#: Day of Week (0x2A09): 0 unknown, 1 Monday .. 7 Sunday, 8-255 reserved
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
    """Date Time (7) + Day of Week uint8 + Fractions256 uint8 (1/256 s) + Adjust Reason uint8 = exactly 10."""
    if len(data) != 10:
        raise BadLength("Current Time is exactly 10 bytes", offset=min(len(data), 10), raw=bytes(data))
    r = _Reader(data)
    when = r.date_time()
    dow = r.u8()
    if dow >= len(DAYS_OF_WEEK):
        raise Inconsistent(f"Day of Week {dow} is reserved", offset=7, raw=r.data)
    frac = r.u8()
    adj = r.u8()
    reason = AdjustReason(adj, _bit(adj, 0), _bit(adj, 1), _bit(adj, 2), _bit(adj, 3))
    return CurrentTime(when, dow, DAYS_OF_WEEK[dow], frac, frac / 256, reason)


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery Level (0x2A19): uint8 percent, 0..100 (101..255 reserved; flagged by the converter)."""

    battery_level_pct: int


def decode_battery_level(data: bytes, *, lenient: bool = False) -> BatteryLevel:
    """Exactly one byte."""
    if len(data) != 1:
        raise BadLength("Battery Level is exactly 1 byte", offset=min(len(data), 1), raw=bytes(data))
    return BatteryLevel(data[0])


# ------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------

Decoded: TypeAlias = (
    HeartRateMeasurement
    | BloodPressureMeasurement
    | IntermediateCuffPressure
    | TemperatureMeasurement
    | GlucoseMeasurement
    | GlucoseMeasurementContext
    | PlxSpotCheckMeasurement
    | PlxContinuousMeasurement
    | WeightMeasurement
    | BodyCompositionMeasurement
    | DateTime
    | CurrentTime
    | BatteryLevel
)


@dataclass(frozen=True, slots=True)
class CharacteristicSpec:
    """One decodable characteristic."""

    uuid: int
    name: str
    decode: Callable[..., Decoded]


CHARACTERISTICS: dict[int, CharacteristicSpec] = {
    spec.uuid: spec
    for spec in (
        CharacteristicSpec(HEART_RATE_MEASUREMENT, "Heart Rate Measurement", decode_heart_rate_measurement),
        CharacteristicSpec(BLOOD_PRESSURE_MEASUREMENT, "Blood Pressure Measurement", decode_blood_pressure_measurement),
        CharacteristicSpec(INTERMEDIATE_CUFF_PRESSURE, "Intermediate Cuff Pressure", decode_intermediate_cuff_pressure),
        CharacteristicSpec(TEMPERATURE_MEASUREMENT, "Temperature Measurement", decode_temperature_measurement),
        CharacteristicSpec(GLUCOSE_MEASUREMENT, "Glucose Measurement", decode_glucose_measurement),
        CharacteristicSpec(
            GLUCOSE_MEASUREMENT_CONTEXT, "Glucose Measurement Context", decode_glucose_measurement_context
        ),
        CharacteristicSpec(PLX_SPOT_CHECK_MEASUREMENT, "PLX Spot-check Measurement", decode_plx_spot_check),
        CharacteristicSpec(PLX_CONTINUOUS_MEASUREMENT, "PLX Continuous Measurement", decode_plx_continuous),
        CharacteristicSpec(WEIGHT_MEASUREMENT, "Weight Measurement", decode_weight_measurement),
        CharacteristicSpec(
            BODY_COMPOSITION_MEASUREMENT, "Body Composition Measurement", decode_body_composition_measurement
        ),
        CharacteristicSpec(DATE_TIME, "Date Time", decode_date_time),
        CharacteristicSpec(CURRENT_TIME, "Current Time", decode_current_time),
        CharacteristicSpec(BATTERY_LEVEL, "Battery Level", decode_battery_level),
    )
}


def decode(characteristic: int | str, data: bytes | bytearray, *, lenient: bool = False) -> Decoded:
    """Decode one characteristic value. ``characteristic`` is the 16-bit UUID or any form :func:`uuid16` takes.

    Raises only :class:`~drivers.ble.errors.BleParseError` subclasses (with ``characteristic`` set).
    """
    short = characteristic if isinstance(characteristic, int) else uuid16(characteristic)
    spec = CHARACTERISTICS.get(short)
    if spec is None:
        raise UnknownCharacteristic(f"no decoder for characteristic 0x{short:04X}", offset=0, characteristic=short)
    try:
        return spec.decode(bytes(data), lenient=lenient)
    except BleParseError as err:
        err.characteristic = short
        raise


# ------------------------------------------------------------------------------------------------------------
# JSON shape (the vectors' vocabulary)
# ------------------------------------------------------------------------------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, Special | Enum):
        return str(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def as_json(value: Decoded) -> dict[str, object]:
    """The decoded fields as a JSON-ready dict named as in the vectors' ``expected`` objects (without ``valid``).

    IEEE-11073 special values become their strings (``"NaN"``, ``"NRes"``, ``"+INF"``, ``"-INF"``,
    ``"RESERVED"``); absent optional fields are ``None``.
    """
    out = _jsonable(value)
    assert isinstance(out, dict)
    return out

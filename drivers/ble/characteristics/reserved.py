"""Values a decoded characteristic carries in fields the specification reserves for future use.

A reserved value is not an error (issue 20, section 4): a device built to a later revision of a service may set a
flag bit or use an enumeration value this gateway does not know yet. The decoders keep such values exactly as
sent (raw flags, raw status words, raw enumeration values, the ``"reserved"`` name where a field has a name)
and decode the rest of the value; :func:`reserved_values` lists them so that the driver can count them
(``reserved_values`` in its health) and ``kyojo decode ble --reserved`` can show them.

What is reserved, per characteristic (Bluetooth SIG, GATT Specification Supplement (GSS), the section of each
characteristic, and the service specifications HRS 1.0, BLS 1.1, HTS 1.0, GLS 1.0, PLXS 1.0, WSS 1.0, BCS 1.0):

- Heart Rate Measurement 0x2A37: Flags bits 5-7 (GSS "Heart Rate Measurement"; HRS 1.0).
- Blood Pressure Measurement 0x2A35 / Intermediate Cuff Pressure 0x2A36: Flags bits 5-7; Measurement Status
  bits 6-15 and Pulse Rate Range (bits 3-4) value 3 (GSS "Blood Pressure Measurement"; BLS 1.1).
- Temperature Measurement 0x2A1C: Flags bits 3-7; Temperature Type 0 and 10-255 (GSS "Temperature Measurement",
  "Temperature Type" 0x2A1D).
- Glucose Measurement 0x2A18: Flags bits 5-7; Type 0 and 11-15; Sample Location 0 and 5-14; Sensor Status
  Annunciation bits 12-15 (GSS "Glucose Measurement"; GLS 1.0).
- Glucose Measurement Context 0x2A34: Extended Flags (all bits RFU in GLS 1.0); Carbohydrate ID 0 and 8-255;
  Meal 0 and 6-255; Tester 0 and 4-14; Health 0 and 6-14; Medication ID 0 and 6-255 (GSS "Glucose Measurement
  Context").
- PLX Spot-check 0x2A5E / Continuous 0x2A5F: Flags bits 5-7; Measurement Status bits 0-4; Device and Sensor
  Status bits 16-23 (PLXS 1.0; GSS "PLX Spot-check Measurement", "PLX Continuous Measurement").
- Weight Measurement 0x2A9D: Flags bits 4-7 (WSS 1.0; GSS "Weight Measurement").
- Body Composition Measurement 0x2A9C: Flags bits 13-15 (BCS 1.0; GSS "Body Composition Measurement").
- Date Time 0x2A08 (and every Time Stamp field): the values outside the ranges of :meth:`DateTime.reserved_fields`.
- Current Time 0x2A2B: Day of Week 8-255 (GSS "Day of Week"); Adjust Reason bits 4-7 (GSS "Current Time").
- Battery Level 0x2A19: 101-255 (GSS "Battery Level": 0..100 %, other values RFU).
- IEEE 11073-20601 SFLOAT 0x0801 / FLOAT 0x00800001: the reserved special value (decoded as ``"RESERVED"``).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from drivers.ble.characteristics.cardio import (
    BloodPressureMeasurement,
    HeartRateMeasurement,
    IntermediateCuffPressure,
)
from drivers.ble.characteristics.device import DAYS_OF_WEEK, BatteryLevel, CurrentTime
from drivers.ble.characteristics.fields import BitSet, DateTime, _reserved_bits
from drivers.ble.characteristics.glucose import (
    GLUCOSE_LOCATIONS,
    GLUCOSE_SENSOR_STATUS,
    GLUCOSE_TYPES,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
)
from drivers.ble.characteristics.plx import (
    PLX_DEVICE_STATUS,
    PLX_MEASUREMENT_STATUS,
    PlxContinuousMeasurement,
    PlxSpotCheckMeasurement,
)
from drivers.ble.characteristics.thermometer import TEMPERATURE_TYPES, TemperatureMeasurement
from drivers.ble.characteristics.weight import BodyCompositionMeasurement, WeightMeasurement
from drivers.ble.ieee11073 import Special

#: the reserved special words of IEEE 11073-20601 (SFLOAT-Type and FLOAT-Type special values)
RESERVED_SFLOAT_WORD = 0x0801
RESERVED_FLOAT_WORD = 0x00800001

#: Flags bits each characteristic defines (the others are RFU); Body Composition has 16-bit flags
_DEFINED_FLAGS: dict[type, tuple[int, int]] = {
    HeartRateMeasurement: (0x1F, 8),
    BloodPressureMeasurement: (0x1F, 8),
    IntermediateCuffPressure: (0x1F, 8),
    TemperatureMeasurement: (0x07, 8),
    GlucoseMeasurement: (0x1F, 8),
    PlxSpotCheckMeasurement: (0x1F, 8),
    PlxContinuousMeasurement: (0x1F, 8),
    WeightMeasurement: (0x0F, 8),
    BodyCompositionMeasurement: (0x1FFF, 16),
}
#: Glucose Measurement Context enumerations: field -> the defined values (0 and the rest are RFU)
_CONTEXT_ENUMS: dict[str, frozenset[int]] = {
    "carbohydrate_id": frozenset(range(1, 8)),
    "meal": frozenset(range(1, 6)),
    "tester": frozenset({1, 2, 3, 15}),
    "health": frozenset({1, 2, 3, 4, 5, 15}),
    "medication_id": frozenset(range(1, 6)),
}
# Blood Pressure Measurement Status: bits 0-5 defined (bits 3-4 are one 2-bit field), 6-15 RFU
_BP_STATUS_DEFINED = 0x003F


def _bitset(out: dict[str, int], name: str, value: BitSet | None, names: dict[int, str], width: int) -> None:
    if value is not None and (bits := _reserved_bits(value.raw, names, width)):
        out[name] = bits


def _time(out: dict[str, int], name: str, value: DateTime | None) -> None:
    if value is not None:
        for field_name, raw in value.reserved_fields().items():
            out[f"{name}.{field_name}"] = raw


def _specials(out: dict[str, int], value: object) -> None:
    assert is_dataclass(value)
    for f in fields(value):
        if getattr(value, f.name) is Special.RESERVED:
            wide = isinstance(value, TemperatureMeasurement)  # the one FLOAT field; every other is an SFLOAT
            out[f.name] = RESERVED_FLOAT_WORD if wide else RESERVED_SFLOAT_WORD


def reserved_values(value: object) -> dict[str, int]:
    """The reserved-for-future-use values in one decoded characteristic, as ``{field: raw value}``.

    Flag and status words give only their reserved bits (``{"flags": 0xE0}``), enumerations their raw value,
    Date Time fields are named ``<field>.<part>`` (``"timestamp.month": 13``). Empty when there are none.
    """
    out: dict[str, int] = {}
    defined_flags = _DEFINED_FLAGS.get(type(value))
    if defined_flags is not None:
        mask, width = defined_flags
        flags = getattr(value, "flags", 0)
        if bits := flags & ((1 << width) - 1) & ~mask:
            out["flags"] = bits
    match value:
        case BloodPressureMeasurement() | IntermediateCuffPressure():
            _time(out, "timestamp", value.timestamp)
            status = value.measurement_status
            if status is not None:
                if bits := status.raw & 0xFFFF & ~_BP_STATUS_DEFINED:
                    out["measurement_status"] = bits
                if status.pulse_rate_range == "reserved":
                    out["measurement_status.pulse_rate_range"] = status.raw >> 3 & 0b11
        case TemperatureMeasurement():
            _time(out, "timestamp", value.timestamp)
            if value.temperature_type is not None and value.temperature_type not in TEMPERATURE_TYPES:
                out["temperature_type"] = value.temperature_type
        case GlucoseMeasurement():
            _time(out, "base_time", value.base_time)
            if value.type is not None and value.type not in GLUCOSE_TYPES:
                out["type"] = value.type
            if value.sample_location is not None and value.sample_location not in GLUCOSE_LOCATIONS:
                out["sample_location"] = value.sample_location
            _bitset(out, "sensor_status", value.sensor_status, GLUCOSE_SENSOR_STATUS, 16)
        case GlucoseMeasurementContext():
            if value.extended_flags:
                out["extended_flags"] = value.extended_flags
            for name, defined in _CONTEXT_ENUMS.items():
                raw = getattr(value, name)
                if raw is not None and raw not in defined:
                    out[name] = raw
        case PlxSpotCheckMeasurement() | PlxContinuousMeasurement():
            if isinstance(value, PlxSpotCheckMeasurement):
                _time(out, "timestamp", value.timestamp)
            _bitset(out, "measurement_status", value.measurement_status, PLX_MEASUREMENT_STATUS, 16)
            _bitset(out, "device_and_sensor_status", value.device_and_sensor_status, PLX_DEVICE_STATUS, 24)
        case WeightMeasurement() | BodyCompositionMeasurement():
            _time(out, "timestamp", value.timestamp)
        case DateTime():
            out.update(value.reserved_fields())
        case CurrentTime():
            _time(out, "date_time", value.date_time)
            if value.day_of_week >= len(DAYS_OF_WEEK):
                out["day_of_week"] = value.day_of_week
            if bits := value.adjust_reason.raw & 0xF0:
                out["adjust_reason"] = bits
        case BatteryLevel():
            if value.battery_level_pct > 100:
                out["battery_level_pct"] = value.battery_level_pct
        case _:
            pass
    if is_dataclass(value) and not isinstance(value, type):
        _specials(out, value)
    return out

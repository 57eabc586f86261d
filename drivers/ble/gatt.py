"""Sans-IO decoders of the Bluetooth SIG health characteristics (GATT Specification Supplement layouts).

Each characteristic decodes to a frozen dataclass whose field names are the ones of the test vectors
(``tests/data/ble/vectors.json``); :func:`as_json` turns any of them into that JSON shape. Decoding is
pure: bytes in, dataclass out, or a :class:`~drivers.ble.errors.BleParseError` subclass with the offset.

Length policy: a field the flags announce but that does not fit raises :class:`Truncated`; bytes left after
the last announced field raise :class:`TrailingBytes` unless ``lenient=True`` (some devices, and Nordic's
library, pad values; the gateway enables it per device). Fixed-size values (Date Time, Current Time, Battery
Level) must have exactly their size. All multi-byte integers are little-endian.

Reserved values are not errors: a flag bit, status bit, enumeration value or Date Time field value that the
specification reserves for future use is kept as sent and the rest of the value is decoded;
:func:`reserved_values` lists them (see :mod:`drivers.ble.characteristics.reserved` for the spec references).

This module is the registry (:func:`decode`, :data:`CHARACTERISTICS`) and the JSON shape (:func:`as_json`);
the decoders live per profile family in :mod:`drivers.ble.characteristics` (``uuids``, ``fields``, ``cardio``,
``thermometer``, ``glucose``, ``plx``, ``weight``, ``device``) and every public name is re-exported from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

from drivers.ble.characteristics.cardio import (
    BloodPressureMeasurement,
    BloodPressureStatus,
    HeartRateMeasurement,
    IntermediateCuffPressure,
    PressureUnit,
    PulseRateRange,
    SensorContact,
    decode_blood_pressure_measurement,
    decode_heart_rate_measurement,
    decode_intermediate_cuff_pressure,
)
from drivers.ble.characteristics.device import (
    DAYS_OF_WEEK,
    AdjustReason,
    BatteryLevel,
    CurrentTime,
    decode_battery_level,
    decode_current_time,
    decode_date_time,
)
from drivers.ble.characteristics.fields import BitSet, DateTime
from drivers.ble.characteristics.glucose import (
    GLUCOSE_LOCATIONS,
    GLUCOSE_SENSOR_STATUS,
    GLUCOSE_TYPES,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    decode_glucose_measurement,
    decode_glucose_measurement_context,
)
from drivers.ble.characteristics.plx import (
    PLX_DEVICE_STATUS,
    PLX_MEASUREMENT_STATUS,
    PlxContinuousMeasurement,
    PlxSpotCheckMeasurement,
    decode_plx_continuous,
    decode_plx_spot_check,
)
from drivers.ble.characteristics.reserved import reserved_values
from drivers.ble.characteristics.thermometer import (
    TEMPERATURE_TYPES,
    TemperatureMeasurement,
    decode_temperature_measurement,
)
from drivers.ble.characteristics.uuids import (
    BASE_UUID_SUFFIX,
    BATTERY_LEVEL,
    BLOOD_PRESSURE_MEASUREMENT,
    BODY_COMPOSITION_MEASUREMENT,
    CURRENT_TIME,
    DATE_TIME,
    GLUCOSE_MEASUREMENT,
    GLUCOSE_MEASUREMENT_CONTEXT,
    HEART_RATE_MEASUREMENT,
    INTERMEDIATE_CUFF_PRESSURE,
    PLX_CONTINUOUS_MEASUREMENT,
    PLX_SPOT_CHECK_MEASUREMENT,
    TEMPERATURE_MEASUREMENT,
    WEIGHT_MEASUREMENT,
    uuid16,
    uuid128,
)
from drivers.ble.characteristics.weight import (
    UNSUCCESSFUL,
    BodyCompositionMeasurement,
    UnitSystem,
    WeightMeasurement,
    decode_body_composition_measurement,
    decode_weight_measurement,
)
from drivers.ble.errors import (
    BadLength,
    BleParseError,
    Inconsistent,
    TrailingBytes,
    Truncated,
    UnknownCharacteristic,
)
from drivers.ble.ieee11073 import Number, Special, float_from_word, sfloat_from_word

__all__ = [
    "BASE_UUID_SUFFIX",
    "BATTERY_LEVEL",
    "BLOOD_PRESSURE_MEASUREMENT",
    "BODY_COMPOSITION_MEASUREMENT",
    "CHARACTERISTICS",
    "CURRENT_TIME",
    "DATE_TIME",
    "DAYS_OF_WEEK",
    "GLUCOSE_LOCATIONS",
    "GLUCOSE_MEASUREMENT",
    "GLUCOSE_MEASUREMENT_CONTEXT",
    "GLUCOSE_SENSOR_STATUS",
    "GLUCOSE_TYPES",
    "HEART_RATE_MEASUREMENT",
    "INTERMEDIATE_CUFF_PRESSURE",
    "PLX_CONTINUOUS_MEASUREMENT",
    "PLX_DEVICE_STATUS",
    "PLX_MEASUREMENT_STATUS",
    "PLX_SPOT_CHECK_MEASUREMENT",
    "TEMPERATURE_MEASUREMENT",
    "TEMPERATURE_TYPES",
    "UNSUCCESSFUL",
    "WEIGHT_MEASUREMENT",
    "AdjustReason",
    "BadLength",
    "BatteryLevel",
    "BitSet",
    "BleParseError",
    "BloodPressureMeasurement",
    "BloodPressureStatus",
    "BodyCompositionMeasurement",
    "CharacteristicSpec",
    "CurrentTime",
    "DateTime",
    "Decoded",
    "GlucoseMeasurement",
    "GlucoseMeasurementContext",
    "HeartRateMeasurement",
    "Inconsistent",
    "IntermediateCuffPressure",
    "Number",
    "PlxContinuousMeasurement",
    "PlxSpotCheckMeasurement",
    "PressureUnit",
    "PulseRateRange",
    "SensorContact",
    "Special",
    "TemperatureMeasurement",
    "TrailingBytes",
    "Truncated",
    "UnitSystem",
    "UnknownCharacteristic",
    "WeightMeasurement",
    "as_json",
    "decode",
    "decode_battery_level",
    "decode_blood_pressure_measurement",
    "decode_body_composition_measurement",
    "decode_current_time",
    "decode_date_time",
    "decode_glucose_measurement",
    "decode_glucose_measurement_context",
    "decode_heart_rate_measurement",
    "decode_intermediate_cuff_pressure",
    "decode_plx_continuous",
    "decode_plx_spot_check",
    "decode_temperature_measurement",
    "decode_weight_measurement",
    "float_from_word",
    "reserved_values",
    "sfloat_from_word",
    "uuid16",
    "uuid128",
]


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


def _jsonable(value: object) -> object:
    if isinstance(value, Special | Enum):
        return str(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def as_json(value: Decoded, *, reserved: bool = False) -> dict[str, object]:
    """The decoded fields as a JSON-ready dict named as in the vectors' ``expected`` objects (without ``valid``).

    IEEE-11073 special values become their strings (``"NaN"``, ``"NRes"``, ``"+INF"``, ``"-INF"``,
    ``"RESERVED"``); absent optional fields are ``None``. With ``reserved=True`` a ``"reserved"`` object
    (:func:`reserved_values`: field -> raw reserved value or reserved bits) is added when the value carries any;
    the default shape stays exactly the vectors' (whose rule for reserved flag bits is "ignored", dev-033).
    """
    out = _jsonable(value)
    assert isinstance(out, dict)
    if reserved and (found := reserved_values(value)):
        out["reserved"] = found
    return out

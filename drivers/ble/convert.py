"""Decoded characteristics -> Readings in the contract's vocabulary (``kyojo.contract.vocab.METRICS``; units
converted once, here).

A value is forwarded as a Reading only when it is a measurement of the person: IEEE-11073 special values,
physiologically implausible values, "measurement unsuccessful" markers, heart rate without skin contact,
glucose control-solution tests, and PLX/glucose values the device itself marks invalid are *flagged*
(returned in :attr:`Conversion.flagged`, for counting and logging) and never become Readings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from drivers.ble.gatt import (
    BatteryLevel,
    BloodPressureMeasurement,
    BodyCompositionMeasurement,
    DateTime,
    Decoded,
    GlucoseMeasurement,
    HeartRateMeasurement,
    PlxContinuousMeasurement,
    PlxSpotCheckMeasurement,
    TemperatureMeasurement,
    WeightMeasurement,
)
from drivers.ble.ieee11073 import Number, Special
from kyojo.contract.vocab import GLUCOSE_MMOL_TO_MGDL, METRICS, Reading

#: 1 kPa in mmHg
KPA_TO_MMHG = 7.50062
#: 1 lb in kg (exact, international pound)
LB_TO_KG = 0.45359237
#: kg/L -> mg/dL
KG_PER_L_TO_MG_PER_DL = 100_000
#: mol/L -> mmol/L
MOL_TO_MMOL = 1000

#: Inclusive plausible range per metric, in the metric's unit; outside it a value is flagged, not forwarded.
PLAUSIBLE: Mapping[str, tuple[float, float]] = {
    "heart_rate": (20, 300),
    "pulse_rate": (20, 300),
    "rr_interval": (200, 3000),  # 300 .. 20 bpm
    "systolic": (20, 350),
    "diastolic": (10, 350),
    "mean_arterial_pressure": (10, 350),
    "body_temperature": (25, 45),
    "glucose": (5, 2000),
    "spo2": (0, 100),
    "weight": (0.5, 500),
    "body_fat": (0, 100),
    "battery_level": (0, 100),
}

# PLX Measurement Status bits that mean "not a real measurement of this person"
_PLX_NOT_REAL = frozenset(
    {
        "measurement_unavailable",
        "invalid_measurement_detected",
        "data_for_demonstration",
        "data_for_testing",
        "calibration_ongoing",
    }
)
# Glucose Sensor Status bits that make the concentration unusable (battery low and time fault do not)
_GLUCOSE_BAD_RESULT = frozenset(
    {
        "sensor_malfunction",
        "sample_size_insufficient",
        "strip_insertion_error",
        "strip_type_incorrect",
        "sensor_result_higher_than_device_can_process",
        "sensor_result_lower_than_device_can_process",
        "sensor_temperature_too_high",
        "sensor_temperature_too_low",
        "sensor_read_interrupted",
        "general_device_fault",
    }
)


@dataclass(frozen=True, slots=True)
class Flagged:
    """A value that was decoded but not forwarded, and why (``reason`` is a stable counter label)."""

    metric: str
    value: float | str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Conversion:
    """The Readings of one decoded value and the values held back."""

    readings: tuple[Reading, ...]
    flagged: tuple[Flagged, ...]


class _Builder:
    def __init__(self, device: str, subject: str, ts: float, extra: dict[str, str]) -> None:
        self.device, self.subject, self.ts, self.extra = device, subject, ts, extra
        self.readings: list[Reading] = []
        self.flagged: list[Flagged] = []

    def flag(self, metric: str, value: Number | None, reason: str) -> None:
        self.flagged.append(Flagged(metric, str(value) if isinstance(value, Special) else value, reason))

    def add(self, metric: str, value: Number | None, scale: float = 1.0, offset: float = 0.0) -> None:
        """Forward ``value * scale + offset`` unless it is missing, special or implausible."""
        if value is None:
            return
        if isinstance(value, Special):
            self.flag(metric, value, "special_value")
            return
        converted = value * scale + offset
        low, high = PLAUSIBLE.get(metric, (float("-inf"), float("inf")))
        if not low <= converted <= high:
            self.flag(metric, converted, "implausible")
            return
        self.readings.append(
            Reading(self.device, self.subject, metric, converted, METRICS[metric].unit, self.ts, dict(self.extra))
        )

    def result(self) -> Conversion:
        return Conversion(tuple(self.readings), tuple(self.flagged))


def _device_time(value: DateTime | None) -> dict[str, str]:
    when = value.to_datetime() if value is not None else None
    return {"device_time": when.isoformat()} if when is not None else {}


def to_readings(value: Decoded, *, device: str, subject: str, ts: float) -> Conversion:
    """Readings for one decoded characteristic value.

    ``ts`` (POSIX seconds, UTC) is the time the gateway received the value: device clocks have no time zone
    and are often unset, so a device Time Stamp is kept as ``extra["device_time"]`` (local wall clock) only.
    Characteristics that carry no person measurement (Date Time, Current Time, Glucose Context, Intermediate
    Cuff Pressure, which is the live pressure while the cuff inflates) give no Readings.
    """
    b = _Builder(device, subject, ts, {})
    match value:
        case HeartRateMeasurement():
            rr_ms = value.rr_intervals_ms or ()
            if value.sensor_contact == "not_detected":
                # The sensor says it is not on the skin: whatever it counts is not this person's heart.
                b.flag("heart_rate", value.heart_rate_bpm, "no_skin_contact")
                for ms in rr_ms:
                    b.flag("rr_interval", ms, "no_skin_contact")
            else:
                b.add("heart_rate", value.heart_rate_bpm)
                for ms in rr_ms:
                    b.add("rr_interval", ms)
        case BloodPressureMeasurement():
            b.extra.update(_device_time(value.timestamp))
            scale = KPA_TO_MMHG if value.unit == "kPa" else 1.0
            sys_, dia = value.systolic, value.diastolic
            if isinstance(sys_, float) and isinstance(dia, float) and sys_ < dia:
                b.flag("systolic", sys_ * scale, "systolic_below_diastolic")
                b.flag("diastolic", dia * scale, "systolic_below_diastolic")
            else:
                b.add("systolic", sys_, scale)
                b.add("diastolic", dia, scale)
            b.add("mean_arterial_pressure", value.mean_arterial_pressure, scale)
            b.add("pulse_rate", value.pulse_rate_bpm)
        case TemperatureMeasurement():
            b.extra.update(_device_time(value.timestamp))
            if value.temperature_type_name:
                b.extra["site"] = value.temperature_type_name
            if value.unit == "degF":
                b.add("body_temperature", value.temperature, 5 / 9, -32 * 5 / 9)
            else:
                b.add("body_temperature", value.temperature)
        case GlucoseMeasurement():
            _glucose(b, value)
        case PlxSpotCheckMeasurement() | PlxContinuousMeasurement():
            if isinstance(value, PlxSpotCheckMeasurement):
                b.extra.update(_device_time(value.timestamp))
            bad = set(value.measurement_status.set) & _PLX_NOT_REAL if value.measurement_status else set()
            if bad:
                reason = "device_status:" + ",".join(sorted(bad))
                b.flag("spo2", value.spo2_pct, reason)
                b.flag("pulse_rate", value.pulse_rate_bpm, reason)
            else:
                b.add("spo2", value.spo2_pct)
                b.add("pulse_rate", value.pulse_rate_bpm)
        case WeightMeasurement():
            b.extra.update(_device_time(value.timestamp))
            if value.measurement_unsuccessful:
                b.flag("weight", None, "measurement_unsuccessful")
            else:
                b.add("weight", value.weight, LB_TO_KG if value.weight_unit == "lb" else 1.0)
        case BodyCompositionMeasurement():
            b.extra.update(_device_time(value.timestamp))
            if value.measurement_unsuccessful:
                b.flag("body_fat", None, "measurement_unsuccessful")
            else:
                b.add("body_fat", value.body_fat_pct)
            b.add("weight", value.weight, LB_TO_KG if value.mass_unit == "lb" else 1.0)
        case BatteryLevel():
            b.add("battery_level", value.battery_level_pct)
        case _:
            pass
    return b.result()


def _glucose(b: _Builder, value: GlucoseMeasurement) -> None:
    when = value.user_facing_time()
    if when is not None:
        b.extra["device_time"] = when.isoformat()
    b.extra["sequence_number"] = str(value.sequence_number)
    if value.concentration is None:
        return
    if value.type == 10 or value.sample_location == 4:
        # Control solution: a meter check, not a person's blood.
        b.flag("glucose", value.concentration, "control_solution")
        return
    bad = set(value.sensor_status.set) & _GLUCOSE_BAD_RESULT if value.sensor_status else set()
    if bad:
        b.flag("glucose", value.concentration, "sensor_status:" + ",".join(sorted(bad)))
        return
    if value.concentration_unit == "mol/L":
        b.add("glucose", value.concentration, MOL_TO_MMOL * GLUCOSE_MMOL_TO_MGDL)
    else:
        b.add("glucose", value.concentration, KG_PER_L_TO_MG_PER_DL)

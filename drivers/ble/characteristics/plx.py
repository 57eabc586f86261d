"""Pulse Oximeter profile: PLX Spot-check Measurement 0x2A5E and PLX Continuous Measurement 0x2A5F."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.ble.characteristics.fields import BitSet, DateTime, _bit, _names, _Reader
from drivers.ble.ieee11073 import Number

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

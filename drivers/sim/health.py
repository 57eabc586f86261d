"""Simulated health wearables: heart-rate strap, blood-pressure cuff, thermometer, pulse oximeter.

Numbers follow textbook physiology (cited next to each model); they are meant to be plausible for a healthy
adult (or a hypertensive one, for the cuff), not to reproduce any one person.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from drivers.sim.base import (
    HOUR_S,
    JST_OFFSET_H,
    BaseSimulator,
    FloatArray,
    IntArray,
    day_start,
    local_day,
    local_hour,
    step_candidates,
)

_TWO_PI = 2.0 * math.pi


def _night_factor(hour: FloatArray) -> FloatArray:
    """0 by day, rising smoothly to 1 at ~03:30 local (sleep), back to 0 by ~09:30."""
    return np.clip(np.cos(_TWO_PI * (hour - 3.5) / 24.0), 0.0, None) ** 1.5


class HeartRateStrap(BaseSimulator):
    """A BLE chest strap (Heart Rate Service): ``heart_rate`` every second, ``rr_interval`` per beat,
    ``battery_level`` every 10 minutes.

    Model of the heart rate (bpm), a pure function of time:
    - resting level 60-72 bpm (per device; normal adult resting HR is 60-100, fit adults 60-70);
    - circadian rhythm, +-3 bpm peaking late afternoon, and a nocturnal dip of ~9 bpm during sleep
      (heart rate falls ~10-15 % in sleep through vagal dominance);
    - slow wandering (smooth noise, minutes) and beat-to-beat jitter;
    - activity bouts (walks, stairs, chores) 10-40 min to 110-140 bpm in waking hours, with first-order on
      kinetics (time constant ~40 s) and recovery (~60 s; heart-rate recovery is ~12-20 bpm in the first minute).

    RR intervals: the beats of each second (``floor(HR/60 + u)``, so the expected count is exactly HR/60) are
    timestamped at evenly spaced fractions of that second, the last one at the heart-rate reading's ts. Each
    RR is 60000/HR ms modulated by respiratory sinus arrhythmia (~3.5 % at 0.25 Hz, ~15 breaths/min, fading
    with exercise) and ~2 % beat-to-beat variability, then quantised to 1/1024 s as the BLE Heart Rate
    Measurement characteristic carries it.

    Battery: a CR2025 strap lasts ~400 h of use; the level falls linearly and jumps back to 100 % when the cell
    is replaced (a sawtooth), reported as an integer percent.
    """

    kind = "hr_strap"
    metrics: tuple[str, ...] = ("heart_rate", "rr_interval", "battery_level")

    MAX_BEATS_PER_S = 4

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        tz_offset_h: float = JST_OFFSET_H,
        resting_hr: float | None = None,
        activity_prob_per_h: float = 0.15,
        battery_life_h: float = 400.0,
        battery_period_s: float = 600.0,
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        u = self.rng.uniform(0, [0, 1])
        self.resting_hr = float(resting_hr) if resting_hr is not None else 60.0 + 12.0 * float(u[0])
        self.activity_prob_per_h = activity_prob_per_h
        self.battery_life_h = battery_life_h
        self.battery_period_s = battery_period_s
        self._battery_phase_h = float(u[1]) * battery_life_h

    def _bouts(self, t: FloatArray, base: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(extra bpm from activity, activity envelope 0..1). Bouts start in local hours H and H-1."""
        hour_idx = np.floor((t + self.tz_offset_h * HOUR_S) / HOUR_S).astype(np.int64)
        extra = np.zeros_like(t)
        env_max = np.zeros_like(t)
        for back in (0, 1):
            h = hour_idx - back
            hod = np.mod(h, 24)
            awake = (hod >= 7) & (hod < 22)
            active = awake & (self.rng.uniform(10, h) < self.activity_prob_per_h)
            start = h.astype(np.float64) * HOUR_S - self.tz_offset_h * HOUR_S + self.rng.uniform(11, h) * HOUR_S
            dur = 600.0 + 1800.0 * self.rng.uniform(12, h)
            target = 110.0 + 30.0 * self.rng.uniform(13, h)
            tau = t - start
            on = 1.0 - np.exp(-np.clip(tau, 0.0, None) / 40.0)
            at_end = 1.0 - np.exp(-dur / 40.0)
            off = at_end * np.exp(-np.clip(tau - dur, 0.0, None) / 60.0)
            env = np.where(tau < 0, 0.0, np.where(tau < dur, on, off))
            env = np.where(active, env, 0.0)
            extra = np.maximum(extra, env * np.clip(target - base, 0.0, None))
            env_max = np.maximum(env_max, env)
        return extra, env_max

    def heart_rate_model(self, t: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Underlying (noise-free of beat jitter) heart rate in bpm at instants ``t``, and the activity envelope."""
        hour = local_hour(t, self.tz_offset_h)
        base = (
            self.resting_hr
            + 3.0 * np.cos(_TWO_PI * (hour - 17.0) / 24.0)
            - 9.0 * _night_factor(hour)
            + 2.0 * self.rng.smooth(1, t, 120.0)
            + 2.0 * self.rng.smooth(2, t, 900.0)
        )
        extra, env = self._bouts(t, base)
        return np.clip(base + extra, 38.0, 195.0), env

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        k = step_candidates(t0, t1, 1.0)
        t = k.astype(np.float64)
        hr, env = self.heart_rate_model(t)
        hr_reported = np.round(np.clip(hr + 0.8 * self.rng.normal(3, k), 38.0, 195.0)).astype(np.float64)

        # RR intervals of the beats in second (k-1, k]
        nmax = self.MAX_BEATS_PER_S
        n = np.clip(np.floor(hr / 60.0 + self.rng.uniform(4, k)), 0, nmax).astype(np.int64)
        i = np.arange(nmax, dtype=np.int64)[None, :]
        mask = i < n[:, None]
        n_safe = np.maximum(n, 1)[:, None].astype(np.float64)
        ts_beat = (t - 1.0)[:, None] + (i + 1).astype(np.float64) / n_safe
        rsa = 0.035 * (1.0 - env)[:, None] * np.sin(_TWO_PI * 0.25 * ts_beat + 1.0)
        jitter = 0.02 * np.clip(self.rng.normal(5, k[:, None] * nmax + i), -3.0, 3.0)
        rr = 60000.0 / hr[:, None] * (1.0 + rsa + jitter)
        rr = np.round(rr * 1.024) / 1.024  # 1/1024 s resolution of the BLE characteristic, in ms

        # battery level
        kb = step_candidates(t0, t1, self.battery_period_s)
        tb = kb.astype(np.float64) * self.battery_period_s
        used = np.mod(tb / HOUR_S + self._battery_phase_h, self.battery_life_h) / self.battery_life_h
        level = np.clip(100.0 - np.floor(100.0 * used), 0.0, 100.0)
        return [
            ("heart_rate", t, hr_reported),
            ("rr_interval", ts_beat[mask], rr[mask]),
            ("battery_level", tb, level),
        ]


BPProfile = Literal["normal", "hypertensive"]

#: mean home systolic, diastolic (mmHg) and pulse (bpm) of each profile. JSH 2019: home BP >= 135/85 is
#: hypertension; a normal adult's home BP is around 115-120 / 70-78.
BP_PROFILES: dict[str, tuple[float, float, float]] = {
    "normal": (118.0, 76.0, 68.0),
    "hypertensive": (150.0, 95.0, 74.0),
}


class BloodPressureCuff(BaseSimulator):
    """An upper-arm cuff used twice a day, as the Japanese Society of Hypertension guideline asks for home BP:
    in the morning (within an hour of waking, before breakfast and medication, default ~07:00) and in the
    evening before bed (~21:00), each time +- ``jitter_min`` minutes.

    Each measurement emits ``systolic``, ``diastolic``, ``mean_arterial_pressure`` and ``pulse_rate`` at the
    same ts. SBP/DBP are integers (as cuffs display them); MAP = DBP + (SBP - DBP)/3 exactly. Day-to-day
    variability of home SBP is ~6 mmHg (DBP ~4); a slow drift over weeks (+-4 mmHg) and a morning surge
    (+5 mmHg hypertensive, +2 normal) are added. Pulse pressure is kept >= 25 mmHg.
    """

    kind = "bp_cuff"
    metrics: tuple[str, ...] = ("systolic", "diastolic", "mean_arterial_pressure", "pulse_rate")

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        profile: BPProfile = "normal",
        tz_offset_h: float = JST_OFFSET_H,
        times_h: tuple[float, float] = (7.0, 21.0),
        jitter_min: float = 15.0,
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        if profile not in BP_PROFILES:
            raise ValueError(f"unknown blood-pressure profile {profile!r}")
        if not all(jitter_min / 60.0 <= h <= 24.0 - jitter_min / 60.0 - 1.0 / 60.0 for h in times_h):
            raise ValueError("measurement times must stay inside the local day")
        self.profile = profile
        self.times_h = times_h
        self.jitter_min = jitter_min

    def measurement_times(self, days: IntArray) -> FloatArray:
        """UTC instants (whole seconds) of the measurements of the given local days, shape (len(days), 2)."""
        d = np.asarray(days, dtype=np.int64)[:, None]
        slot = np.arange(len(self.times_h), dtype=np.int64)[None, :]
        idx = d * 2 + slot
        jitter = (2.0 * self.rng.uniform(20, idx) - 1.0) * self.jitter_min * 60.0
        hours = np.asarray(self.times_h, dtype=np.float64)[None, :]
        return np.round(day_start(d, self.tz_offset_h) + hours * HOUR_S + jitter)

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        days = np.arange(int(local_day(t0, self.tz_offset_h)), int(local_day(t1, self.tz_offset_h)) + 1)
        ts = self.measurement_times(days).ravel()
        d = np.repeat(days, 2)
        slot = np.tile(np.arange(2), len(days))
        idx = d * 2 + slot
        m_sbp, m_dbp, m_pr = BP_PROFILES[self.profile]
        drift = 4.0 * self.rng.smooth(21, d.astype(np.float64), 7.0)  # knots every 7 days
        surge = np.where(slot == 0, 5.0 if self.profile == "hypertensive" else 2.0, -1.0)
        sbp = np.round(m_sbp + drift + surge + 6.0 * np.clip(self.rng.normal(22, idx), -3, 3))
        dbp = np.round(m_dbp + 0.6 * drift + 0.5 * surge + 4.0 * np.clip(self.rng.normal(23, idx), -3, 3))
        dbp = np.minimum(dbp, sbp - 25.0)
        mean_ap = dbp + (sbp - dbp) / 3.0
        pr = np.round(m_pr + 5.0 * np.clip(self.rng.normal(24, idx), -3, 3))
        return [
            ("systolic", ts, sbp),
            ("diastolic", ts, dbp),
            ("mean_arterial_pressure", ts, mean_ap),
            ("pulse_rate", ts, pr),
        ]


class Thermometer(BaseSimulator):
    """A BLE thermometer used 2-3 times a day: ~07:30 and ~21:30 every day, ~12:30 on about half the days.

    Body temperature follows the circadian rhythm (minimum early morning, maximum late afternoon, ~0.5 degC
    peak to trough) around a per-person mean of 36.45-36.75 degC, with 0.08 degC measurement noise, rounded to
    0.1 degC and kept within 36.2-37.0 degC when afebrile. With ``fever_prob_per_day`` > 0, a fever episode
    can start on any day and lasts three days (+1.5, +1.1, +0.4 degC x 0.8-1.3).
    """

    kind = "thermometer"
    metrics: tuple[str, ...] = ("body_temperature",)

    SLOTS_H = (7.5, 12.5, 21.5)
    SLOT_PROB = (1.0, 0.5, 1.0)
    FEVER_PROFILE = (1.5, 1.1, 0.4)

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        tz_offset_h: float = JST_OFFSET_H,
        fever_prob_per_day: float = 0.0,
        jitter_min: float = 20.0,
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        self.fever_prob_per_day = fever_prob_per_day
        self.jitter_min = jitter_min
        self.mean_c = 36.6 + 0.15 * (2.0 * float(self.rng.uniform(0, 0)) - 1.0)

    def fever_offset(self, days: IntArray) -> FloatArray:
        """Fever contribution (degC) on each local day (overlapping episodes do not add up)."""
        out = np.zeros(len(days))
        for back, amp in enumerate(self.FEVER_PROFILE):
            d0 = days - back
            starts = self.rng.uniform(30, d0) < self.fever_prob_per_day
            out = np.maximum(out, np.where(starts, amp * (0.8 + 0.5 * self.rng.uniform(31, d0)), 0.0))
        return out

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        days = np.arange(int(local_day(t0, self.tz_offset_h)), int(local_day(t1, self.tz_offset_h)) + 1)
        n_slots = len(self.SLOTS_H)
        d = np.repeat(days, n_slots)
        slot = np.tile(np.arange(n_slots), len(days))
        idx = d * n_slots + slot
        used = self.rng.uniform(32, idx) < np.asarray(self.SLOT_PROB)[slot]
        jitter = (2.0 * self.rng.uniform(33, idx) - 1.0) * self.jitter_min * 60.0
        ts = np.round(day_start(d, self.tz_offset_h) + np.asarray(self.SLOTS_H)[slot] * HOUR_S + jitter)
        hour = local_hour(ts, self.tz_offset_h)
        temp = self.mean_c + 0.25 * np.cos(2.0 * math.pi * (hour - 17.5) / 24.0)
        temp = np.clip(temp + 0.08 * self.rng.normal(34, idx), 36.2, 37.0)
        temp = np.round(temp + self.fever_offset(d), 1)
        return [("body_temperature", ts[used], temp[used])]


class PulseOximeter(BaseSimulator):
    """A fingertip/wrist oximeter worn overnight (default 23:00-07:00 local), reporting ``spo2`` and
    ``pulse_rate`` every ``period_s`` (60 s) while worn; nothing while not worn.

    Healthy adults keep SpO2 at 95-99 % in sleep (a slight fall vs. waking); values are integers wandering over
    tens of minutes. Sleeping pulse is ~50-65 bpm.
    """

    kind = "pulse_oximeter"
    metrics: tuple[str, ...] = ("spo2", "pulse_rate")

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        tz_offset_h: float = JST_OFFSET_H,
        period_s: float = 60.0,
        worn_h: tuple[float, float] = (23.0, 7.0),
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        if period_s <= 0:
            raise ValueError("period_s must be > 0")
        self.period_s = period_s
        self.worn_h = worn_h
        self.pulse_mean = 54.0 + 8.0 * float(self.rng.uniform(0, 0))

    def worn(self, t: FloatArray) -> npt.NDArray[np.bool_]:
        """Whether the device is worn at instants ``t``."""
        h = local_hour(t, self.tz_offset_h)
        a, b = self.worn_h
        return (h >= a) | (h < b) if a > b else (h >= a) & (h < b)

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        k = step_candidates(t0, t1, self.period_s)
        t = k.astype(np.float64) * self.period_s
        on = self.worn(t)
        spo2 = np.clip(np.round(97.0 + 0.8 * self.rng.smooth(1, t, 1800.0) + 0.6 * self.rng.normal(2, k)), 95, 99)
        pr = np.round(self.pulse_mean + 3.0 * self.rng.smooth(3, t, 1200.0) + 1.5 * self.rng.normal(4, k))
        pr = np.clip(pr, 40.0, 100.0)
        return [("spo2", t[on], spo2[on]), ("pulse_rate", t[on], pr[on])]

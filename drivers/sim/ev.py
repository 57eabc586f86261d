"""Simulated home EV charger (an OCPP charge point in the real deployment)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.sim.base import (
    COUNTER_ORIGIN,
    HOUR_S,
    JST_OFFSET_H,
    BaseSimulator,
    FloatArray,
    IntArray,
    day_start,
    local_day,
    step_candidates,
)
from drivers.sim.energy import _CounterMixin


@dataclass(frozen=True, slots=True)
class Sessions:
    """Charging sessions, one slot per local day (arrays indexed like the days asked for).

    ``start``/``end`` are UTC instants (``end == start`` on days without a session); ``soc0`` the state of
    charge (%) at plug-in; ``t_cc`` the seconds of constant-power charging; ``s1`` the soc where the taper
    begins; ``energy`` the session's total energy drawn from the grid (Wh).
    """

    start: FloatArray
    end: FloatArray
    soc0: FloatArray
    t_cc: FloatArray
    s1: FloatArray
    energy: FloatArray


class EVCharger(_CounterMixin, BaseSimulator):
    """A 6 kW home charger (Japan: 200 V x 30 A) and the car that plugs into it every evening.

    One session per day (with probability ``charge_prob``): plug-in uniformly in ``plug_in_h`` (18:00-21:00
    local), arrival state of charge 40-75 %, charge to ``target_soc`` (90 %) or until departure the next
    morning (07:00-08:00). Battery 40 kWh (e.g. Nissan Leaf), charging efficiency 90 % (AC to battery).
    Constant power up to ``taper_soc`` (80 %); above it power falls in proportion to (100 - soc), the constant-
    voltage phase of lithium-ion charging, which makes soc approach 100 % exponentially. Power, energy and
    soc are closed-form functions of time.

    Output: while a session overlaps the reporting interval, ``ev_power`` (mean over the interval, W),
    ``ev_energy`` (cumulative Wh) and ``soc`` (%, 0.1 resolution) every ``period_s`` (10 s); when idle, only
    ``ev_power`` = 0 and ``ev_energy`` every ``idle_period_s`` (60 s), as a heartbeat (no soc: no car).
    """

    kind = "ev_charger"
    metrics: tuple[str, ...] = ("ev_power", "ev_energy", "soc")

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        period_s: float = 10.0,
        idle_period_s: float = 60.0,
        tz_offset_h: float = JST_OFFSET_H,
        max_power_w: float = 6000.0,
        capacity_wh: float = 40_000.0,
        efficiency: float = 0.9,
        taper_soc: float = 80.0,
        target_soc: float = 90.0,
        plug_in_h: tuple[float, float] = (18.0, 21.0),
        depart_h: tuple[float, float] = (7.0, 8.0),
        charge_prob: float = 1.0,
        origin: float = COUNTER_ORIGIN,
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        if period_s <= 0 or not (idle_period_s / period_s).is_integer():
            raise ValueError("idle_period_s must be a multiple of period_s")
        if not 0 < taper_soc < 100 or not 0 < target_soc < 100:
            raise ValueError("taper_soc and target_soc must be in (0, 100)")
        if not (12.0 <= plug_in_h[0] <= plug_in_h[1] <= 23.0 and 0.0 <= depart_h[0] <= depart_h[1] <= 11.0):
            raise ValueError("plug-in must be in the evening and departure the next morning")
        self.period_s = float(period_s)
        self.idle_period_s = float(idle_period_s)
        self.max_power_w = max_power_w
        self.capacity_wh = capacity_wh
        self.efficiency = efficiency
        self.taper_soc = taper_soc
        self.target_soc = target_soc
        self.plug_in_h = plug_in_h
        self.depart_h = depart_h
        self.charge_prob = charge_prob
        # soc rise rate at full power, %/s
        self._rate = max_power_w * efficiency * 100.0 / (capacity_wh * HOUR_S)
        self._a = self._rate / (100.0 - taper_soc)  # 1/s, exponential rate of the taper
        self._init_counter(origin)

    def sessions(self, days: IntArray) -> Sessions:
        """The sessions starting on the given local days."""
        d = np.asarray(days, dtype=np.int64)
        lo, hi = self.plug_in_h
        start = np.round(day_start(d, self.tz_offset_h) + (lo + (hi - lo) * self.rng.uniform(1, d)) * HOUR_S)
        dlo, dhi = self.depart_h
        depart = np.round(day_start(d + 1, self.tz_offset_h) + (dlo + (dhi - dlo) * self.rng.uniform(2, d)) * HOUR_S)
        soc0 = np.minimum(40.0 + 35.0 * self.rng.uniform(3, d), self.target_soc - 5.0)
        active = self.rng.uniform(4, d) < self.charge_prob
        taper, target = self.taper_soc, self.target_soc
        t_cc = np.clip(min(target, taper) - soc0, 0.0, None) / self._rate
        s1 = np.maximum(soc0, taper)
        if target > taper:
            t_taper = np.log(np.maximum((100.0 - s1) / (100.0 - target), 1.0)) / self._a
        else:
            t_taper = np.zeros_like(soc0)
        end = np.where(active, np.minimum(start + t_cc + t_taper, depart), start)
        partial = Sessions(start, end, soc0, t_cc, s1, np.zeros_like(start))
        energy = self._delivered(partial, end)
        return Sessions(start, end, soc0, t_cc, s1, energy)

    def _delivered(self, s: Sessions, t: FloatArray) -> FloatArray:
        """Energy (Wh) drawn by sessions ``s`` by instants ``t`` (0 before plug-in, the total after)."""
        tau = np.clip(t - s.start, 0.0, None)
        tau = np.minimum(tau, s.end - s.start)
        tau_cc = np.minimum(tau, s.t_cc)
        tau_t = tau - tau_cc
        p0 = self.max_power_w * (100.0 - s.s1) / (100.0 - self.taper_soc)
        taper_j = p0 * (-np.expm1(-self._a * tau_t)) / self._a
        return (self.max_power_w * tau_cc + taper_j) / HOUR_S

    def _soc(self, s: Sessions, t: FloatArray) -> FloatArray:
        tau = np.minimum(np.clip(t - s.start, 0.0, None), s.end - s.start)
        tau_cc = np.minimum(tau, s.t_cc)
        tau_t = tau - tau_cc
        cc = s.soc0 + self._rate * tau_cc
        return np.where(tau_t > 0, 100.0 - (100.0 - s.s1) * np.exp(-self._a * tau_t), cc)

    def _day_totals(self, days: IntArray) -> FloatArray:
        return self.sessions(days).energy

    def energy_at(self, t: FloatArray) -> FloatArray:
        """Exact ``ev_energy`` counter (Wh) at instants ``t``."""
        t = np.asarray(t, dtype=np.float64)
        d = local_day(t, self.tz_offset_h)
        out = np.empty(t.shape)
        for day in np.unique(d).tolist():
            sel = d == day
            prev = self.sessions(np.array([day - 1]))
            cur = self.sessions(np.array([day]))
            # sessions before day-1 have ended (departure is the next morning), so they are in the prefix
            out[sel] = self.prefix_energy(day - 1) + self._delivered(prev, t[sel]) + self._delivered(cur, t[sel])
        return out

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        k = step_candidates(t0, t1, self.period_s)
        t = k.astype(np.float64) * self.period_s
        t_prev = t - self.period_s
        e = self.energy_at(np.concatenate([[t_prev[0]], t]))
        power = np.round(np.diff(e) * (HOUR_S / self.period_s), 1)
        d = local_day(t, self.tz_offset_h)
        charging = np.zeros(t.shape, dtype=bool)
        soc = np.zeros(t.shape)
        for day in np.unique(d).tolist():
            sel = d == day
            for dd in (day - 1, day):
                s = self.sessions(np.array([dd]))
                hit = sel & (s.start[0] < t) & (s.end[0] > t_prev) & (s.end[0] > s.start[0])
                charging |= hit
                soc = np.where(hit, self._soc(s, t), soc)
        idle_tick = np.mod(k, round(self.idle_period_s / self.period_s)) == 0
        emit = charging | idle_tick
        power = np.where(charging, power, 0.0)
        return [
            ("ev_power", t[emit], power[emit]),
            ("ev_energy", t[emit], e[1:][emit]),
            ("soc", t[charging], np.round(soc[charging], 1)),
        ]

"""Simulated smart plugs (one appliance each) and the whole-home smart meter.

Power convention (both): the ``power`` reported at ``ts = k * period_s`` is the mean power over the interval
``((k-1) * period_s, ts]`` -- what a metering IC (HLW8012/BL0937 in plugs, the meter's pulse counter) actually
measures. The simulated power is therefore piecewise constant per interval, and the ``energy`` counter (Wh,
cumulative since :data:`~drivers.sim.base.COUNTER_ORIGIN`) is its exact integral, computed in closed form from
the time (day-level energy totals from the origin plus an in-day cumulative sum), never accumulated call by
call: ``energy(k) - energy(k-1) == power(k) * period_s / 3600`` up to the 0.1 W rounding of ``power``.

Mains is Japan's: 100 V single phase (legal range 101 +- 6 V; here ~100 V +- 1.5 V plus the drop on the
branch wiring), 15 A per outlet. That limit is why the default kettle is 1.25 kW and the washing machine's
heater 1.3 kW: a 2 kW appliance would draw 20 A on 100 V (pass ``power_w`` to change it).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from drivers.sim.base import (
    COUNTER_ORIGIN,
    DAY_S,
    HOUR_S,
    JST_OFFSET_H,
    BaseSimulator,
    CounterRng,
    FloatArray,
    IntArray,
    local_day,
    stable_key,
    step_candidates,
)

Appliance = Literal["fridge", "kettle", "washing_machine", "tv"]
APPLIANCES: tuple[str, ...] = ("fridge", "kettle", "washing_machine", "tv")

#: default rated power (W) of the appliance's main load
DEFAULT_POWER_W: dict[str, float] = {"fridge": 100.0, "kettle": 1250.0, "washing_machine": 1300.0, "tv": 100.0}
#: power drawn when idle/off (W)
STANDBY_W: dict[str, float] = {"fridge": 1.0, "kettle": 0.0, "washing_machine": 0.8, "tv": 0.5}

_WIRING_OHM = 0.1  # branch circuit resistance: 12.5 A drops ~1.25 V


@dataclass(frozen=True, slots=True)
class Segments:
    """On-periods of an appliance in local days: arrays of shape (days, slots), in steps from local midnight.

    ``n == 0`` marks an unused slot. Segments of one day do not overlap and end within the day.
    """

    start: IntArray
    n: IntArray
    watts: FloatArray
    noise: FloatArray  # relative standard deviation of the (zero-mean) fluctuation within the segment


def _steps(seconds: FloatArray, period_s: float) -> IntArray:
    return np.maximum(np.round(seconds / period_s), 1).astype(np.int64)


def _fridge(rng: CounterRng, days: IntArray, spd: int, p: float, rated: float) -> Segments:
    """Compressor cycles ~12-18 min on at ~85-110 W (a 400 L fridge's compressor draws ~100 W), 20-30 min
    off; on ~90 % of days one cycle is a defrost (heater 200-250 W for 20-30 min, compressor off).
    About 0.8-0.9 kWh/day, in line with current Japanese 400-500 L fridges (250-350 kWh/year)."""
    m_slots = 48
    d = days[:, None]
    m = np.arange(m_slots, dtype=np.int64)[None, :]
    idx = d * 64 + m
    on = _steps(60.0 * (12.0 + 6.0 * rng.uniform(101, idx)), p)
    off = _steps(60.0 * (20.0 + 10.0 * rng.uniform(102, idx)), p)
    watts = rated * (0.85 + 0.25 * rng.uniform(103, idx))
    noise = np.full(watts.shape, 0.03)
    defrost = (rng.uniform(104, days) < 0.9)[:, None] & (m == (8 + np.floor(20.0 * rng.uniform(105, days))[:, None]))
    on = np.where(defrost, _steps(60.0 * (20.0 + 10.0 * rng.uniform(106, idx)), p), on)
    watts = np.where(defrost, 200.0 + 50.0 * rng.uniform(107, idx), watts)
    noise = np.where(defrost, 0.01, noise)
    first = _steps(60.0 * 25.0 * rng.uniform(108, days), p)[:, None]
    cyc = on + off
    start = first + np.cumsum(cyc, axis=1) - cyc
    n = np.clip(np.minimum(on, spd - start), 0, None)
    start = np.minimum(start, spd)
    return Segments(start, n, watts, noise)


def _kettle(rng: CounterRng, days: IntArray, spd: int, p: float, rated: float) -> Segments:
    """Boils at up to six usual times of day (breakfast, tea, lunch, afternoon, dinner, night), each on a
    given fraction of days, +-20 min. Duration from physics: heating 0.4-1.0 L of water from ~15 degC to
    100 degC takes m*c*dT / (P*eta) with c = 4186 J/(kg K), eta ~0.88: ~2-5 min at 1.25 kW."""
    hours = np.array([6.75, 10.0, 12.5, 15.5, 19.0, 21.75])
    prob = np.array([0.9, 0.35, 0.5, 0.4, 0.7, 0.5])
    d = days[:, None]
    m = np.arange(len(hours), dtype=np.int64)[None, :]
    idx = d * 64 + m
    used = rng.uniform(111, idx) < prob[None, :]
    t_on = hours[None, :] * HOUR_S + (2.0 * rng.uniform(112, idx) - 1.0) * 1200.0
    litres = 0.4 + 0.6 * rng.uniform(113, idx)
    watts = rated * (0.98 + 0.04 * rng.uniform(114, idx))
    secs = litres * 4186.0 * 85.0 / (watts * 0.88)
    start = np.round(t_on / p).astype(np.int64)
    n = np.where(used, _steps(secs, p), 0)
    return Segments(start, n, watts, np.full(watts.shape, 0.005))


def _washing_machine(rng: CounterRng, days: IntArray, spd: int, p: float, rated: float) -> Segments:
    """One cycle on ~80 % of days, starting 08:00-10:30: fill (valve, 20 W), heating on ~70 % of washes
    (heater at ``rated``), wash (drum motor 220-320 W, strongly fluctuating as the drum reverses), drain
    (pump 60 W), two rinses (150-220 W) with a drain between, spin (350-500 W): ~75-110 min in all."""
    # (min minutes, max minutes, min W, max W (None: rated), relative noise)
    phases: list[tuple[float, float, float, float | None, float]] = [
        (3.0, 5.0, 18.0, 22.0, 0.05),  # fill
        (12.0, 20.0, 0.98, None, 0.01),  # heat
        (20.0, 35.0, 220.0, 320.0, 0.25),  # wash
        (2.0, 3.0, 55.0, 65.0, 0.05),  # drain
        (12.0, 20.0, 150.0, 220.0, 0.25),  # rinse 1
        (2.0, 3.0, 55.0, 65.0, 0.05),  # drain
        (10.0, 15.0, 150.0, 220.0, 0.25),  # rinse 2
        (6.0, 12.0, 350.0, 500.0, 0.10),  # spin
    ]
    d = days[:, None]
    m = np.arange(len(phases), dtype=np.int64)[None, :]
    idx = d * 64 + m
    runs = (rng.uniform(121, days) < 0.8)[:, None]
    heats = rng.uniform(122, days) < 0.7
    lo = np.array([ph[0] for ph in phases])[None, :]
    hi = np.array([ph[1] for ph in phases])[None, :]
    n = _steps(60.0 * (lo + (hi - lo) * rng.uniform(123, idx)), p)
    n[:, 1] = np.where(heats, n[:, 1], 0)
    n = np.where(runs, n, 0)
    wlo = np.array([ph[2] if ph[3] is not None else rated * ph[2] for ph in phases])[None, :]
    whi = np.array([ph[3] if ph[3] is not None else rated * 1.02 for ph in phases])[None, :]
    watts = wlo + (whi - wlo) * rng.uniform(124, idx)
    noise = np.broadcast_to(np.array([ph[4] for ph in phases])[None, :], watts.shape).copy()
    t0 = np.round((8.0 + 2.5 * rng.uniform(125, days)) * HOUR_S / p).astype(np.int64)[:, None]
    start = t0 + np.cumsum(n, axis=1) - n
    return Segments(start, n, watts, noise)


def _tv(rng: CounterRng, days: IntArray, spd: int, p: float, rated: float) -> Segments:
    """Evening viewing from 18:30-20:00 to 22:00-23:30 every day and morning news (~06:30-07:00 for 30-50 min)
    on ~60 % of days; 85-115 % of rated power with ~8 % fluctuation (picture brightness); 0.5 W standby."""
    d = days[:, None]
    m = np.arange(2, dtype=np.int64)[None, :]
    idx = d * 64 + m
    t_start = np.where(m == 0, 6.5 + 0.5 * rng.uniform(131, idx), 18.5 + 1.5 * rng.uniform(131, idx)) * HOUR_S
    dur = np.where(m == 0, 60.0 * (30.0 + 20.0 * rng.uniform(132, idx)), 0.0)
    t_end = np.where(m == 0, t_start + dur, (22.0 + 1.5 * rng.uniform(133, idx)) * HOUR_S)
    used = (m == 1) | (rng.uniform(134, idx) < 0.6)
    start = np.round(t_start / p).astype(np.int64)
    n = np.where(used, np.round((t_end - t_start) / p).astype(np.int64), 0)
    watts = rated * (0.85 + 0.3 * rng.uniform(135, idx))
    return Segments(start, n, watts, np.full(watts.shape, 0.08))


_PROFILES = {"fridge": _fridge, "kettle": _kettle, "washing_machine": _washing_machine, "tv": _tv}


def grid_voltage(rng: CounterRng, t: FloatArray) -> FloatArray:
    """Supply voltage at the service entrance: ~100.3 V wandering +-1 V over tens of minutes, +-0.25 V faster,
    kept within 98.3-102.0 V (the utility regulates to 101 +- 6 V; urban supply sits near 100-102 V)."""
    v = 100.3 + 0.9 * rng.smooth(1, t, 900.0) + 0.25 * rng.smooth(2, t, 60.0)
    return np.clip(v, 98.3, 102.0)


class _CounterMixin:
    """Closed-form cumulative energy from day totals: prefix sums over whole local days since the origin."""

    origin: float
    tz_offset_h: float
    _prefix: FloatArray
    _prefix_day0: int

    @abstractmethod
    def _day_totals(self, days: IntArray) -> FloatArray:
        """Energy (Wh) of each whole local day in ``days``."""

    def _init_counter(self, origin: float) -> None:
        self.origin = float(origin)
        self._prefix_day0 = int(local_day(self.origin, self.tz_offset_h))
        self._prefix = np.zeros(1)

    def prefix_energy(self, day: int) -> float:
        """Energy (Wh) of all whole local days from the origin's day up to (not including) ``day``."""
        i = day - self._prefix_day0
        if i < 0:
            raise ValueError("simulated time precedes the counter origin")
        if i >= len(self._prefix):
            # always recomputed from the origin: np.cumsum is a sequential accumulate, so prefixes are identical
            n = i + 400
            totals = self._day_totals(np.arange(self._prefix_day0, self._prefix_day0 + n, dtype=np.int64))
            self._prefix = np.concatenate([[0.0], np.cumsum(totals)])
        return float(self._prefix[i])


class Plug(_CounterMixin, BaseSimulator):
    """A smart plug in front of one appliance (``fridge``, ``kettle``, ``washing_machine`` or ``tv``).

    Reports ``power`` (W, 0.1 W resolution), ``energy`` (Wh, cumulative, exact integral of the power),
    ``voltage`` (V) and ``current`` (A, = power / voltage, i.e. unity power factor) every ``period_s``.
    The appliance's schedule is drawn per local day; see the profile functions for the physics. Plugs of one
    home share ``grid_id`` so they see the same supply voltage (minus the drop on their own branch).
    ``period_s`` must divide a day and the time-zone offset.
    """

    kind = "plug"
    metrics: tuple[str, ...] = ("power", "energy", "voltage", "current")

    _CACHE_DAYS = 8

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        appliance: Appliance,
        period_s: float = 10.0,
        tz_offset_h: float = JST_OFFSET_H,
        power_w: float | None = None,
        grid_id: str | None = None,
        origin: float = COUNTER_ORIGIN,
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        if appliance not in _PROFILES:
            raise ValueError(f"unknown appliance {appliance!r}; expected one of {APPLIANCES}")
        spd = DAY_S / period_s
        off = tz_offset_h * HOUR_S / period_s
        if period_s <= 0 or not spd.is_integer() or not off.is_integer():
            raise ValueError("period_s must divide a day and the time-zone offset")
        self.appliance: str = appliance
        self.period_s = float(period_s)
        self.steps_per_day = int(spd)
        self._off = int(off)
        self.rated_w = float(power_w) if power_w is not None else DEFAULT_POWER_W[appliance]
        self.standby_w = STANDBY_W[appliance]
        self.grid_rng = CounterRng(stable_key("kyojo-grid", seed, grid_id or device_id))
        self._days: dict[int, tuple[FloatArray, FloatArray]] = {}
        self._init_counter(origin)

    # -- model ------------------------------------------------------------------------------------------------
    def segments(self, days: IntArray) -> Segments:
        """The appliance's on-periods on the given local days."""
        days = np.asarray(days, dtype=np.int64)
        return _PROFILES[self.appliance](self.rng, days, self.steps_per_day, self.period_s, self.rated_w)

    def _totals_of(self, seg: Segments) -> FloatArray:
        total = np.full(seg.n.shape[0], self.standby_w * self.steps_per_day)
        for j in range(seg.n.shape[1]):  # column by column: the same float operations whatever the shape
            total = total + seg.n[:, j] * (seg.watts[:, j] - self.standby_w)
        return total * (self.period_s / HOUR_S)

    def _day_totals(self, days: IntArray) -> FloatArray:
        return self._totals_of(self.segments(days))

    def _day(self, day: int) -> tuple[FloatArray, FloatArray]:
        """(power per interval, in-day cumulative energy at each interval's end) of one local day."""
        hit = self._days.get(day)
        if hit is not None:
            return hit
        seg = self.segments(np.array([day], dtype=np.int64))
        spd = self.steps_per_day
        power = np.full(spd, self.standby_w)
        k_first = day * spd + 1 - self._off  # step index of the day's first interval
        z_all = np.clip(self.rng.normal(150, np.arange(k_first, k_first + spd, dtype=np.int64)), -2.5, 2.5)
        for j in range(seg.n.shape[1]):
            n = int(seg.n[0, j])
            if n <= 0:
                continue
            s = int(seg.start[0, j])
            z = z_all[s : s + n]
            z = z - z.mean()  # zero-mean within the segment: the segment's energy is exactly watts * duration
            power[s : s + n] = seg.watts[0, j] * (1.0 + seg.noise[0, j] * z)
        total = float(self._totals_of(seg)[0])
        cum = np.minimum(np.cumsum(power) * (self.period_s / HOUR_S), total)
        if len(self._days) >= self._CACHE_DAYS:
            self._days.pop(next(iter(self._days)))
        self._days[day] = (power, cum)
        return power, cum

    def _locate(self, k: IntArray) -> tuple[IntArray, IntArray]:
        q = k - 1 + self._off
        return q // self.steps_per_day, q % self.steps_per_day

    def power_steps(self, k: IntArray) -> FloatArray:
        """Mean power (W) over interval ``k``, i.e. ``((k-1) * period_s, k * period_s]``."""
        k = np.asarray(k, dtype=np.int64)
        d, j = self._locate(k)
        out = np.empty(k.shape)
        for day in np.unique(d).tolist():
            sel = d == day
            out[sel] = self._day(day)[0][j[sel]]
        return out

    def energy_steps(self, k: IntArray) -> FloatArray:
        """Counter value (Wh) at ``k * period_s``."""
        k = np.asarray(k, dtype=np.int64)
        d, j = self._locate(k)
        out = np.empty(k.shape)
        for day in np.unique(d).tolist():
            sel = d == day
            out[sel] = self.prefix_energy(day) + self._day(day)[1][j[sel]]
        return out

    def power_at(self, t: FloatArray) -> FloatArray:
        """Instantaneous simulated power (W) at instants ``t``."""
        k = np.ceil(np.asarray(t, dtype=np.float64) / self.period_s).astype(np.int64)
        return self.power_steps(k)

    def energy_at(self, t: FloatArray) -> FloatArray:
        """Exact counter value (Wh) at arbitrary instants ``t``."""
        t = np.asarray(t, dtype=np.float64)
        k = np.ceil(t / self.period_s).astype(np.int64)
        t_prev = (k - 1).astype(np.float64) * self.period_s
        on_grid = k.astype(np.float64) * self.period_s == t
        inside = self.energy_steps(k - 1) + self.power_steps(k) * (t - t_prev) / HOUR_S
        return np.where(on_grid, self.energy_steps(k), inside)

    # -- readings ---------------------------------------------------------------------------------------------
    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        k = step_candidates(t0, t1, self.period_s)
        t = k.astype(np.float64) * self.period_s
        power = self.power_steps(k)
        energy = self.energy_steps(k)
        vg = grid_voltage(self.grid_rng, t)
        volts = np.round(vg - _WIRING_OHM * power / vg, 1)
        power_r = np.round(power, 1)
        current = np.round(power_r / volts, 3)
        return [("power", t, power_r), ("energy", t, energy), ("voltage", t, volts), ("current", t, current)]


class Meter(BaseSimulator):
    """The whole-home smart meter (Wi-SUN B-route, ECHONET Lite instantaneous power + cumulative energy).

    ``power`` every ``period_s`` = the plugs' power + an unmetered base load (router, standby, lighting,
    ventilation: 225 W +- ~70 W, smooth diurnal and slower/faster harmonics, so ~155-295 W) + ~3 W of
    measurement noise. ``energy`` = the plugs' counters + the closed-form integral of the base load + a bounded
    noise term, so it is exactly the integral of ``power`` (the noise power is the derivative of a bounded
    term, its energy telescopes). Any ``period_s`` works: plug energy is exact at any instant.
    """

    kind = "meter"
    metrics: tuple[str, ...] = ("power", "energy")

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        plugs: Sequence[Plug],
        *,
        period_s: float = 10.0,
        tz_offset_h: float = JST_OFFSET_H,
        base_w: float = 225.0,
        noise_w: float = 3.0,
        origin: float = COUNTER_ORIGIN,
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        if period_s <= 0:
            raise ValueError("period_s must be > 0")
        self.plugs = list(plugs)
        self.period_s = float(period_s)
        self.base_w = base_w
        self.origin = float(origin)
        # sigma of the telescoping energy noise (Wh) giving ~noise_w of power noise: sqrt(2) * s * 3600 / period
        self._noise_wh = noise_w * self.period_s / (HOUR_S * math.sqrt(2.0))
        ph = self.rng.uniform(0, [0, 1])
        # (amplitude W, angular frequency rad/s, phase): diurnal peak ~20:00 local, ~7 h and ~2.3 h wander
        omega_day = 2.0 * math.pi / DAY_S
        self._harmonics = (
            (40.0, omega_day, omega_day * (tz_offset_h - 20.0) * HOUR_S),
            (18.0, 2.0 * math.pi / (7.0 * HOUR_S), 2.0 * math.pi * float(ph[0])),
            (10.0, 2.0 * math.pi / (2.3 * HOUR_S), 2.0 * math.pi * float(ph[1])),
        )

    def base_power_at(self, t: FloatArray) -> FloatArray:
        """Instantaneous unmetered base load (W)."""
        t = np.asarray(t, dtype=np.float64)
        out = np.full(t.shape, self.base_w)
        for a, w, phi in self._harmonics:
            out = out + a * np.cos(w * t + phi)
        return out

    def base_energy_at(self, t: FloatArray) -> FloatArray:
        """Closed-form integral of the base load from the origin (Wh)."""
        t = np.asarray(t, dtype=np.float64)
        out = self.base_w * (t - self.origin)
        for a, w, phi in self._harmonics:
            out = out + (a / w) * (np.sin(w * t + phi) - math.sin(w * self.origin + phi))
        return out / HOUR_S

    def _noise_energy(self, t: FloatArray) -> FloatArray:
        x = t / self.period_s
        k = np.floor(x).astype(np.int64)
        f = x - k
        a = self._noise_wh * np.clip(self.rng.normal(1, k), -3.0, 3.0)
        b = self._noise_wh * np.clip(self.rng.normal(1, k + 1), -3.0, 3.0)
        return a + (b - a) * f

    def energy_at(self, t: FloatArray) -> FloatArray:
        """Exact counter value (Wh) at instants ``t``."""
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < self.origin):
            raise ValueError("simulated time precedes the counter origin")
        total = self.base_energy_at(t) + self._noise_energy(t)
        for plug in self.plugs:
            total = total + plug.energy_at(t)
        return total

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        k = step_candidates(t0, t1, self.period_s)
        t = k.astype(np.float64) * self.period_s
        e = self.energy_at(np.concatenate([[t[0] - self.period_s], t]))
        power = np.round(np.diff(e) * (HOUR_S / self.period_s), 1)
        return [("power", t, power), ("energy", t, e[1:])]


class QuietPlug(Plug):
    """A :class:`Plug` whose appliance is not switched on during ``quiet`` (POSIX s, ``[start, end)``): nobody in
    the home used it. On-periods that would start in the window are dropped, so power and the energy counter stay
    each other's exact integral (the day totals come from the same segments). The watch-over demo's person who
    does not get up one morning."""

    def __init__(self, *args: Any, quiet: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not quiet[0] < quiet[1]:
            raise ValueError("quiet must be (start, end) with start < end")
        self.quiet = (float(quiet[0]), float(quiet[1]))

    def segments(self, days: IntArray) -> Segments:
        seg = super().segments(days)
        days = np.asarray(days, dtype=np.int64)
        # absolute start of each segment: the step that begins it, as in power_steps (k = day * spd + s + 1 - off)
        k = days[:, None] * self.steps_per_day + seg.start - self._off
        t = k.astype(np.float64) * self.period_s
        hushed = (t >= self.quiet[0]) & (t < self.quiet[1])
        return Segments(seg.start, np.where(hushed, 0, seg.n), seg.watts, seg.noise)

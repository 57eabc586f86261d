"""Simulated garbage truck with a GNSS receiver, and the spherical geodesy it needs.

Positions use a spherical Earth of the IUGG mean radius (6,371,008.8 m): great-circle distances (haversine),
initial bearings and intermediate points. Against the WGS84 ellipsoid this errs by well under 0.5 %, far
below what a 1 Hz consumer GNSS resolves at 0-12 m/s, and the tests use the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.sim.base import (
    HOUR_S,
    JST_OFFSET_H,
    BaseSimulator,
    FloatArray,
    day_start,
    local_day,
    local_hour,
    step_candidates,
)

EARTH_RADIUS_M = 6_371_008.8

#: A collection loop of 20 stops in Chiyoda/Chuo, Tokyo (Marunouchi - Kanda - Nihonbashi), legs ~200-350 m.
DEFAULT_ROUTE: tuple[tuple[float, float], ...] = (
    (35.6812, 139.7671),
    (35.6840, 139.7660),
    (35.6868, 139.7652),
    (35.6895, 139.7641),
    (35.6921, 139.7628),
    (35.6940, 139.7650),
    (35.6947, 139.7682),
    (35.6939, 139.7713),
    (35.6921, 139.7735),
    (35.6897, 139.7748),
    (35.6870, 139.7752),
    (35.6843, 139.7745),
    (35.6818, 139.7738),
    (35.6795, 139.7726),
    (35.6776, 139.7706),
    (35.6768, 139.7680),
    (35.6772, 139.7652),
    (35.6785, 139.7628),
    (35.6801, 139.7619),
    (35.6809, 139.7643),
)


def haversine_m(lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike) -> FloatArray:
    """Great-circle distance (m) between points given in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))), dtype=np.float64)


def initial_bearing_deg(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> FloatArray:
    """Initial great-circle bearing (degrees true, [0, 360)) from point 1 towards point 2."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    y = np.sin(dl) * np.cos(p2)
    x = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
    return np.asarray(np.mod(np.degrees(np.arctan2(y, x)), 360.0), dtype=np.float64)


def intermediate_point(
    lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray, frac: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Point at fraction ``frac`` of the great circle from point 1 to point 2 (degrees)."""
    p1, l1, p2, l2 = (np.radians(x) for x in (lat1, lon1, lat2, lon2))
    delta = haversine_m(lat1, lon1, lat2, lon2) / EARTH_RADIUS_M
    sd = np.sin(delta)
    safe = np.where(sd > 0, sd, 1.0)
    a = np.where(sd > 0, np.sin((1.0 - frac) * delta) / safe, 1.0 - frac)
    b = np.where(sd > 0, np.sin(frac * delta) / safe, frac)
    x = a * np.cos(p1) * np.cos(l1) + b * np.cos(p2) * np.cos(l2)
    y = a * np.cos(p1) * np.sin(l1) + b * np.cos(p2) * np.sin(l2)
    z = a * np.sin(p1) + b * np.sin(p2)
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon


@dataclass(frozen=True, slots=True)
class _Timeline:
    leg_start: FloatArray  # UTC instant each leg starts moving
    t_move: FloatArray  # seconds moving
    t_acc: FloatArray  # seconds accelerating
    t_dec: FloatArray  # seconds braking
    v_peak: FloatArray  # m/s
    acc: FloatArray
    dec: FloatArray
    leg: npt.NDArray[np.int64]  # index into the route's legs


class GarbageTruck(BaseSimulator):
    """A collection truck driving a loop of waypoints during its shift, stopping at every waypoint to collect.

    Each leg is a great-circle segment driven with a trapezoidal speed profile: accelerate at 0.8-1.2 m/s^2
    (a loaded refuse truck), cruise at 7-11 m/s (25-40 km/h in city streets), brake at 1.0-1.5 m/s^2 to a
    stop (a triangular profile when the leg is too short to reach cruise speed); then 30-90 s stopped while
    the crew empties the bins. The shift (08:00-16:00 local) starts at waypoint 0 and laps the loop.

    Emits ``latitude``, ``longitude`` (deg, 1e-7 resolution), ``speed`` (m/s) and ``course`` (deg true; the
    bearing towards the leg's end while moving, the arrival bearing while stopped) every ``period_s`` (1 s)
    during the shift; nothing outside it. No position noise is added.
    """

    kind = "gnss_truck"
    metrics: tuple[str, ...] = ("latitude", "longitude", "speed", "course")

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        route: Sequence[tuple[float, float]] = DEFAULT_ROUTE,
        shift_h: tuple[float, float] = (8.0, 16.0),
        tz_offset_h: float = JST_OFFSET_H,
        period_s: float = 1.0,
        cruise_mps: tuple[float, float] = (7.0, 11.0),
        accel_mps2: tuple[float, float] = (0.8, 1.2),
        decel_mps2: tuple[float, float] = (1.0, 1.5),
        dwell_s: tuple[float, float] = (30.0, 90.0),
    ) -> None:
        super().__init__(device_id, subject, seed, tz_offset_h=tz_offset_h)
        if len(route) < 2:
            raise ValueError("a route needs at least two waypoints")
        if not 0.0 <= shift_h[0] < shift_h[1] <= 24.0:
            raise ValueError("the shift must lie within one local day")
        if dwell_s[0] <= 0 or cruise_mps[0] <= 0 or accel_mps2[0] <= 0 or decel_mps2[0] <= 0:
            raise ValueError("dwell, speeds and accelerations must be > 0")
        self.route = np.asarray(route, dtype=np.float64)
        nxt = np.roll(self.route, -1, axis=0)
        self._to = nxt
        self.leg_length_m = haversine_m(self.route[:, 0], self.route[:, 1], nxt[:, 0], nxt[:, 1])
        if np.any(self.leg_length_m <= 0):
            raise ValueError("consecutive waypoints must differ")
        # arrival bearing = reverse of the initial bearing from the end back to the start
        self._arrival_course = np.mod(
            initial_bearing_deg(nxt[:, 0], nxt[:, 1], self.route[:, 0], self.route[:, 1]) + 180.0, 360.0
        )
        self.shift_h = shift_h
        self.period_s = float(period_s)
        self.cruise_mps = cruise_mps
        self.accel_mps2 = accel_mps2
        self.decel_mps2 = decel_mps2
        self.dwell_s = dwell_s
        self._cache: dict[int, _Timeline] = {}

    def timeline(self, day: int) -> _Timeline:
        """The legs driven on one local day (covering the whole shift)."""
        hit = self._cache.get(day)
        if hit is not None:
            return hit
        shift_s = (self.shift_h[1] - self.shift_h[0]) * HOUR_S
        n_legs = math.ceil(shift_s / self.dwell_s[0]) + 2
        j = np.arange(n_legs, dtype=np.int64)
        idx = day * 4096 + j
        leg = np.mod(j, len(self.route))
        dist = self.leg_length_m[leg]
        u = self.rng.uniform
        v = self.cruise_mps[0] + (self.cruise_mps[1] - self.cruise_mps[0]) * u(1, idx)
        a = self.accel_mps2[0] + (self.accel_mps2[1] - self.accel_mps2[0]) * u(2, idx)
        b = self.decel_mps2[0] + (self.decel_mps2[1] - self.decel_mps2[0]) * u(3, idx)
        dwell = self.dwell_s[0] + (self.dwell_s[1] - self.dwell_s[0]) * u(4, idx)
        # trapezoid if the leg is long enough to reach v, else triangle with peak sqrt(2 D a b / (a + b))
        v_peak = np.minimum(v, np.sqrt(2.0 * dist * a * b / (a + b)))
        t_acc, t_dec = v_peak / a, v_peak / b
        cruise_d = dist - v_peak**2 / (2 * a) - v_peak**2 / (2 * b)
        t_move = t_acc + t_dec + np.clip(cruise_d, 0.0, None) / v_peak
        total = t_move + dwell
        t_shift = float(day_start(day, self.tz_offset_h)) + self.shift_h[0] * HOUR_S
        leg_start = t_shift + np.cumsum(total) - total
        tl = _Timeline(leg_start, t_move, t_acc, t_dec, v_peak, a, b, leg)
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        self._cache[day] = tl
        return tl

    def state_at(self, t: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(latitude, longitude, speed, course) at instants ``t`` within shifts."""
        t = np.asarray(t, dtype=np.float64)
        out = [np.empty(t.shape) for _ in range(4)]
        days = local_day(t, self.tz_offset_h)
        for day in np.unique(days).tolist():
            sel = days == day
            tl = self.timeline(day)
            i = np.clip(np.searchsorted(tl.leg_start, t[sel], side="right") - 1, 0, None)
            tau = t[sel] - tl.leg_start[i]
            leg = tl.leg[i]
            dist = self.leg_length_m[leg]
            vp, a, b = tl.v_peak[i], tl.acc[i], tl.dec[i]
            ta, td, tm = tl.t_acc[i], tl.t_dec[i], tl.t_move[i]
            tau = np.clip(tau, 0.0, None)
            rem = np.clip(tm - tau, 0.0, None)
            s = np.where(
                tau < ta,
                0.5 * a * tau**2,
                np.where(rem > td, vp**2 / (2 * a) + vp * (tau - ta), dist - 0.5 * b * rem**2),
            )
            speed = np.where(tau < ta, a * tau, np.where(rem > td, vp, b * rem))
            moving = tau < tm
            frac = np.where(moving, np.clip(s / dist, 0.0, 1.0), 1.0)
            speed = np.where(moving, speed, 0.0)
            lat1, lon1 = self.route[leg, 0], self.route[leg, 1]
            lat2, lon2 = self._to[leg, 0], self._to[leg, 1]
            lat, lon = intermediate_point(lat1, lon1, lat2, lon2, frac)
            course = np.where(
                moving & (frac < 1.0),
                initial_bearing_deg(lat, lon, lat2, lon2),
                self._arrival_course[leg],
            )
            for o, v in zip(out, (lat, lon, speed, course), strict=True):
                o[sel] = v
        return out[0], out[1], out[2], out[3]

    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        k = step_candidates(t0, t1, self.period_s)
        t = k.astype(np.float64) * self.period_s
        h = local_hour(t, self.tz_offset_h)
        t = t[(h >= self.shift_h[0]) & (h < self.shift_h[1])]
        lat, lon, speed, course = self.state_at(t)
        return [
            ("latitude", t, np.round(lat, 7)),
            ("longitude", t, np.round(lon, 7)),
            ("speed", t, np.round(speed, 2)),
            ("course", t, np.mod(np.round(course, 1), 360.0)),
        ]

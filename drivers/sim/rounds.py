"""Collection rounds that vary like a city's, for the garbage-collection navigator's tests and bench.

:class:`VariedTruck` is :class:`drivers.sim.gnss.GarbageTruck` (same kinematics, same GNSS output) whose days
differ the way collection rounds do:

- traffic by hour: slower in the morning rush (08-09 JST, x0.7 cruise speed) and at lunch (12-13, x0.85);
- a day's pace: cruise speed and stop times x exp(0.1 N(0,1)) per day (weather, crew, roadworks);
- more garbage after the weekend: stops 30 % longer on Mondays;
- points differ: each collection point has its own load (stop time x0.7-1.5, the same every day);
- incidents: 4 % of stops take 1-5 minutes longer (overflowing bins, a blocked street, a resident's question).

:func:`city_route` makes a loop of ``n`` collection points (legs of ~150-350 m) and :func:`route_geojson` the
collection-points file the trucks' gateways and the navigator read. :func:`pickups_of_day` replays one day's 1 Hz
fixes through the gateway's own :class:`drivers.gnss.truck.TruckTracker` (stop detection and matching), so what
comes out is what a truck's gateway would release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from drivers.gnss.truck import Pickup, Position, StopDetector, TruckTracker, load_collection_points
from drivers.sim.base import HOUR_S, day_start
from drivers.sim.gnss import GarbageTruck, _Timeline

#: (start hour, end hour, cruise speed factor) in local time
RUSH: tuple[tuple[float, float, float], ...] = ((8.0, 9.0, 0.7), (12.0, 13.0, 0.85))


class VariedTruck(GarbageTruck):
    """A :class:`GarbageTruck` with the day-to-day and hour-to-hour variance of real rounds (see the module)."""

    def __init__(
        self,
        device_id: str,
        subject: str,
        seed: int,
        *,
        rush: Sequence[tuple[float, float, float]] = RUSH,
        day_sigma: float = 0.1,
        monday_dwell: float = 1.3,
        point_load: tuple[float, float] = (0.7, 1.5),
        incident_p: float = 0.04,
        incident_s: tuple[float, float] = (60.0, 300.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(device_id, subject, seed, **kwargs)
        self.rush = tuple(rush)
        self.day_sigma, self.monday_dwell = day_sigma, monday_dwell
        self.point_load, self.incident_p, self.incident_s = point_load, incident_p, incident_s
        n = len(self.route)
        lo, hi = point_load
        self.load = lo + (hi - lo) * self.rng.uniform(7, np.arange(n))

    def _rush(self, t: float) -> float:
        hour = ((t / HOUR_S) + self.tz_offset_h) % 24.0
        for start, end, factor in self.rush:
            if start <= hour < end:
                return factor
        return 1.0

    def timeline(self, day: int) -> _Timeline:
        hit = self._cache.get(day)
        if hit is not None:
            return hit
        shift_s = (self.shift_h[1] - self.shift_h[0]) * HOUR_S
        n_legs = math.ceil(shift_s / (self.dwell_s[0] * self.point_load[0])) + 2
        j = np.arange(n_legs, dtype=np.int64)
        idx = day * 4096 + j
        leg = np.mod(j, len(self.route))
        u = self.rng.uniform
        v = self.cruise_mps[0] + (self.cruise_mps[1] - self.cruise_mps[0]) * u(1, idx)
        a = self.accel_mps2[0] + (self.accel_mps2[1] - self.accel_mps2[0]) * u(2, idx)
        b = self.decel_mps2[0] + (self.decel_mps2[1] - self.decel_mps2[0]) * u(3, idx)
        dwell = self.dwell_s[0] + (self.dwell_s[1] - self.dwell_s[0]) * u(4, idx)
        pace = math.exp(self.day_sigma * float(self.rng.normal(5, [day])[0]))
        slow_stops = math.exp(self.day_sigma * float(self.rng.normal(6, [day])[0]))
        if (day + 3) % 7 == 0:  # local day 0 (1970-01-01) was a Thursday: this is a Monday
            slow_stops *= self.monday_dwell
        incident = np.where(
            u(8, idx) < self.incident_p,
            self.incident_s[0] + (self.incident_s[1] - self.incident_s[0]) * u(9, idx),
            0.0,
        )
        dwell = dwell * slow_stops * self.load[np.mod(leg + 1, len(self.route))] + incident
        dist = self.leg_length_m[leg]
        leg_start = np.empty(n_legs)
        v_peak = np.empty(n_legs)
        t_acc, t_dec, t_move = np.empty(n_legs), np.empty(n_legs), np.empty(n_legs)
        t = float(day_start(day, self.tz_offset_h)) + self.shift_h[0] * HOUR_S
        for i in range(n_legs):  # the pace of a leg depends on the hour it is driven in: one leg after another
            cruise = float(v[i]) * pace * self._rush(t)
            vp = min(cruise, math.sqrt(2.0 * dist[i] * a[i] * b[i] / (a[i] + b[i])))
            ta, td = vp / a[i], vp / b[i]
            cruise_d = dist[i] - vp**2 / (2 * a[i]) - vp**2 / (2 * b[i])
            leg_start[i], v_peak[i], t_acc[i], t_dec[i] = t, vp, ta, td
            t_move[i] = ta + td + max(cruise_d, 0.0) / vp
            t += t_move[i] + dwell[i]
        tl = _Timeline(leg_start, t_move, t_acc, t_dec, v_peak, a, b, leg)
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        self._cache[day] = tl
        return tl


def city_route(
    n: int, seed: int = 1, *, centre: tuple[float, float] = (35.6895, 139.7690)
) -> list[tuple[float, float]]:
    """A loop of ``n`` collection points (lat, lon) around ``centre``, legs of about 150-350 m."""
    rng = np.random.default_rng(seed)
    radius_m = n * 250.0 / (2 * math.pi)
    out = []
    for i in range(n):
        ang = 2 * math.pi * (i + 0.3 * (rng.random() - 0.5)) / n
        r = radius_m * (1 + 0.08 * (rng.random() - 0.5))
        dlat = r * math.cos(ang) / 111_195.0
        dlon = r * math.sin(ang) / (111_195.0 * math.cos(math.radians(centre[0])))
        out.append((round(centre[0] + dlat, 6), round(centre[1] + dlon, 6)))
    return out


def route_geojson(route: Sequence[tuple[float, float]], route_id: str, *, prefix: str = "cp") -> dict[str, Any]:
    """The collection-points file of ``route``: ids ``cp-01``..., names, ``route``, ``radius_m`` 30."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {
                    "id": f"{prefix}-{i + 1:02d}",
                    "name": f"Point {i + 1}",
                    "route": route_id,
                    "radius_m": 30,
                },
            }
            for i, (lat, lon) in enumerate(route)
        ],
    }


def pickups_of_day(truck: GarbageTruck, geojson: dict[str, Any], day: int) -> list[Pickup]:
    """One local day's pickups: the shift's 1 Hz fixes through the gateway's stop detection and matching."""
    t0 = float(day_start(day, truck.tz_offset_h)) + truck.shift_h[0] * HOUR_S
    t = np.arange(t0, t0 + (truck.shift_h[1] - truck.shift_h[0]) * HOUR_S, truck.period_s)
    lat, lon, speed, _ = truck.state_at(t)
    tracker = TruckTracker(truck.device_id, load_collection_points(geojson), detector=StopDetector(15.0, 20.0))
    positions = (
        Position(ts, la, lo, sp)
        for ts, la, lo, sp in zip(t.tolist(), lat.tolist(), lon.tolist(), speed.tolist(), strict=True)
    )
    return tracker.feed(positions)

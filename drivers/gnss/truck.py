"""Garbage-truck logic on top of fixes: uplink thinning, stop detection, matching stops to collection points,
pickup events and route progress. Pure functions and small state machines; no I/O, no clock of their own
(every input carries its own timestamp, POSIX seconds UTC).

Distances use a spherical Earth (IUGG mean radius), like ``drivers.sim.gnss``: well under 0.5 % from WGS84,
far below what a consumer receiver resolves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres between two points in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, max(0.0, h))))


@dataclass(frozen=True, slots=True)
class Position:
    """What the truck logic needs from a fix."""

    ts: float
    lat: float
    lon: float
    speed_mps: float | None = None


class Thinner:
    """Uplink thinning: pass a position when ``interval_s`` have passed *or* the truck moved ``distance_m``
    since the last position passed (the first always passes). Parked, the truck reports once per interval;
    driving, about every ``distance_m``. ``distance_m = 0`` disables the distance trigger, ``min_gap_s`` caps
    the rate the distance trigger may reach."""

    def __init__(self, interval_s: float, distance_m: float = 0.0, *, min_gap_s: float = 1.0) -> None:
        if interval_s <= 0 or distance_m < 0 or min_gap_s < 0:
            raise ValueError("interval_s must be > 0, distance_m and min_gap_s >= 0")
        self.interval_s, self.distance_m, self.min_gap_s = interval_s, distance_m, min_gap_s
        self._last: Position | None = None
        self.passed = 0
        self.dropped = 0

    def accept(self, p: Position) -> bool:
        """True if ``p`` goes up."""
        last = self._last
        ok = last is None or p.ts - last.ts >= self.interval_s
        if not ok and last is not None and self.distance_m > 0 and p.ts - last.ts >= self.min_gap_s:
            ok = distance_m(last.lat, last.lon, p.lat, p.lon) >= self.distance_m
        if ok:
            self._last = p
            self.passed += 1
        else:
            self.dropped += 1
        return ok


@dataclass(frozen=True, slots=True)
class Stop:
    """The truck dwelt within ``radius_m`` of (lat, lon) from ``start`` to ``end`` (POSIX seconds)."""

    start: float
    end: float
    lat: float
    lon: float

    @property
    def dwell_s(self) -> float:
        return self.end - self.start


class StopDetector:
    """Dwell detection.

    A stop is a run of slow positions (speed <= ``max_speed_mps`` when the fix has one) that all lie within
    ``radius_m`` of the run's first position and span at least ``min_dwell_s``. It is reported when the
    truck leaves the radius or moves (or on :meth:`flush`); its position is the centroid of the run. A gap
    longer than ``max_gap_s`` (no fix, e.g. in a tunnel) ends the run.
    """

    def __init__(
        self, radius_m: float = 15.0, min_dwell_s: float = 20.0, *, max_gap_s: float = 30.0, max_speed_mps: float = 0.5
    ) -> None:
        self.radius_m, self.min_dwell_s, self.max_gap_s = radius_m, min_dwell_s, max_gap_s
        self.max_speed_mps = max_speed_mps
        self._run: list[Position] = []

    def push(self, p: Position) -> Stop | None:
        """Add a position; returns a stop that just ended, if any."""
        run = self._run
        if p.speed_mps is not None and p.speed_mps > self.max_speed_mps:
            # moving (receiver's Doppler speed): not part of a dwell, and it ends one
            stop = self._close()
            self._run = []
            return stop
        if run and (
            p.ts - run[-1].ts > self.max_gap_s or distance_m(run[0].lat, run[0].lon, p.lat, p.lon) > self.radius_m
        ):
            stop = self._close()
            self._run = [p]
            return stop
        run.append(p)
        return None

    def flush(self) -> Stop | None:
        """End of data: report the run in progress if it is long enough."""
        stop = self._close()
        self._run = []
        return stop

    def _close(self) -> Stop | None:
        run = self._run
        if len(run) < 2 or run[-1].ts - run[0].ts < self.min_dwell_s:
            return None
        return Stop(run[0].ts, run[-1].ts, sum(r.lat for r in run) / len(run), sum(r.lon for r in run) / len(run))


@dataclass(frozen=True, slots=True)
class CollectionPoint:
    """A bin site: GeoJSON Point feature with ``id`` (required), ``name``, ``route`` and ``radius_m``."""

    id: str
    lat: float
    lon: float
    name: str = ""
    route: str | None = None
    radius_m: float | None = None


def load_collection_points(src: str | Path | Mapping[str, Any]) -> list[CollectionPoint]:
    """Collection points from a GeoJSON FeatureCollection of Points (coordinates are [lon, lat], RFC 7946).

    Raises ``ValueError`` on anything else (a config-time error: checked when the gateway loads its config).
    """
    doc: Any = src if isinstance(src, Mapping) else json.loads(Path(src).read_text(encoding="utf-8"))
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
        raise ValueError("collection points must be a GeoJSON FeatureCollection")
    out = []
    for i, feat in enumerate(doc.get("features", [])):
        geom = feat.get("geometry") or {}
        props = feat.get("properties") or {}
        coords = geom.get("coordinates")
        if geom.get("type") != "Point" or not isinstance(coords, list) or len(coords) < 2:
            raise ValueError(f"feature {i}: only Point geometries are collection points")
        lon, lat = float(coords[0]), float(coords[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"feature {i}: coordinates out of range (GeoJSON order is [lon, lat])")
        pid = props.get("id", feat.get("id"))
        if pid is None:
            raise ValueError(f"feature {i}: needs an id")
        radius = props.get("radius_m")
        out.append(
            CollectionPoint(
                str(pid),
                lat,
                lon,
                str(props.get("name", "")),
                None if props.get("route") is None else str(props["route"]),
                None if radius is None else float(radius),
            )
        )
    if len({p.id for p in out}) != len(out):
        raise ValueError("collection point ids must be unique")
    return out


def match_stop(stop: Stop, points: Sequence[CollectionPoint], default_radius_m: float = 30.0) -> CollectionPoint | None:
    """The nearest collection point within its radius (``radius_m``, else ``default_radius_m``) of the stop."""
    best: tuple[float, CollectionPoint] | None = None
    for cp in points:
        d = distance_m(stop.lat, stop.lon, cp.lat, cp.lon)
        if d <= (cp.radius_m if cp.radius_m is not None else default_radius_m) and (best is None or d < best[0]):
            best = (d, cp)
    return None if best is None else best[1]


@dataclass(frozen=True, slots=True)
class Pickup:
    """The truck stopped at a collection point (a candidate event for the ``mobility`` purpose)."""

    truck: str
    point: str
    route: str | None
    arrived: float
    departed: float
    distance_m: float

    @property
    def dwell_s(self) -> float:
        return self.departed - self.arrived


@dataclass(slots=True)
class RouteProgress:
    """Which of a route's points were served (in any order); progress is served / total."""

    route: str
    points: tuple[str, ...]
    served: dict[str, float] = field(default_factory=dict)  # point id -> time of the first pickup

    def record(self, pickup: Pickup) -> None:
        if pickup.point in self.points and pickup.point not in self.served:
            self.served[pickup.point] = pickup.departed

    @property
    def fraction(self) -> float:
        return len(self.served) / len(self.points) if self.points else 1.0

    @property
    def remaining(self) -> tuple[str, ...]:
        return tuple(p for p in self.points if p not in self.served)


class TruckTracker:
    """Positions in, pickups out: stop detection + matching + route progress, for one truck.

    Routes come from the points' ``route`` property, in file order.
    """

    def __init__(
        self,
        truck: str,
        points: Sequence[CollectionPoint],
        *,
        detector: StopDetector | None = None,
        default_radius_m: float = 30.0,
    ) -> None:
        self.truck = truck
        self.points = list(points)
        self.detector = detector or StopDetector()
        self.default_radius_m = default_radius_m
        self.routes: dict[str, RouteProgress] = {}
        for cp in self.points:
            if cp.route is not None:
                rp = self.routes.setdefault(cp.route, RouteProgress(cp.route, ()))
                rp.points = (*rp.points, cp.id)
        self.unmatched_stops = 0

    def push(self, p: Position) -> list[Pickup]:
        """Feed one position; returns the pickups it completed (0 or 1)."""
        return self._handle(self.detector.push(p))

    def flush(self) -> list[Pickup]:
        return self._handle(self.detector.flush())

    def feed(self, positions: Iterable[Position]) -> list[Pickup]:
        out = [pk for p in positions for pk in self.push(p)]
        return out + self.flush()

    def _handle(self, stop: Stop | None) -> list[Pickup]:
        if stop is None:
            return []
        cp = match_stop(stop, self.points, self.default_radius_m)
        if cp is None:
            self.unmatched_stops += 1  # traffic light, depot, jam: not a pickup
            return []
        pk = Pickup(self.truck, cp.id, cp.route, stop.start, stop.end, distance_m(stop.lat, stop.lon, cp.lat, cp.lon))
        if cp.route is not None:
            self.routes[cp.route].record(pk)
        return [pk]

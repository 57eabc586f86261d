"""The city's collection points, in route order, from a GeoJSON FeatureCollection of Points.

The same file the trucks' gateways match stops against (``[[processors]] kind = "truck"``, properties ``id``,
``name``, ``route``; coordinates ``[lon, lat]``, RFC 7946). Read here on its own: the cloud imports no gateway
code. A route's order is the order of its points in the file; a round may start anywhere on it (the truck's
first stop of the day) and goes round in that order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kyojo.contract.errors import KyojoError


class RouteError(KyojoError, ValueError):
    """The collection-points file is not what the navigator can use (a configuration error)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One collection point (public city data: a bin site, never a home)."""

    id: str
    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Route:
    """A route's points in driving order."""

    id: str
    points: tuple[Point, ...]

    def index(self, point: str) -> int:
        """Position of ``point`` on the route (KeyError if it is not on it)."""
        for i, p in enumerate(self.points):
            if p.id == point:
                return i
        raise KeyError(point)

    def ahead(self, point: str) -> list[Point]:
        """The other points in driving order after ``point``, going round once."""
        i = self.index(point)
        n = len(self.points)
        return [self.points[(i + k) % n] for k in range(1, n)]


def load_routes(src: str | Path | Mapping[str, Any]) -> dict[str, Route]:
    """Routes (id -> :class:`Route`) from a GeoJSON FeatureCollection of Points; points without a ``route``
    are not on a round and are left out. Raises :class:`RouteError` on anything else."""
    try:
        doc: Any = src if isinstance(src, Mapping) else json.loads(Path(src).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RouteError(f"cannot read the collection points: {err}") from err
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
        raise RouteError("collection points must be a GeoJSON FeatureCollection")
    points: dict[str, list[Point]] = {}
    seen: set[str] = set()
    for i, feat in enumerate(doc.get("features") or []):
        geom = (feat or {}).get("geometry") or {}
        props = (feat or {}).get("properties") or {}
        coords = geom.get("coordinates")
        if geom.get("type") != "Point" or not isinstance(coords, list) or len(coords) < 2:
            raise RouteError(f"feature {i}: only Point geometries are collection points")
        try:
            lon, lat = float(coords[0]), float(coords[1])
        except (TypeError, ValueError) as err:
            raise RouteError(f"feature {i}: coordinates must be numbers") from err
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise RouteError(f"feature {i}: coordinates out of range (GeoJSON order is [lon, lat])")
        pid = props.get("id", feat.get("id"))
        if pid is None:
            raise RouteError(f"feature {i}: needs an id")
        if str(pid) in seen:
            raise RouteError(f"collection point ids must be unique ({pid})")
        seen.add(str(pid))
        route = props.get("route")
        if route is None:
            continue
        points.setdefault(str(route), []).append(Point(str(pid), str(props.get("name") or pid), lat, lon))
    if not points:
        raise RouteError("no collection point is on a route (property 'route')")
    return {rid: Route(rid, tuple(pts)) for rid, pts in points.items()}


def geojson(routes: Mapping[str, Route]) -> dict[str, Any]:
    """The routes as public GeoJSON: each point (id, name, route, order) and each route's outline (a closed
    LineString through its points in driving order). Nothing but what the city published."""
    features: list[dict[str, Any]] = []
    for route in routes.values():
        line = [[p.lon, p.lat] for p in route.points]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [*line, line[0]]},
                "properties": {"route": route.id, "kind": "outline"},
            }
        )
        for order, p in enumerate(route.points, start=1):
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
                    "properties": {"id": p.id, "name": p.name, "route": route.id, "order": order},
                }
            )
    return {"type": "FeatureCollection", "features": features}

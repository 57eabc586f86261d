"""``[[processors]] kind = "truck"``: a garbage truck's positions in, pickup events out.

Groups the gateway's latitude/longitude/speed Readings of one GNSS device by timestamp into positions, runs
:class:`drivers.gnss.truck.TruckTracker` (dwell detection, matching to the collection points of a GeoJSON file)
and turns each pickup into an :class:`kyojo.contract.vocab.Event` (category ``mobility``), released under the municipal
operator's waste-collection consent. The route progress after each pickup travels in the event's attributes, so
households can see whether their street has been collected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.gnss.truck import CollectionPoint, Position, StopDetector, TruckTracker, load_collection_points
from kyojo.contract.vocab import Category, Event, Reading

if TYPE_CHECKING:
    from drivers.registry import BuildContext


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["truck"]
    collection_points: Path = Field(description="GeoJSON FeatureCollection of Points with id, name, route")
    device: str | None = Field(default=None, description="only this GNSS device (default: every position)")
    stop_radius_m: float = Field(default=15.0, gt=0)
    min_dwell_s: float = Field(default=20.0, gt=0)
    match_radius_m: float = Field(default=30.0, gt=0)

    @field_validator("collection_points")
    @classmethod
    def _loads(cls, value: Path) -> Path:
        load_collection_points(value)  # a bad file is a config error, reported at load time
        return value


class TruckProcessor:
    """One tracker per GNSS device seen."""

    name = "truck"
    category: Category | None = None  # Events only, no derived Readings: no window waits for it
    lag_s = 0.0

    def __init__(self, config: Config, points: Sequence[CollectionPoint]) -> None:
        self.config = config
        self.points = list(points)
        self.trackers: dict[str, TruckTracker] = {}
        self._pending: dict[tuple[str, float], dict[str, float]] = {}
        self._subjects: dict[str, str] = {}
        self.pickups = 0

    def _tracker(self, device: str) -> TruckTracker:
        tr = self.trackers.get(device)
        if tr is None:
            det = StopDetector(self.config.stop_radius_m, self.config.min_dwell_s)
            tr = self.trackers[device] = TruckTracker(
                device, self.points, detector=det, default_radius_m=self.config.match_radius_m
            )
        return tr

    def feed(self, readings: Sequence[Reading]) -> list[Event]:
        for r in readings:
            if r.metric not in ("latitude", "longitude", "speed"):
                continue
            if self.config.device is not None and r.device != self.config.device:
                continue
            self._pending.setdefault((r.device, r.ts), {})[r.metric] = r.value
            self._subjects[r.device] = r.subject
        events: list[Event] = []
        for key in sorted(self._pending, key=lambda k: k[1]):
            fields = self._pending[key]
            if "latitude" not in fields or "longitude" not in fields:
                continue  # the rest of this fix comes in the next batch
            del self._pending[key]
            device, ts = key
            tracker = self._tracker(device)
            for pk in tracker.push(Position(ts, fields["latitude"], fields["longitude"], fields.get("speed"))):
                self.pickups += 1
                progress = tracker.routes.get(pk.route) if pk.route else None
                attrs: dict[str, str | float | int | bool] = {
                    "point": pk.point,
                    "dwell_s": round(pk.dwell_s, 1),
                    "distance_m": round(pk.distance_m, 1),
                    "arrived_ms": int(pk.arrived * 1000),
                }
                if progress is not None:
                    attrs |= {
                        "route": progress.route,
                        "served": len(progress.served),
                        "points": len(progress.points),
                        "progress": round(progress.fraction, 4),
                    }
                digest = hashlib.sha256(f"{device}|{pk.point}|{pk.arrived:.3f}".encode()).hexdigest()[:16]
                events.append(
                    Event(
                        id=f"pk-{digest}",
                        kind="pickup",
                        category=Category.MOBILITY,
                        subject=self._subjects[device],
                        device=device,
                        ts=pk.departed,
                        attrs=attrs,
                    )
                )
        return events

    def health(self) -> Mapping[str, object]:
        return {
            "pickups": self.pickups,
            "trucks": len(self.trackers),
            "unmatched_stops": sum(t.unmatched_stops for t in self.trackers.values()),
        }


def build(config: Config, ctx: BuildContext) -> TruckProcessor:
    return TruckProcessor(config, load_collection_points(config.collection_points))

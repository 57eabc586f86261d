"""Truck logic (thinning, stops, pickups, route progress) against the simulated garbage truck's timeline,
and the ``gnss`` device kind (config, build, driver)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from drivers.clock import SystemClock
from drivers.gnss import device
from drivers.gnss.nmea import Fix, NmeaReader, strip_capture_header
from drivers.gnss.transport import GpsdSource, SerialNmeaSource
from drivers.gnss.truck import (
    Position,
    StopDetector,
    Thinner,
    TruckTracker,
    distance_m,
    load_collection_points,
)
from drivers.registry import BuildContext
from drivers.sim import DEFAULT_ROUTE, GarbageTruck
from drivers.sim.base import local_day
from kyojo.contract.vocab import METRICS
from tests.kit import DATA

T0 = 1_717_369_200.0  # 2024-06-03 08:00 JST, a shift start
HOUR = 3600


def sim_positions(seed: int = 3, seconds: int = HOUR) -> tuple[GarbageTruck, list[Position], Any]:
    truck = GarbageTruck("truck-1-gnss", "truck-1", seed)
    tl = truck.timeline(int(local_day(np.array([T0]), truck.tz_offset_h)[0]))
    t = tl.leg_start[0] + np.arange(0, seconds, 1.0)
    lat, lon, speed, _ = truck.state_at(t)
    return (
        truck,
        [Position(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(t, lat, lon, speed, strict=True)],
        tl,
    )


def route_geojson(route: str = "chiyoda-1") -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {"id": f"cp{i:02d}", "name": f"stop {i}", "route": route},
            }
            for i, (lat, lon) in enumerate(DEFAULT_ROUTE)
        ],
    }


def test_thinning_bounds_time_and_distance() -> None:
    _, pos, _ = sim_positions()
    th = Thinner(30.0, 150.0)
    kept = [p for p in pos if th.accept(p)]
    assert kept[0] == pos[0]
    assert len(kept) < len(pos) / 5
    for a, b in itertools.pairwise(kept):
        gap = b.ts - a.ts
        assert 1.0 <= gap <= 30.0
        if gap < 30.0:  # passed on distance
            assert distance_m(a.lat, a.lon, b.lat, b.lon) >= 150.0
    # the longest stretch between two uplinked positions never exceeds 150 m + one second of driving
    for a, b in itertools.pairwise(kept):
        between = [p for p in pos if a.ts < p.ts < b.ts]
        assert all(distance_m(a.lat, a.lon, p.lat, p.lon) < 150.0 for p in between)


def test_pickups_follow_the_simulated_timeline() -> None:
    _, pos, tl = sim_positions()
    points = load_collection_points(route_geojson())
    tracker = TruckTracker("truck-1", points, detector=StopDetector(radius_m=15, min_dwell_s=20))
    pickups = tracker.feed(pos)
    # ground truth: leg j ends at waypoint (leg+1) % n at leg_start + t_move; the truck leaves at the next start
    n = len(DEFAULT_ROUTE)
    end = pos[-1].ts
    truth = []
    for j in range(len(tl.leg_start) - 1):
        arrive = tl.leg_start[j] + tl.t_move[j]
        depart = tl.leg_start[j + 1]
        if depart <= end:
            truth.append((f"cp{(int(tl.leg[j]) + 1) % n:02d}", arrive, depart))
    assert len(truth) > 10
    assert [p.point for p in pickups[: len(truth)]] == [t[0] for t in truth]
    for pk, (_, arrive, depart) in zip(pickups, truth, strict=False):
        assert abs(pk.arrived - arrive) <= 2.0  # 1 Hz fixes; the truck creeps the last metres
        assert abs(pk.departed - depart) <= 2.0
        assert pk.distance_m < 1.0
    assert tracker.unmatched_stops == 0
    rp = tracker.routes["chiyoda-1"]
    assert rp.fraction == pytest.approx(len({t[0] for t in truth}) / n, abs=1 / n)
    assert set(rp.remaining) | set(rp.served) == {f"cp{i:02d}" for i in range(n)}


def test_stop_away_from_collection_points_is_not_a_pickup() -> None:
    points = load_collection_points(route_geojson())
    tracker = TruckTracker("truck-1", points)
    far = [Position(T0 + i, 35.70, 139.70, 0.0) for i in range(60)]  # a depot 6 km away
    assert tracker.feed(far) == []
    assert tracker.unmatched_stops == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "Feature"},
        {"type": "FeatureCollection", "features": [{"geometry": {"type": "LineString", "coordinates": []}}]},
        {"type": "FeatureCollection", "features": [{"geometry": {"type": "Point", "coordinates": [139.7, 35.6]}}]},
        {  # [lat, lon] instead of GeoJSON's [lon, lat] puts Tokyo's latitude out of range
            "type": "FeatureCollection",
            "features": [{"id": "a", "geometry": {"type": "Point", "coordinates": [35.6, 139.7]}}],
        },
    ],
)
def test_bad_geojson_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        load_collection_points(bad)


# --- the device kind ---------------------------------------------------------------------------------------


def test_config_validation() -> None:
    cfg = device.Config.model_validate(
        {"kind": "gnss", "id": "truck-1-gnss", "subject": "truck-1", "baud": 9600, "thin_interval": "PT5S"}
    )
    assert cfg.thin_interval == timedelta(seconds=5) and cfg.source == "serial"
    for bad in ({"baud": 1234}, {"thin_interval": 0}, {"nope": 1}, {"source": "usb"}):
        with pytest.raises(ValidationError):
            device.Config.model_validate({"kind": "gnss", "id": "t-gnss", "subject": "t", **bad})


def _ctx(tmp_path: Path) -> BuildContext:
    return BuildContext(gateway_id="gw-1", clock=SystemClock(), clock_speed=1.0, data_dir=tmp_path)


def test_build_makes_the_configured_source(tmp_path: Path) -> None:
    base = {"kind": "gnss", "id": "t-gnss", "subject": "t"}
    (drv,) = device.build(device.Config.model_validate(base), _ctx(tmp_path))
    assert isinstance(drv, device.GnssDriver) and isinstance(drv.source, SerialNmeaSource)
    (drv,) = device.build(device.Config.model_validate({**base, "source": "gpsd"}), _ctx(tmp_path))
    assert isinstance(drv, device.GnssDriver) and isinstance(drv.source, GpsdSource)


class ReplaySource:
    """A FixSource over a capture file, for the driver test."""

    def __init__(self, name: str) -> None:
        data = strip_capture_header((DATA / "nmea" / name).read_bytes())
        r = NmeaReader()
        self.list = r.feed(data) + r.flush()

    async def fixes(self) -> AsyncIterator[Fix]:
        for f in self.list:
            yield f

    def health(self) -> Mapping[str, object]:
        return {"connected": True}


def test_driver_yields_thinned_readings_in_fixed_units() -> None:
    src = ReplaySource("telit-he910.log")  # 187 fixes at 1 Hz, slow walk in Belgium
    drv = device.GnssDriver("truck-1-gnss", "truck-1", src, Thinner(10.0, 50.0), SystemClock())

    async def main() -> list[Any]:
        return [r async for r in drv.readings()]

    readings = asyncio.run(main())
    lats = [r for r in readings if r.metric == "latitude"]
    assert 15 <= len(lats) <= 20  # ~187 s of fixes, one per 10 s
    assert {r.metric for r in readings} == {"latitude", "longitude", "speed", "course"}
    assert all(r.unit == METRICS[r.metric].unit and r.subject == "truck-1" for r in readings)
    assert lats[0].ts == src.list[0].ts
    h = drv.health()
    assert h["fixes"] == len(src.list) and h["thinned_out"] == len(src.list) - len(lats)

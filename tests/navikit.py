"""The garbage-collection navigator's test kit: simulated rounds as the ingester stores them in InfluxDB.

- :func:`local_day` / :func:`at_jst`: a JST calendar day as the simulators count it, and an instant on it;
- :func:`pickup_lines`: pickups (from :func:`drivers.sim.rounds.pickups_of_day`, the gateway's own stop
  detection on the simulated truck's fixes) as the ingester writes them: an ``EventBatch`` of the wire contract
  through :func:`cloud_ingest.lineproto.event_lines` (measurement ``events``, the ``household`` tag of the sending
  gateway under ``waste-collection``);
- :func:`first_visits`: the truth of a day: each point's first arrival (epoch ms);
- :func:`seed_town` -> :class:`Town`: the demo truck's route (``chiyoda-1``, 20 points) with ``HISTORY`` days of
  rounds and today's in a real InfluxDB, plus a hostile gateway's pickups and a malformed one; ``Town.navigator``
  reads them as ``kyojo navi serve`` does, on the town's hand-moved clock.

Used by tests/ingest/test_navi*.py and bench/navi.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from cloud_ingest.lineproto import event_lines
from cloud_ingest.navi.model import JST
from cloud_ingest.navi.routes import load_routes
from cloud_ingest.navi.service import Navigator
from cloud_ingest.navi.source import InfluxPickups, truck_tags
from cloud_ingest.scope import Scope, new_key, parse_key
from drivers.gnss.truck import Pickup
from drivers.sim.gnss import DEFAULT_ROUTE
from drivers.sim.rounds import VariedTruck, pickups_of_day, route_geojson
from kyojo.contract.vocab import Category
from kyojo.contract.wire import MAX_ITEMS, EventBatch, EventItem
from provisioning.local import InfluxDB

PURPOSE = "waste-collection"


def local_day(day: date) -> int:
    """The simulators' index of a JST calendar day (days since 1970-01-01, local)."""
    return (day - date(1970, 1, 1)).days


def at_jst(day: date, hour: int, minute: int = 0, second: int = 0) -> float:
    """POSIX seconds of ``day`` ``hh:mm:ss`` JST."""
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=JST).timestamp()


def pickup_lines(
    pickups: Sequence[Pickup], gateway: str, *, subject: str = "p-truck", scope: Scope | None = None
) -> list[str]:
    """Line protocol of ``pickups`` as the ingester writes a truck gateway's pickup events (the attributes the
    gateway's ``truck`` processor sets: point, route, arrived_ms, dwell_s, distance_m)."""
    lines: list[str] = []
    for start in range(0, len(pickups), MAX_ITEMS):
        items = [
            EventItem(
                id="pk-" + hashlib.sha256(f"{gateway}|{p.point}|{p.arrived:.3f}".encode()).hexdigest()[:16],
                kind="pickup",
                subject=subject,
                device=p.truck,
                at=int(p.departed * 1000),
                attrs={
                    "point": p.point,
                    "route": p.route or "",
                    "arrived_ms": int(p.arrived * 1000),
                    "dwell_s": round(p.dwell_s, 1),
                    "distance_m": round(p.distance_m, 1),
                },
            )
            for p in pickups[start : start + MAX_ITEMS]
        ]
        batch = EventBatch(
            gateway=gateway,
            seq=start,
            sent=items[-1].at,
            consent="c-waste",
            purpose=PURPOSE,
            category=Category.MOBILITY,
            events=items,
        )
        lines += event_lines(batch, scope)
    return lines


def first_visits(pickups: Iterable[Pickup]) -> dict[str, int]:
    """Each point's first arrival of the day (epoch ms): when it was collected."""
    out: dict[str, int] = {}
    for p in sorted(pickups, key=lambda p: p.arrived):
        out.setdefault(p.point, int(p.arrived * 1000))
    return out


ROUTE = "chiyoda-1"
TRUCK_GW = "truck-07"
HOSTILE_GW = "home-666"
DAY = date(2026, 10, 7)
HISTORY = 5
#: the demo truck's route (drivers/sim/data/collection_points.geojson holds the same points)
GEO = route_geojson(DEFAULT_ROUTE, ROUTE)
ROUTES = load_routes(GEO)


@dataclass
class Town:
    """The demo truck's route in a real InfluxDB (see :func:`seed_town`)."""

    influx: InfluxDB
    db: str
    key: str  # the scope key (hex), as the ingesters and the navigator are given it
    scope: Scope
    today: list[Pickup]
    truth: dict[str, int]
    clock: float = 0.0  # the navigators' time (POSIX seconds)

    def navigator(self, now: float, *, url: str | None = None) -> tuple[Navigator, InfluxPickups]:
        """A navigator over this town's InfluxDB (``url``: another one), its clock set to ``now``."""
        source = InfluxPickups(
            url or self.influx.url,
            self.db,
            truck_tags([TRUCK_GW], self.scope),
            points=[p.id for p in ROUTES[ROUTE].points],
        )
        self.clock = now
        nav = Navigator(ROUTES, source, history_days=HISTORY, refresh_s=0.0, now=lambda: self.clock)
        return nav, source

    def round(self) -> list[Pickup]:
        """Today's round: the first pickup at each point, in order."""
        return sorted((p for p in self.today if int(p.arrived * 1000) == self.truth[p.point]), key=lambda p: p.arrived)


def seed_town(influxdb: InfluxDB, db: str) -> Town:
    """HISTORY days of the truck's rounds and today's, plus a hostile gateway's and one malformed pickup."""
    key = new_key()
    scope = Scope(parse_key(key))
    truck = VariedTruck("truck-07", "truck-07", 3, shift_h=(8.0, 12.0))
    lines: list[str] = []
    today: list[Pickup] = []
    for d in range(-HISTORY, 1):
        day = DAY + timedelta(days=d)
        pk = pickups_of_day(truck, GEO, local_day(day))
        lines += pickup_lines(pk, TRUCK_GW, scope=scope)
        if d == 0:
            today = pk
    # the hostile gateway says every point was collected at 07:00 today (under its own consent to waste-collection)
    t7 = at_jst(DAY, 7)
    fake = [Pickup("truck-07", p.id, ROUTE, t7 + i, t7 + i + 30, 0.0) for i, p in enumerate(ROUTES[ROUTE].points)]
    lines += pickup_lines(fake, HOSTILE_GW, subject="p-truck", scope=scope)
    # the truck's gateway names a point that is on no route
    lines += pickup_lines([Pickup("truck-07", "cp-99", ROUTE, t7, t7 + 40, 0.0)], TRUCK_GW, scope=scope)
    influxdb.write_lines("\n".join(lines), db, precision="ms")
    return Town(influxdb, db, key, scope, today, first_visits(today))

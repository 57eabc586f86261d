"""Rounds, the ETA model and today's status: pure functions over pickups (no I/O, no clock of its own).

A *visit* is a truck's pickup at a collection point (arrival and departure, epoch ms). A *round* is one route's
day (JST): the first visit of each of its points that day, in time order (a truck that laps the route again the
same day collects nothing new). The model learns, from past rounds, the time between the arrivals at two
consecutive points of a round, per route and JST hour of the first arrival, and keeps the median:

- ``(route, from, to, hour)``: that leg at that hour, once it has :attr:`EtaModel.min_samples` rounds;
- ``(route, from, to)``: that leg at any hour;
- ``(route, hour)``: any leg of the route at that hour;
- ``route``: any leg of the route; and :data:`DEFAULT_LEG_S` when nothing was learned yet.

The estimate for a point ``k`` stops ahead of the truck's last pickup is the last arrival plus the chain of
medians along the route; if the truck is already later than the estimate for the next point, every estimate
moves by that delay (the truck cannot be earlier than now).
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Literal

from cloud_ingest.navi.routes import Route

#: collection rounds and the page are in Japan Standard Time (no daylight saving time)
JST = timezone(timedelta(hours=9), "JST")
#: a leg's time before any round was learned (arrival to arrival: a ~250 m leg and a ~1 min stop)
DEFAULT_LEG_S = 150.0

Status = Literal["not_yet", "on_the_way", "collected"]


@dataclass(frozen=True, slots=True)
class Visit:
    """A pickup at ``point``: the truck arrived at ``arrived_ms`` and left at ``departed_ms`` (epoch ms)."""

    point: str
    arrived_ms: int
    departed_ms: int


def jst_day(ms: int) -> date:
    """The JST calendar day of an instant (epoch ms)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(JST).date()


def jst_hour(ms: float) -> int:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(JST).hour


def day_start_ms(day: date) -> int:
    """Midnight JST starting ``day``, epoch ms."""
    return int(datetime(day.year, day.month, day.day, tzinfo=JST).timestamp() * 1000)


def hhmm(ms: float) -> str:
    """``09:41`` (JST) of an instant."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(JST).strftime("%H:%M")


def rounds(visits: Iterable[Visit], route: Route) -> dict[date, list[Visit]]:
    """One route's rounds: per JST day, the first visit of each of its points, in order of arrival."""
    on_route = {p.id for p in route.points}
    first: dict[date, dict[str, Visit]] = defaultdict(dict)
    for v in sorted(visits, key=lambda v: v.arrived_ms):
        if v.point in on_route:
            first[jst_day(v.arrived_ms)].setdefault(v.point, v)
    return {day: sorted(seen.values(), key=lambda v: v.arrived_ms) for day, seen in sorted(first.items())}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(slots=True)
class EtaModel:
    """Median arrival-to-arrival times between consecutive points, per route and hour (see the module)."""

    min_samples: int = 3
    leg_hour: dict[tuple[str, str, str, int], float] = field(default_factory=dict)
    leg: dict[tuple[str, str, str], float] = field(default_factory=dict)
    route_hour: dict[tuple[str, int], float] = field(default_factory=dict)
    route: dict[str, float] = field(default_factory=dict)
    #: per (route, point): the median JST time of day (seconds after midnight) of its first visit
    usual_s: dict[tuple[str, str], float] = field(default_factory=dict)
    rounds: int = 0

    @classmethod
    def learn(
        cls, visits: Iterable[Visit], routes: Mapping[str, Route], *, min_samples: int = 3, max_leg_s: float = 3600.0
    ) -> EtaModel:
        """Learn from past visits (every route's rounds). A gap longer than ``max_leg_s`` (a lunch break, a
        trip to the incinerator) is not a leg and is left out."""
        model = cls(min_samples=min_samples)
        all_visits = list(visits)
        samples: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
        usual: dict[tuple[str, str], list[float]] = defaultdict(list)
        for route in routes.values():
            for day, rnd in rounds(all_visits, route).items():
                model.rounds += 1
                midnight = day_start_ms(day)
                for visit in rnd:
                    usual[(route.id, visit.point)].append((visit.arrived_ms - midnight) / 1000)
                for a, b in itertools.pairwise(rnd):
                    gap = (b.arrived_ms - a.arrived_ms) / 1000
                    if 0 < gap <= max_leg_s:
                        samples[(route.id, a.point, b.point, jst_hour(a.arrived_ms))].append(gap)
        by_leg: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        by_route_hour: dict[tuple[str, int], list[float]] = defaultdict(list)
        by_route: dict[str, list[float]] = defaultdict(list)
        for (rid, src, dst, hour), gaps in samples.items():
            if len(gaps) >= min_samples:
                model.leg_hour[(rid, src, dst, hour)] = _median(gaps)
            by_leg[(rid, src, dst)] += gaps
            by_route_hour[(rid, hour)] += gaps
            by_route[rid] += gaps
        model.leg = {k: _median(g) for k, g in by_leg.items() if len(g) >= min_samples}
        model.route_hour = {k: _median(g) for k, g in by_route_hour.items() if len(g) >= min_samples}
        model.route = {k: _median(g) for k, g in by_route.items()}
        model.usual_s = {k: _median(t) for k, t in usual.items()}
        return model

    def leg_s(self, route: str, a: str, b: str, at_ms: float) -> float:
        """Expected seconds from the arrival at ``a`` (at ``at_ms``) to the arrival at ``b``."""
        hour = jst_hour(at_ms)
        for value in (
            self.leg_hour.get((route, a, b, hour)),
            self.leg.get((route, a, b)),
            self.route_hour.get((route, hour)),
            self.route.get(route),
        ):
            if value is not None:
                return value
        return DEFAULT_LEG_S

    def etas(self, route: Route, last: Visit, now_ms: int, skip: Iterable[str] = ()) -> list[tuple[str, int]]:
        """``(point, estimated arrival ms)`` of the points ahead of the truck's last pickup ``last``, in driving
        order, leaving out the points in ``skip`` (collected already); the first is 1 stop ahead."""
        done = set(skip)
        at = float(last.arrived_ms)
        prev = last.point
        out: list[tuple[str, float]] = []
        for p in route.ahead(last.point):
            at += self.leg_s(route.id, prev, p.id, at) * 1000
            prev = p.id
            if p.id not in done:
                out.append((p.id, at))
        if out and out[0][1] < now_ms:  # later than expected: nothing arrives before now
            late = now_ms - out[0][1]
            out = [(p, t + late) for p, t in out]
        return [(p, round(t)) for p, t in out]


@dataclass(frozen=True, slots=True)
class PointStatus:
    """Today's status of one collection point (what ``/api/status`` serves per point)."""

    point: str
    status: Status
    collected_ms: int | None = None
    stops_away: int | None = None
    eta_ms: int | None = None
    usual_s: float | None = None


def today(route: Route, visits: Iterable[Visit], model: EtaModel, now_ms: int) -> list[PointStatus]:
    """Each point of ``route`` (in route order) today: collected (first arrival today), the truck on its way
    (stops away, ETA: once today's round has started) or not yet (with the usual time, if learned)."""
    day = jst_day(now_ms)
    rnd = rounds((v for v in visits if v.arrived_ms <= now_ms), route).get(day, [])
    collected = {v.point: v for v in rnd}
    ahead: dict[str, tuple[int, int]] = {}
    if rnd and len(collected) < len(route.points):
        last = rnd[-1]
        for k, (pid, eta) in enumerate(model.etas(route, last, now_ms, skip=collected), start=1):
            ahead[pid] = (k, eta)
    out = []
    for p in route.points:
        usual = model.usual_s.get((route.id, p.id))
        if p.id in collected:
            out.append(PointStatus(p.id, "collected", collected_ms=collected[p.id].arrived_ms, usual_s=usual))
        elif p.id in ahead:
            k, eta = ahead[p.id]
            out.append(PointStatus(p.id, "on_the_way", stops_away=k, eta_ms=eta, usual_s=usual))
        else:
            out.append(PointStatus(p.id, "not_yet", usual_s=usual))
    return out

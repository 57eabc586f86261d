"""The navigator's state: the routes, the ETA model (relearned once per JST day from the past rounds) and a
short cache of today's pickups, so a page that many residents open at once costs InfluxDB one query per
``refresh_s``. If InfluxDB cannot be reached, the last good answer (and model) is kept and the error is said."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from cloud_ingest.influx import InfluxError
from cloud_ingest.navi.model import EtaModel, PointStatus, Visit, day_start_ms, hhmm, jst_day, today
from cloud_ingest.navi.routes import Route
from cloud_ingest.navi.source import PickupSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Today's status of every route at ``now_ms``."""

    now_ms: int
    day: date
    routes: dict[str, list[PointStatus]]
    model_day: date | None
    model_rounds: int
    stale: bool = False  # InfluxDB did not answer: this is the last good answer


class Navigator:
    """Answers "where is the truck" for every route; thread-safe (the web server's worker threads share it)."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        source: PickupSource,
        *,
        history_days: int = 28,
        refresh_s: float = 15.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.routes = dict(routes)
        self.source = source
        self.history_days = history_days
        self.refresh_s = refresh_s
        self.now = now
        self.model = EtaModel()
        self.model_day: date | None = None
        self._lock = threading.Lock()
        self._today: tuple[float, list[Visit]] | None = None
        self._last: Snapshot | None = None
        self.errors = 0
        self._failing = False

    def relearn(self, day: date) -> EtaModel:
        """Learn the model from the ``history_days`` rounds before ``day`` (JST)."""
        start = day_start_ms(day - timedelta(days=self.history_days))
        model = EtaModel.learn(self.source.visits(start, day_start_ms(day)), self.routes)
        self.model, self.model_day = model, day
        log.info("ETA model for %s learned from %d rounds", day, model.rounds)
        return model

    def snapshot(self) -> Snapshot:
        """Today's status (raises :class:`~cloud_ingest.influx.InfluxError` only if there never was an answer)."""
        with self._lock:
            t = self.now()
            now_ms = int(t * 1000)
            day = jst_day(now_ms)
            try:
                if self.model_day != day:
                    self.relearn(day)
                cached = self._today
                if cached is None or not 0 <= t - cached[0] < self.refresh_s or jst_day(int(cached[0] * 1000)) != day:
                    self._today = cached = (t, self.source.visits(day_start_ms(day), now_ms + 1))
            except InfluxError as err:
                self.errors += 1
                if not self._failing:  # once per outage, not once per resident's request
                    log.warning("InfluxDB did not answer the navigator (serving the last known state): %s", err)
                    self._failing = True
                if self._last is None:
                    raise
                return replace(self._last, stale=True)
            if self._failing:
                log.info("InfluxDB answers the navigator again (%d failed requests)", self.errors)
                self._failing = False
            visits = cached[1]
            snap = Snapshot(
                now_ms,
                day,
                {rid: today(route, visits, self.model, now_ms) for rid, route in self.routes.items()},
                self.model_day,
                self.model.rounds,
            )
            self._last = snap
            return snap

    def status_json(self, snap: Snapshot) -> dict[str, Any]:
        """The public JSON document of ``/api/status`` (route, point, status and JST times only)."""
        return {
            "date": snap.day.isoformat(),
            "time_zone": "Asia/Tokyo",
            "generated_at": hhmm(snap.now_ms),
            "stale": snap.stale,
            "model": {
                "learned_for": None if snap.model_day is None else snap.model_day.isoformat(),
                "rounds": snap.model_rounds,
            },
            "routes": [
                {
                    "route": rid,
                    "points_total": len(statuses),
                    "collected": sum(s.status == "collected" for s in statuses),
                    "points": [_point_json(self.routes[rid], s) for s in statuses],
                }
                for rid, statuses in snap.routes.items()
            ],
        }


def _point_json(route: Route, s: PointStatus) -> dict[str, Any]:
    p = route.points[route.index(s.point)]
    usual = None if s.usual_s is None else f"{int(s.usual_s // 3600) % 24:02d}:{int(s.usual_s % 3600 // 60):02d}"
    return {
        "id": p.id,
        "name": p.name,
        "order": route.index(s.point) + 1,
        "lat": p.lat,
        "lon": p.lon,
        "status": s.status,
        "collected_at": None if s.collected_ms is None else hhmm(s.collected_ms),
        "stops_away": s.stops_away,
        "eta": None if s.eta_ms is None else hhmm(s.eta_ms),
        "usual": usual,
    }

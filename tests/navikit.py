"""The garbage-collection navigator's test kit: simulated rounds as the ingester stores them in InfluxDB.

- :func:`local_day` / :func:`at_jst`: a JST calendar day as the simulators count it, and an instant on it;
- :func:`pickup_lines`: pickups (from :func:`drivers.sim.rounds.pickups_of_day`, the gateway's own stop
  detection on the simulated truck's fixes) as the ingester writes them: an ``EventBatch`` of the wire contract
  through :func:`cloud_ingest.lineproto.event_lines` (measurement ``events``, the ``household`` tag of the sending
  gateway under ``waste-collection``);
- :func:`first_visits`: the truth of a day: each point's first arrival (epoch ms).

Used by tests/ingest/test_navi*.py and bench/navi.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime

from cloud_ingest.lineproto import event_lines
from cloud_ingest.navi.model import JST
from cloud_ingest.scope import Scope
from drivers.gnss.truck import Pickup
from kyojo.contract.vocab import Category
from kyojo.contract.wire import MAX_ITEMS, EventBatch, EventItem

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

"""Events (pickups) from a processor, kept on the gateway, released only under consent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import drivers.sim as sim
from drivers.gnss.truck import load_collection_points
from edge_agent.config import AgentConfig
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from edge_agent.processors.truck import Config, TruckProcessor
from kyojo.contract.wire import decode_events

POINTS = Path(sim.__file__).parent / "data" / "collection_points.geojson"
SHIFT = 1_717_196_400.0 + 3600  # 2024-06-01 08:00 JST + 1 h: the truck is on its round


def truck_readings(seconds: int) -> list[sim.Reading]:  # type: ignore[name-defined]
    (gnss,) = sim.truck("truck-07", 4)
    return gnss.readings_between(SHIFT, SHIFT + seconds)


def pipeline(tmp_path: Path) -> Pipeline:
    cfg = AgentConfig.model_validate({"gateway": {"id": "truck-07", "data_dir": str(tmp_path)}})
    return Pipeline(connect(cfg.db_path), cfg)


def test_pickups_are_detected_on_the_simulated_round() -> None:
    proc = TruckProcessor(Config(kind="truck", collection_points=POINTS), load_collection_points(POINTS))
    readings = truck_readings(3600)
    events = [e for i in range(0, len(readings), 500) for e in proc.feed(readings[i : i + 500])]
    assert len(events) >= 5  # legs of 200-350 m with 30-90 s stops: several pickups an hour
    assert len({e.id for e in events}) == len(events)  # each stop once, however the batches were cut
    points = [e.attrs["point"] for e in events]
    assert points[:20] == sorted(points[:20], key=lambda p: (int(p[3:]) - int(points[0][3:])) % 20)  # in route order
    assert all(30 <= float(e.attrs["dwell_s"]) <= 95 for e in events)
    # the loop has 20 points: progress counts each point once, then stays complete
    assert [e.attrs["served"] for e in events] == [min(i, 20) for i in range(1, len(events) + 1)]
    assert all(e.category.value == "mobility" and e.subject == "truck-07" for e in events)


def test_events_leave_only_under_consent_and_are_stored_once(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    proc = TruckProcessor(Config(kind="truck", collection_points=POINTS), load_collection_points(POINTS))
    readings = truck_readings(1800)
    half = len(readings) // 2
    first = proc.feed(readings[:half])
    p.store_events(first)
    p.release_events(SHIFT + 900)
    assert p.stats.events_withheld == len(first) > 0  # no consent yet: kept on the gateway
    assert p.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0

    c = p.consents.grant("waste-collection", "truck-07", now=datetime.fromtimestamp(SHIFT + 900, tz=UTC))
    second = proc.feed(readings[half:])
    assert p.store_events(second) == len(second) > 0
    assert p.store_events(second) == 0  # idempotent by event id
    p.release_events(SHIFT + 1800)
    rows = p.conn.execute("SELECT topic, payload FROM outbox WHERE retain = 0").fetchall()
    (batch,) = [decode_events(t, bytes(b)) for t, b in rows]
    assert batch.consent == c.id
    assert [e.id for e in batch.events] == [e.id for e in second]
    assert batch.events[0].subject == p.keys.pseudonym("waste-collection", "truck-07")
    assert batch.events[0].kind == "pickup"
    assert batch.events[0].attrs["route"] == "chiyoda-1"
    kinds = [k for (k,) in p.conn.execute("SELECT kind FROM audit ORDER BY n")]
    assert kinds == ["consent_given", "release"]

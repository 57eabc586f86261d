"""The garbage-collection navigator against a real InfluxDB: simulated rounds of the demo truck (with the
variance of drivers/sim/rounds.py) stored as the ingester stores pickup events, read back by the navigator, served
as JSON and as the page (Starlette's TestClient; tests/web/test_navi_page.py drives it in Chromium).

A hostile enrolled gateway's pickups (it granted waste-collection too) never count, a malformed one is counted
and skipped, nothing personal is served, and InfluxDB going away is said, never a crash."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cloud_ingest.navi.app import create_app
from cloud_ingest.navi.model import hhmm
from cloud_ingest.navi.source import truck_tags
from drivers.sim.gnss import DEFAULT_ROUTE
from provisioning.local import InfluxDB, free_port
from tests.kit import wait_for
from tests.navikit import DAY, GEO, HISTORY, HOSTILE_GW, ROUTE, ROUTES, TRUCK_GW, Town, at_jst, seed_town

pytestmark = pytest.mark.influx


@pytest.fixture
def town(influxdb: InfluxDB, influx_db: str) -> Town:
    return seed_town(influxdb, influx_db)


def _points(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (route,) = doc["routes"]
    return {p["id"]: p for p in route["points"]}


def test_status_during_the_round_from_influxdb(town: Town) -> None:
    rnd = town.round()
    assert len(rnd) == len(DEFAULT_ROUTE)
    now = rnd[7].departed + 1  # the 8th point of the round was just collected
    nav, source = town.navigator(now)
    client = TestClient(create_app(nav))
    resp = client.get("/api/status")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["date"] == DAY.isoformat() and doc["time_zone"] == "Asia/Tokyo"
    assert doc["model"] == {"learned_for": DAY.isoformat(), "rounds": HISTORY}
    points = _points(doc)
    collected = {pid for pid, p in points.items() if p["status"] == "collected"}
    assert collected == {p.point for p in rnd[:8]}  # not the hostile gateway's "all at 07:00"
    for pk in rnd[:8]:
        assert points[pk.point]["collected_at"] == hhmm(pk.arrived * 1000)
    ahead = sorted((p for p in points.values() if p["status"] == "on_the_way"), key=lambda p: p["stops_away"])
    assert [p["id"] for p in ahead] == [pk.point for pk in rnd[8:]]
    assert [p["stops_away"] for p in ahead] == list(range(1, len(rnd) - 7))
    # the next point: the estimate is within 3 minutes of when the truck really came (a fixed seed: no flake)
    nxt = rnd[8]
    eta_h, eta_m = map(int, ahead[0]["eta"].split(":"))
    truth_h, truth_m = map(int, hhmm(nxt.arrived * 1000).split(":"))
    assert abs((eta_h * 60 + eta_m) - (truth_h * 60 + truth_m)) <= 3
    assert all(p["usual"] is not None for p in points.values())
    assert source.rejected["unknown_point"] == 1  # counted, logged once, skipped
    assert doc["routes"][0]["collected"] == 8 and doc["routes"][0]["points_total"] == len(DEFAULT_ROUTE)


def test_nothing_personal_is_served(town: Town) -> None:
    rnd = town.round()
    nav, _ = town.navigator(rnd[3].departed + 1)
    client = TestClient(create_app(nav))
    bodies = [client.get(path).text for path in ("/api/status", "/", "/?lang=en", "/api/route.geojson")]
    tags = truck_tags([TRUCK_GW, HOSTILE_GW], town.scope)
    for body in bodies:
        for secret in (*tags, TRUCK_GW, HOSTILE_GW, "p-truck"):
            assert secret not in body
    keys = set(client.get("/api/status").json()) | {
        k for p in _points(client.get("/api/status").json()).values() for k in p
    }
    assert not keys & {"household", "subject", "device", "gateway", "truck"}
    geo = client.get("/api/route.geojson")
    assert geo.headers["content-type"].startswith("application/geo+json")
    ids = {f["properties"].get("id") for f in geo.json()["features"]}
    assert ids >= {p.id for p in ROUTES[ROUTE].points}


def test_the_page_in_japanese_first_and_in_english(town: Town) -> None:
    rnd = town.round()
    nav, _ = town.navigator(rnd[5].departed + 1)
    client = TestClient(create_app(nav))
    ja = client.get("/")
    assert ja.status_code == 200 and '<html lang="ja">' in ja.text
    assert "ごみ収集ナビ" in ja.text and "収集済み" in ja.text and "あと 1 か所" in ja.text
    assert "default-src 'none'" in ja.headers["content-security-policy"]
    assert "<script" not in ja.text
    mine = client.get(f"/?point={rnd[6].point}&lang=en")
    assert '<html lang="en">' in mine.text and "Your collection point" in mine.text
    assert "Truck on its way: 1 stops away" in mine.text
    assert client.get("/static/kyojo.css").status_code == 200
    assert client.get("/static/navi.css").status_code == 200


def test_the_model_is_relearned_each_day(town: Town) -> None:
    nav, _ = town.navigator(at_jst(DAY, 7, 30))
    snap = nav.snapshot()
    assert snap.model_day == DAY and snap.model_rounds == HISTORY
    assert {s.status for s in snap.routes[ROUTE]} == {"not_yet"}  # the hostile 07:00 pickups do not count
    town.clock = at_jst(DAY + timedelta(days=1), 7, 30)
    snap = nav.snapshot()
    assert snap.model_day == DAY + timedelta(days=1) and snap.model_rounds == HISTORY  # one day in, one day out
    assert nav.model.usual_s[(ROUTE, "cp-02")] > 8 * 3600


def test_influxdb_unreachable_is_said_not_crashed(town: Town, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    nav, _ = town.navigator(at_jst(DAY, 9), url=dead)
    client = TestClient(create_app(nav))
    resp = client.get("/api/status")
    assert resp.status_code == 503 and resp.json() == {"error": "unavailable"}
    page = client.get("/")
    assert page.status_code == 503 and "ただいま収集情報を表示できません" in page.text
    # once it had an answer, the last one is served, marked stale
    nav2, source = town.navigator(at_jst(DAY, 9))
    client2 = TestClient(create_app(nav2))
    assert client2.get("/api/status").json()["stale"] is False
    source.url = dead
    doc = client2.get("/api/status").json()
    assert doc["stale"] is True and nav2.errors == 1
    assert any(p["status"] == "collected" for p in _points(doc).values())
    # every resident's request during the outage is counted; the log says it once, and again when it is over
    caplog.clear()
    caplog.set_level(logging.INFO, logger="cloud_ingest.navi.service")
    for _ in range(3):
        assert client2.get("/").status_code == 200
    assert nav2.errors == 4
    source.url = town.influx.url
    assert client2.get("/api/status").json()["stale"] is False
    said = [r.getMessage() for r in caplog.records if r.name == "cloud_ingest.navi.service"]
    assert len(said) == 1 and "again (4 failed requests)" in said[0], said


def test_kyojo_navi_serve_counts_only_the_trucks_named_under_the_ingesters_key(town: Town, tmp_path: Path) -> None:
    """The real command: the scope key from the environment turns --truck into the tag the ingester wrote."""
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps(GEO), encoding="utf-8")
    rnd = town.round()
    port = free_port()
    kyojo = Path(sys.executable).with_name("kyojo")
    base = [str(kyojo), "navi", "serve", "--points", str(points), "--influx-url", town.influx.url]
    base += ["--influx-db", town.db, "--port", str(port), "--clock-start", repr(rnd[4].departed + 1)]
    # without the ingesters' key (and without --dev-key) it refuses to start: the tags could not match
    env = {k: v for k, v in os.environ.items() if k != "KYOJO_INGEST_SCOPE_KEY"}
    refused = subprocess.run([*base, "--truck", TRUCK_GW], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "KYOJO_INGEST_SCOPE_KEY" in refused.stderr
    log = (tmp_path / "navi.log").open("wb")
    proc = subprocess.Popen(
        [*base, "--truck", TRUCK_GW, "--clock-speed", "0"],
        env={**env, "KYOJO_INGEST_SCOPE_KEY": town.key},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/status"
        wait_for(lambda: _get(url) is not None, 60, "kyojo navi serve to answer")
        doc = _get(url)
        assert doc is not None
        collected = {p["id"] for p in doc["routes"][0]["points"] if p["status"] == "collected"}
        assert collected == {pk.point for pk in rnd[:5]}
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a loopback URL of the test
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except OSError:
        return None

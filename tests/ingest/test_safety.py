"""The city's view of a declared disaster (issue 17 section 2): each household's newest status counted once per
area, small counts hidden (k-anonymity), and only the households that asked to be checked on and said where are
named. Real InfluxDB, the points written as the ingester writes them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from cloud_ingest.erasure import InfluxV1Admin
from cloud_ingest.lineproto import event_lines
from cloud_ingest.safety import latest_statuses, report
from kyojo.cli import app
from kyojo.contract.vocab import Category
from kyojo.contract.wire import EventBatch, EventItem
from provisioning.local import InfluxDB

pytestmark = pytest.mark.influx

T = 1_717_210_800_000


def status(admin: InfluxV1Admin, gateway: str, n: int, at: int, decl: str = "d1-aizu-1", **attrs: Any) -> None:
    base: dict[str, Any] = {"declaration": decl, "area": "aizu-1", "power": True, "safe": False, "check_on_us": False}
    item = EventItem(id=f"ss-{gateway}-{n}", kind="safety.status", subject=f"s-{gateway}", device="m", at=at,
                     attrs=base | attrs)  # fmt: skip
    batch = EventBatch(gateway=gateway, seq=n, sent=at, consent="c", purpose="disaster-safety",
                       category=Category.WELLBEING, events=[item])  # fmt: skip
    for line in event_lines(batch):
        admin.write(line)


def test_counts_per_area_are_k_anonymous_and_only_askers_are_named(influxdb: InfluxDB, influx_db: str) -> None:
    admin = InfluxV1Admin(influxdb.url, influx_db)
    for i in range(6):  # six homes answer; each answers twice, the newest counts
        status(admin, f"gw-{i}", 1, T, active_1h=False)
        status(admin, f"gw-{i}", 2, T + 1_800_000, active_1h=True, active_3h=True, active_12h=True, safe=i < 5)
    status(admin, "gw-6", 1, T, check_on_us=True, contact="会津若松市 1-2-3 山田", power=False)
    status(admin, "gw-7", 1, T, check_on_us=True)  # asked, but did not say where: counted, not named
    status(admin, "gw-8", 1, T, decl="d2-other", area="other")  # another declaration: not in this one
    rows = latest_statuses(admin, "d1-aizu-1")
    assert len(rows) == 8  # one per household (the ingester's tag), not per message
    r = report(rows, "d1-aizu-1", k=5)
    assert r["areas"] == {
        "aizu-1": {"answered": 8, "active_1h": 6, "active_3h": 6, "active_12h": 6, "power": 7, "safe": 5,
                   "check_on_us": "<5"}
    }  # fmt: skip
    assert [c["contact"] for c in r["check_on"]] == ["会津若松市 1-2-3 山田"]

    out = CliRunner().invoke(
        app,
        ["ingest", "safety", "--declaration", "d1-aizu-1", "--influx-url", influxdb.url, "--influx-db", influx_db,
         "--k", "10"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["areas"]["aizu-1"]["answered"] == doc["areas"]["aizu-1"]["safe"] == "<10"  # eight homes are too few


def test_the_dashboard_panel_shows_only_what_passed_the_k_rule(influxdb: InfluxDB, influx_db: str) -> None:
    """``kyojo ingest safety --write``: the k-anonymous counts become points of city_safety, which the Grafana
    panel safety.by_area reads; a count below k is absent (not "<k", not the number), the households' contacts
    never reach it."""
    from cloud_ingest import analyst

    admin = InfluxV1Admin(influxdb.url, influx_db)
    for i in range(6):
        status(admin, f"gw-{i}", 1, T, active_1h=True, safe=i < 5)
    status(admin, "gw-6", 1, T, check_on_us=True, contact="会津若松市 1-2-3 山田", power=False)
    before = int(time.time() * 1000) - 1000
    out = CliRunner().invoke(
        app,
        ["ingest", "safety", "--declaration", "d1-aizu-1", "--influx-url", influxdb.url, "--influx-db", influx_db,
         "--k", "5", "--write"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    after = int(time.time() * 1000) + 1000
    result = analyst.run_query(analyst.InfluxQL(influxdb.url, influx_db), "safety.by_area", before, after)
    (row,) = [dict(zip(result.columns, r, strict=True)) for r in result.rows]
    assert row["area"] == "aizu-1" and row["declaration"] == "d1-aizu-1"
    assert (row["answered"], row["active_1h"], row["power"], row["safe"]) == (7, 6, 6, 5)
    assert row["check_on_us"] is None and row["suppressed"] == 1  # one asked: below k, left out
    raw = admin.query('SELECT * FROM "city_safety"')
    assert "山田" not in json.dumps(raw, ensure_ascii=False)  # no contact in the released points
    over_time = analyst.run_query(analyst.InfluxQL(influxdb.url, influx_db), "safety.answered", before, after)
    assert [r[-1] for r in over_time.rows] == [7]

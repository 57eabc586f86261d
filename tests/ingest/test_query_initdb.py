"""``init_db`` against the real InfluxDB 1.6: retention policies and continuous queries, idempotently; and
erasure reaches the hourly rollups too."""

from __future__ import annotations

import json
import time

import pytest

from cloud_ingest import initdb
from cloud_ingest.analyst import InfluxQL
from cloud_ingest.erasure import InfluxV1Admin
from provisioning.local import InfluxDB

pytestmark = [pytest.mark.influx]


def snapshot(influxdb: InfluxDB, db: str) -> tuple[list[list[object]], list[list[object]]]:
    rps = influxdb.query(f'SHOW RETENTION POLICIES ON "{db}"')[0]["series"][0]["values"]
    cqs = [s for s in influxdb.query("SHOW CONTINUOUS QUERIES")[0]["series"] if s["name"] == db]
    return rps, (cqs[0].get("values", []) if cqs else [])


def test_init_db_is_idempotent_and_corrects_drift(influxdb: InfluxDB) -> None:
    db = "initdb_test"
    client = InfluxQL(influxdb.url, db)
    layout = initdb.Layout(db=db, raw_days=14)
    try:
        first = initdb.init_db(client, layout)
        assert f"created database {db}" in first
        assert sum(c.startswith("created continuous query") for c in first) == len(layout.metrics) + 1
        rps, cqs = snapshot(influxdb, db)
        by_name = {r[0]: r for r in rps}
        assert by_name["raw"][1] == "336h0m0s" and by_name["raw"][4] is True  # 14 days, the default RP
        assert by_name["rollup_1h"][1] == f"{initdb.shortest_notice_days() * 24}h0m0s" == "8760h0m0s"
        assert by_name["community"][1] == f"{5 * 365 * 24}h0m0s" and by_name["community"][4] is False
        names = {c[0] for c in cqs}
        assert {"kyojo_1h_energy", "kyojo_1h_heart_rate", "kyojo_1h_community"} <= names
        assert "kyojo_1h_battery_level" not in names  # device housekeeping is never released
        energy = next(c[1] for c in cqs if c[0] == "kyojo_1h_energy")
        assert "RESAMPLE EVERY 1h FOR 6h" in energy and "sum(delta) AS delta" in energy
        assert "INTO initdb_test.rollup_1h.energy" in energy and "GROUP BY time(1h), *" in energy

        assert initdb.init_db(client, layout) == []  # the second run changes nothing
        assert snapshot(influxdb, db) == (rps, cqs)

        # drift: someone shortened an RP, dropped a CQ and left a stale one; init-db puts it right
        influxdb.query(f'ALTER RETENTION POLICY "raw" ON "{db}" DURATION 2d')
        influxdb.query(f'DROP CONTINUOUS QUERY "kyojo_1h_power" ON "{db}"')
        influxdb.query(
            f'CREATE CONTINUOUS QUERY "kyojo_1h_old" ON "{db}" BEGIN SELECT mean("mean") INTO "x" '  # noqa: S608
            'FROM "power" GROUP BY time(1h) END'
        )
        changed = initdb.Layout(db=db, raw_days=14, resample_for="4h")
        fixes = initdb.init_db(client, changed)
        assert "altered retention policy raw (14d, default)" in fixes
        assert "created continuous query kyojo_1h_power" in fixes
        assert "dropped continuous query kyojo_1h_old" in fixes
        assert "replaced continuous query kyojo_1h_energy" in fixes  # a changed definition is replaced
        assert initdb.init_db(client, changed) == []
    finally:
        influxdb.drop_database(db)


def test_erasure_also_removes_the_hourly_rollups(influxdb: InfluxDB) -> None:
    db = "initdb_erase"
    client = InfluxQL(influxdb.url, db)
    layout = initdb.Layout(db=db, raw_days=0, rollup_days=0)
    try:
        initdb.init_db(client, layout)
        t = 1_717_912_800_000
        lines = [
            f"energy,category=energy,device=d-1,purpose=community-energy,subject={s} count=6i,delta=10.0,last=5.0,"
            f"window_s=60i {t + i * 60_000}"
            for s in ("s-gone", "s-stays")
            for i in range(3)
        ]
        influxdb.write_lines("\n".join(lines), db)
        assert initdb.backfill(client, t, t + 3_600_000, layout)["energy"] == 2
        admin = InfluxV1Admin(influxdb.url, db)
        admin.query("DELETE WHERE \"subject\" = 's-gone' AND \"purpose\" = 'community-energy'")  # erasure's statement
        left = influxdb.query_rows('SELECT "delta", "subject" FROM "rollup_1h"."energy"', db)
        assert [r["subject"] for r in left] == ["s-stays"] and left[0]["delta"] == 30.0
        assert {r["subject"] for r in influxdb.query_rows('SELECT * FROM "raw"."energy"', db)} == {"s-stays"}
    finally:
        influxdb.drop_database(db)


# ---------------------------------------------------------------------------------------------------------------
# A database that already holds points (issue 22, item 2)
# ---------------------------------------------------------------------------------------------------------------

MINUTE = 60_000


def aggregates(t_ms: int, n: int, subject: str = "s-1") -> str:
    """n per-minute energy aggregates as the ingester writes them (int and float fields, three tags)."""
    return "\n".join(
        f"energy,device=d-1,purpose=community-energy,subject={subject} count=6i,delta=10.5,last={i}.0,window_s=60i "
        f"{t_ms + i * MINUTE}"
        for i in range(n)
    )


def test_init_db_on_points_in_autogen_keeps_them_visible(influxdb: InfluxDB, influx_db: str) -> None:
    """Someone wrote to the database before init-db: the points sit in autogen, the default RP. Making ``raw``
    the default would leave a query without an RP (every dashboard) seeing none of them: init-db refuses."""
    now = int(time.time() * 1000) // MINUTE * MINUTE
    influxdb.write_lines(aggregates(now - 10 * MINUTE, 5), influx_db)
    refused = ""
    try:
        initdb.init_db(InfluxQL(influxdb.url, influx_db), initdb.Layout(db=influx_db))
    except initdb.InitDbError as err:
        refused = str(err)
    assert len(influxdb.query_rows('SELECT * FROM "energy"', influx_db)) == 5  # still what a dashboard sees
    assert "'autogen' holds points" in refused and "--migrate" in refused
    rps = influxdb.query(f'SHOW RETENTION POLICIES ON "{influx_db}"')[0]["series"][0]["values"]
    assert [r[0] for r in rps] == ["autogen"]  # nothing was changed


def test_init_db_migrate_copies_in_chunks_then_switches_and_stays_idempotent(
    influxdb: InfluxDB, influx_db: str
) -> None:
    """--migrate: the recent points are copied into raw in bounded chunks (tags, values and field types kept),
    raw becomes the default and shows them; points older than raw's 30 days stay in autogen and are reported;
    a second run changes nothing."""
    now = int(time.time() * 1000) // MINUTE * MINUTE
    recent = now - 3 * 3_600_000  # three hours of minutes
    influxdb.write_lines(aggregates(recent, 180), influx_db)
    influxdb.write_lines(aggregates(now - 40 * 86_400_000, 2, subject="s-old"), influx_db)  # beyond raw's 30 days
    client = InfluxQL(influxdb.url, influx_db)
    layout = initdb.Layout(db=influx_db)

    changes = initdb.init_db(client, layout, migrate=True, chunk_hours=1.0)
    assert "created retention policy raw (30d)" in changes  # created without DEFAULT, switched after the copy
    assert "altered retention policy raw (30d, default)" in changes
    copied = next(c for c in changes if c.startswith("copied"))
    hours = len({(recent + i * MINUTE) // 3_600_000 for i in range(180)})  # one chunk per clock hour touched
    assert copied.startswith(f"copied 180 points from retention policy autogen into raw ({hours} chunks")
    assert "left 2 points older than raw's 30d in autogen" in changes
    rows = influxdb.query_rows('SELECT * FROM "energy"', influx_db)  # the default RP, as a dashboard asks
    assert len(rows) == 180 and {r["subject"] for r in rows} == {"s-1"}
    assert rows[0]["time"] == recent and rows[-1]["last"] == 179.0 and rows[0]["delta"] == 10.5
    tags = influxdb.query(f'SHOW TAG KEYS ON "{influx_db}" FROM "raw"."energy"')[0]["series"][0]["values"]
    assert [t[0] for t in tags] == ["device", "purpose", "subject"]  # tags stayed tags (GROUP BY *)
    fields = influxdb.query(f'SHOW FIELD KEYS ON "{influx_db}" FROM "raw"."energy"')[0]["series"][0]["values"]
    assert dict(fields) == {"count": "integer", "delta": "float", "last": "float", "window_s": "integer"}
    influxdb.write_lines(aggregates(now, 1), influx_db)  # the ingester's next write (no RP) lands in raw
    assert len(influxdb.query_rows('SELECT * FROM "raw"."energy"', influx_db)) == 181

    assert initdb.init_db(client, layout, migrate=True) == []  # initialised: nothing to do, nothing copied
    assert initdb.init_db(client, layout) == []


def test_hostile_names_stay_names(influxdb: InfluxDB) -> None:
    """A database or RP name from an operator flag is quoted: it cannot end the statement and drop another."""
    assert initdb._ident('a"b\\c') == '"a\\"b\\\\c"'
    influxdb.create_database("victim")
    hostile = 'x"; DROP DATABASE "victim'
    layout = initdb.Layout(db=hostile, raw_rp='r" ON "victim" DURATION 1h; DROP DATABASE "victim', raw_days=1)
    try:
        initdb.init_db(InfluxQL(influxdb.url, hostile), layout)
        dbs = {r[0] for r in influxdb.query("SHOW DATABASES")[0]["series"][0]["values"]}
        assert {"victim", hostile} <= dbs
        rps = influxdb.query(f'SHOW RETENTION POLICIES ON "{hostile.replace(chr(34), chr(92) + chr(34))}"')
        assert layout.raw_rp in {r[0] for r in rps[0]["series"][0]["values"]}
    finally:
        influxdb.drop_database(hostile)
        influxdb.drop_database("victim")


def test_cli_refuses_then_migrates(influxdb: InfluxDB, influx_db: str) -> None:
    """``kyojo ingest init-db``: exit 1 with the reason on stderr, then ``--migrate`` prints what it did."""
    from typer.testing import CliRunner

    from kyojo.cli import app

    now = int(time.time() * 1000) // MINUTE * MINUTE
    influxdb.write_lines(aggregates(now - 5 * MINUTE, 3), influx_db)
    args = ["ingest", "init-db", "--influx-url", influxdb.url, "--influx-db", influx_db]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--migrate" in refused.output
    done = CliRunner().invoke(app, [*args, "--migrate", "--migrate-chunk-hours", "24"])
    assert done.exit_code == 0, done.output
    changes = json.loads(done.output.strip().splitlines()[-1])["changes"]
    assert any(c.startswith("copied 3 points from retention policy autogen into raw") for c in changes)
    assert len(influxdb.query_rows('SELECT * FROM "energy"', influx_db)) == 3

"""``init_db`` against the real InfluxDB 1.6: retention policies and continuous queries, idempotently; and
erasure reaches the hourly rollups too."""

from __future__ import annotations

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

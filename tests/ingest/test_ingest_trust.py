"""The ingester's own defences against a hostile gateway, each against a real Mosquitto and a real InfluxDB.

These run on a plain loopback broker so each mechanism is seen on its own; tests/e2e/test_attacks.py runs the same
attacks end to end over the deployed mTLS broker configuration.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from cloud_ingest.ingester import Ingester
from cloud_ingest.scope import Scope
from cloud_ingest.trust import AuditTrail
from kyojo.contract.wire import AuditAnchor, agg_topic, anchor_topic, consent_topic
from provisioning.local import InfluxDB, Mosquitto
from tests.ingest.test_ingest import Publisher, batch_doc, consent, new_gw, settings
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx]

HEAD_A = "a" * 64
HEAD_B = "b" * 64


def test_audit_trail_accepts_honest_order_and_flags_truncation_and_rewrites() -> None:
    honest = AuditTrail()
    # batches arrive out of order (shared subscription, redelivery): fine while heads grow with batch numbers
    assert honest.add(5, 9, HEAD_A) is None
    assert honest.add(3, 7, HEAD_B) is None
    assert honest.add(5, 9, HEAD_A) is None  # a redelivered batch
    assert honest.add(6, 9, HEAD_A) is None  # nothing logged in between
    assert honest.head == (9, HEAD_A) and honest.conflicts == 0

    rewritten = AuditTrail()
    assert rewritten.add(1, 4, HEAD_A) is None
    assert "rewritten" in (rewritten.add(2, 4, HEAD_B) or "")

    truncated = AuditTrail()
    assert truncated.add(10, 50, HEAD_A) is None
    # entries 41..50 were deleted and the log goes on from 40: a later batch names an older entry
    assert "truncated" in (truncated.add(11, 41, HEAD_B) or "")
    # and a batch that claims to be older than one we saw, with a newer entry, is flagged too
    assert "truncated" in (truncated.add(9, 60, HEAD_B) or "")
    assert truncated.conflicts == 2


def retained(pub: Publisher, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained at QoS 1, all in flight at once, and wait for every PUBACK."""
    infos = [pub.client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)


def _power_series(influxdb: InfluxDB, db: str) -> int:
    rows = influxdb.query_rows('SHOW SERIES FROM "power"', db=db)
    return len(rows)


def test_a_flood_of_retained_consents_neither_blocks_start_nor_loses_data(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    pub = Publisher(mosquitto)
    flood, victim = new_gw(), new_gw()
    try:
        pub.publish(*consent(victim), retain=True)
        retained(pub, [consent(flood, f"c{i}") for i in range(1500)])
        # snapshot_wait=0: start() returns as soon as the consent subscription is acknowledged
        cfg = settings(mosquitto, influxdb, influx_db, snapshot_wait=0.0, max_consents_per_gateway=100)
        with Ingester(cfg) as ing:
            pub.publish(agg_topic(victim, "energy"), orjson.dumps(batch_doc(victim, n=3)))
            assert wait_for(lambda: ing.stats()["written"] == 3)
            assert wait_for(lambda: not ing.stats()["consents_loading"])
            assert ing.wait_idle()
            st = ing.stats()
            kept = ing.consent_ids(flood)
        assert st["rejected"].get("unknown_consent", 0) == 0  # the victim's message waited for its consent
        assert st["rejected"]["consent_record_cap"] == 1500 - 100  # the flood is bounded per gateway
        assert len(kept) == 100  # (the session's broker also holds other tests' records: count this gateway's)
    finally:
        retained(pub, [(consent_topic(flood, f"c{i}"), b"") for i in range(1500)])
        pub.close()


def test_invented_devices_and_subjects_are_capped_per_gateway(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    pub = Publisher(mosquitto)
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    cap = 40
    with Ingester(settings(mosquitto, influxdb, influx_db, max_devices_per_gateway=cap)) as ing:
        # 10 messages of 10 invented devices each: the first four fit under the cap, the rest are refused
        for seq in range(10):
            doc = batch_doc(gw, seq=seq, n=10)
            for i, item in enumerate(doc["items"]):
                item["device"] = f"fake-{seq}-{i}"
            pub.publish(agg_topic(gw, "energy"), orjson.dumps(doc))
        assert wait_for(lambda: ing.stats()["received"] == 10)
        assert ing.wait_idle()
        st = ing.stats()
    pub.close()
    assert st["rejected"] == {"gateway_cap_devices": 6}
    assert st["written"] == cap
    assert _power_series(influxdb, influx_db) == cap  # InfluxDB's cardinality grew by the cap, not by the flood


def test_a_pseudonym_first_seen_from_another_gateway_is_refused_and_never_overwrites(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    pub = Publisher(mosquitto)
    victim, attacker = new_gw(), new_gw()
    pub.publish(*consent(victim, subject="hh-victim"), retain=True)
    pub.publish(*consent(attacker, subject="hh-victim"), retain=True)  # names the victim's (visible) pseudonym
    with Ingester(settings(mosquitto, influxdb, influx_db)) as ing:
        pub.publish(agg_topic(victim, "energy"), orjson.dumps(batch_doc(victim, n=2, subject="hh-victim")))
        assert wait_for(lambda: ing.stats()["written"] == 2)
        forged = batch_doc(attacker, n=2, subject="hh-victim")
        for item in forged["items"]:
            item["mean"] = 99999.0
        pub.publish(agg_topic(attacker, "energy"), orjson.dumps(forged))
        assert wait_for(lambda: ing.stats()["received"] == 2)
        assert ing.wait_idle()
        st = ing.stats()
    # a fresh ingester has no memory of first sight: the forged points are written, but as the attacker's own
    # series (its household tag), so the victim's points keep their values
    with Ingester(settings(mosquitto, influxdb, influx_db)) as fresh:
        pub.publish(agg_topic(attacker, "energy"), orjson.dumps(forged))
        assert wait_for(lambda: fresh.stats()["written"] == 2)
    pub.close()
    assert st["rejected"] == {"foreign_subject": 1}
    scope = Scope()
    rows = influxdb.query_rows('SELECT "mean", "household" FROM "power" WHERE "subject" = \'hh-victim\'', db=influx_db)
    victims = [r for r in rows if r["household"] == scope.household(victim, "community-energy")]
    forged_rows = [r for r in rows if r["household"] == scope.household(attacker, "community-energy")]
    assert sorted(r["mean"] for r in victims) == [100.0, 101.0]
    assert sorted(r["mean"] for r in forged_rows) == [99999.0, 99999.0]


def test_audit_heads_going_back_are_flagged_and_anchored_back_to_the_gateway(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str
) -> None:
    pub = Publisher(mosquitto)
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    seen: list[AuditAnchor] = []
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: seen.append(AuditAnchor.model_validate_json(m.payload))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(anchor_topic(gw), qos=1)
    sub.loop_start()
    try:
        with Ingester(settings(mosquitto, influxdb, influx_db, anchor_interval=0.0)) as ing:
            pub.publish(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=1, audit_head=f"20:{HEAD_A}")))
            assert wait_for(lambda: any(a.n == 20 and a.conflicts == 0 for a in seen))
            # the log was cut back to entry 12 and goes on: the next batch names an older entry
            pub.publish(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=2, audit_head=f"13:{HEAD_B}")))
            assert wait_for(lambda: any(a.conflicts == 1 for a in seen))
            assert wait_for(lambda: ing.stats()["written"] == 6)
            st = ing.stats()
    finally:
        sub.loop_stop()
        sub.disconnect()
        pub.publish(anchor_topic(gw), b"", retain=True)
        pub.close()
    assert st["audit_conflicts"] == 1
    assert st["written"] == 6  # the data itself is consented: it is written, the conflict is flagged
    last = seen[-1]
    assert (last.gateway, last.n, last.hash, last.conflicts) == (gw, 20, HEAD_A, 1)


def test_influxdb_at_its_series_limit_is_held_not_acknowledged_and_caught_up_later(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A full InfluxDB refuses new series with a 400 "partial write": the data is valid, so the ingester must not
    acknowledge it (that would lose it after the gateway already got its PUBACK): it holds, counts, says so in
    its stats, and writes it when InfluxDB has room again."""
    pub = Publisher(mosquitto)
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    db = f"cap_{uuid.uuid4().hex[:8]}"
    client_id = f"ing-{uuid.uuid4().hex[:8]}"
    group = f"g{uuid.uuid4().hex[:8]}"
    small = InfluxDB(tmp_path / "influx", data_settings={"max-series-per-database": 4})
    kw: dict[str, Any] = {"client_id": client_id, "group": group, "retry_max": 0.2, "session_expiry": 600}
    with small:
        small.query(f'CREATE DATABASE "{db}"')
        ing = Ingester(settings(mosquitto, small, db, **kw))
        ing.start()
        try:
            pub.publish(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, n=8)))  # 8 new series > 4
            assert wait_for(lambda: ing.stats()["capacity_errors"] >= 2)
            st = ing.stats()
            assert st["capacity_blocked"] and "max-series-per-database" in st["capacity_blocked"]
            assert st["healthy"] is False
            assert st["written"] == 0 and st["rejected_total"] == 0
        finally:
            ing.stop(timeout=2)
    # more room (an operator raised the limit): the same ingester identity gets the unacknowledged message again
    roomy = InfluxDB(tmp_path / "influx", small.http_port, data_settings={"max-series-per-database": 1000})
    with roomy, Ingester(settings(mosquitto, roomy, db, **kw)) as again:
        assert wait_for(lambda: again.stats()["written"] == 8)
        rows = roomy.query_rows('SELECT count("last") FROM "power"', db=db)
        assert sum(int(r["count"]) for r in rows) == 8
    pub.publish(consent_topic(gw, "c1"), b"", retain=True)
    pub.close()

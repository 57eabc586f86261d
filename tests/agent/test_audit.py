"""The household's log tells the truth (issues 14 and 22): queued, sent (acknowledged by the broker) and dropped are
different facts; erasure receipts are believed only when they are about this gateway's withdrawn consent and say
nothing remains; deleting the newest entries is detected, by the gateway's own counters and by the cloud's anchor;
the database is readable by its owner only.

Receipts and anchors travel through a real Mosquitto to a running publisher, as they would from the cloud.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from typer.testing import CliRunner

from edge_agent import audit, consent
from edge_agent.config import AgentConfig
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from edge_agent.publisher import Publisher
from kyojo.cli import app
from kyojo.contract.vocab import reading
from kyojo.contract.wire import AuditAnchor, ErasureReceipt, anchor_topic, receipt_topic
from kyojo.keys import load_keys
from provisioning.local import Mosquitto
from tests.agentkit import agent_config
from tests.kit import wait_for

T0 = 1_717_200_000.0
runner = CliRunner()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=UTC)


def kinds(conn: object) -> list[str]:
    return [e.kind for e in audit.entries(conn)]  # type: ignore[arg-type]


def of_kind(conn: object, kind: str) -> list[audit.Entry]:
    return [e for e in audit.entries(conn) if e.kind == kind]  # type: ignore[arg-type]


def named_seqs(entries: list[audit.Entry]) -> list[int]:
    return [r["seq"] for e in entries for r in e.body["releases"]]


def toml(tmp_path: Path, gateway: str, data_dir: Path, port: int | None = None) -> Path:
    path = tmp_path / "agent.toml"
    text = f'[gateway]\nid = "{gateway}"\ndata_dir = "{data_dir}"\n'
    if port is not None:
        text += f"[mqtt]\nport = {port}\n"
    path.write_text(text, encoding="utf-8")
    return path


def kyojo(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


class Cloud:
    """Stands in for the cloud's side of the downlink: publishes retained QoS 1 messages, like the eraser."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: str | bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cloud(mosquitto: Mosquitto) -> Iterator[Cloud]:
    c = Cloud(mosquitto.port)
    yield c
    c.close()


def running_publisher(cfg: AgentConfig) -> Publisher:
    """A started publisher, with a subscriber standing for the cloud on the gateway's topics (a message nobody
    subscribed to is answered 0x10 and stays queued); ``pub.stop()`` also closes the subscriber."""
    from tests.agentkit import Collector

    cloud = Collector(cfg.mqtt.port, f"kyojo/v1/{cfg.gateway.id}/#", client_id=f"cloud-{cfg.gateway.id}")
    pub = Publisher(cfg)
    pub.start()
    wait_for(lambda: pub.stats.connected)
    stop = pub.stop

    def stop_both(timeout: float = 10.0) -> None:
        stop(timeout)
        cloud.close()

    pub.stop = stop_both  # type: ignore[method-assign]
    return pub


# -- B: queued, sent, dropped -----------------------------------------------------------------------------------
def overflowing(tmp_path: Path, gateway: str = "gw-1") -> Pipeline:
    cfg = AgentConfig.model_validate(
        {
            "gateway": {"id": gateway, "data_dir": str(tmp_path)},
            "outbox": {"max_messages": 10},
            "aggregation": {"max_items_per_message": 1},
        }
    )
    return Pipeline(connect(cfg.db_path), cfg)


def test_outbox_overflow_logs_every_dropped_release(tmp_path: Path) -> None:
    p = overflowing(tmp_path)
    c = p.consents.grant("community-energy", "home", now=at(0))
    p.store(reading("plug", "home", "power", 100, T0 + i) for i in range(1200))
    p.close_windows(T0 + 1300)
    released = [e.body["seq"] for e in of_kind(p.conn, "release")]
    queued = [s for (s,) in p.conn.execute("SELECT seq FROM outbox WHERE retain = 0 ORDER BY seq")]
    drops = of_kind(p.conn, "release_dropped")
    dropped = named_seqs(drops)
    assert len(released) == 20 and len(queued) == 9
    assert dropped == released[:11]  # exactly the oldest ones, each named once
    assert sorted(dropped + queued) == released  # every queued release is still queued or logged as dropped
    body = drops[0].body
    assert (body["reason"], body["consent"], body["purpose"]) == ("outbox_full", c.id, "community-energy")
    assert {r["category"] for r in body["releases"]} == {"energy"}
    assert body["items"] == sum(r["items"] for r in body["releases"]) == 11
    assert p.stats.outbox_dropped == len(dropped)
    assert audit.verify(p.conn).ok


def test_withdrawal_and_expiry_log_which_queued_releases_they_dropped(tmp_path: Path) -> None:
    p = overflowing(tmp_path)
    home = p.consents.grant("community-energy", "home", now=at(0))
    p1 = p.consents.grant("preventive-care", "p1", now=at(0), expires_at=at(200))
    p.store(reading("plug", "home", "power", 100, T0 + i) for i in range(150))
    p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(150))
    p.close_windows(T0 + 130)
    energy = [e.body["seq"] for e in of_kind(p.conn, "release") if e.body["consent"] == home.id]
    health = [e.body["seq"] for e in of_kind(p.conn, "release") if e.body["consent"] == p1.id]
    assert len(energy) == 2 and len(health) == 2
    assert p.consents.withdraw(home.id, now=at(140)) == 2
    p.close_windows(T0 + 300)  # p1's consent expires at 200: its queued releases go too
    drops = {e.body["reason"]: e.body for e in of_kind(p.conn, "release_dropped")}
    assert [r["seq"] for r in drops["consent_withdrawn"]["releases"]] == energy
    assert drops["consent_withdrawn"]["consent"] == home.id
    assert [r["seq"] for r in drops["consent_expired"]["releases"]] == health
    assert drops["consent_expired"]["purpose"] == "preventive-care"
    assert p.conn.execute("SELECT count(*) FROM outbox WHERE retain = 0").fetchone()[0] == 0


@pytest.mark.broker
def test_broker_acknowledgement_is_logged_with_the_delete(tmp_path: Path, mosquitto: Mosquitto) -> None:
    gw = f"h2-ack-{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=gw, aggregation={"max_items_per_message": 1})
    p = Pipeline(connect(cfg.db_path), cfg)
    c = p.consents.grant("preventive-care", "p1", now=at(0))
    p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(300))
    p.close_windows(T0 + 400)
    released = [e.body["seq"] for e in of_kind(p.conn, "release")]
    assert len(released) == 5
    assert of_kind(p.conn, "release_acked") == []  # queued is not sent
    pub = running_publisher(cfg)
    try:
        wait_for(lambda: p.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0)
    finally:
        pub.stop()
    acks = of_kind(p.conn, "release_acked")
    assert sorted(named_seqs(acks)) == released  # each release acknowledged once; the consent record is no release
    assert {(e.body["consent"], e.body["purpose"]) for e in acks} == {(c.id, "preventive-care")}
    assert sum(e.body["items"] for e in acks) == pub.stats.aggregates_sent == 5
    assert audit.verify(p.conn).ok
    path = toml(tmp_path, gw, cfg.gateway.data_dir)
    code, shown = kyojo("audit", "show", "-c", str(path), "--lang", "en")
    assert code == 0
    assert shown.count("queued to send 1 summaries of health data for 'Preventive-care alerts'") == 5
    assert "sent (the broker acknowledged it)" in shown and " UTC " in shown
    code, shown = kyojo("audit", "show", "-c", str(path), "--lang", "ja")
    assert "送信待ちに入れました" in shown and "送信しました（ブローカーが受信を確認）" in shown
    # one language throughout (issue 22 item 5): the category, the purpose and the times in Japanese, JST said so
    assert shown.count("健康データの要約") == 5 and " JST " in shown
    assert not any(w in shown for w in ("health", "UTC", "Preventive", "gave consent"))


@pytest.mark.broker
def test_refused_release_is_logged_as_not_sent(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite kyojo/v1/gw-r/status\ntopic readwrite kyojo/v1/gw-r/consent/#\n")
    with Mosquitto(tmp_path / "mqtt", extra_conf=f"acl_file {acl}\n") as broker:
        cfg = agent_config(tmp_path / "gw", broker.port, gateway="gw-r")
        p = Pipeline(connect(cfg.db_path), cfg)
        p.consents.grant("preventive-care", "p1", now=at(0))
        p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(100))
        p.close_windows(T0 + 200)
        pub = running_publisher(cfg)
        try:
            wait_for(lambda: pub.stats.refused >= 1 and pub.stats.messages_sent >= 1)
        finally:
            pub.stop()
    (refused,) = of_kind(p.conn, "release_refused")
    assert named_seqs([refused]) == [e.body["seq"] for e in of_kind(p.conn, "release")]
    assert "authori" in refused.body["reason"].lower()
    assert of_kind(p.conn, "release_acked") == []  # the consent record got through, but it is no release
    assert "not sent (the broker refused it" in audit.describe(refused)


# -- A: erasure receipts are checked ----------------------------------------------------------------------------
@pytest.mark.broker
def test_forged_receipts_are_not_believed(tmp_path: Path, mosquitto: Mosquitto, cloud: Cloud) -> None:
    gw = f"h2-rcpt-{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=gw)
    conn = connect(cfg.db_path)
    store = consent.open_store(cfg, conn)
    keys = load_keys(cfg.gateway.data_dir)
    p1 = store.grant("preventive-care", "p1", now=at(0))
    p2 = store.grant("preventive-care", "p2", now=at(0))
    store.withdraw(p1.id, now=at(60))
    ps1, ps2 = keys.pseudonym("preventive-care", "p1"), keys.pseudonym("preventive-care", "p2")

    def receipt(c: consent.Consent, **over: object) -> str:
        doc: dict[str, object] = {
            "gateway": gw,
            "consent": c.id,
            "subject": keys.pseudonym(c.purpose, c.subject),
            "purpose": c.purpose,
            "points_erased": 120,
            "remaining": 0,
            "erased_at": at(70).isoformat(),
            "store": "influxdb:kyojo",
        }
        return ErasureReceipt.model_validate({**doc, **over}).model_dump_json()

    pub = running_publisher(cfg)
    try:
        # retained: reaches the publisher whenever its subscription is in place; after it, the subscription is live
        cloud.send(receipt_topic(gw, "c-000000000000"), b"not json")
        wait_for(lambda: pub.stats.receipts_refused.get("invalid") == 1)
        forged = {
            "subject_mismatch": (p1, receipt(p1, subject=ps2)),  # erased somebody else
            "consent_active": (p2, receipt(p2)),  # p2 never withdrew
            "purpose_mismatch": (p1, receipt(p1, purpose="community-energy")),
            "topic_mismatch": (p2, receipt(p1)),  # p1's receipt on p2's topic
            "wrong_gateway": (p1, receipt(p1, gateway="other-gw")),
        }
        for target, payload in forged.values():
            cloud.send(receipt_topic(gw, target.id), payload)
        cloud.send(receipt_topic(gw, "c-0123456789ab"), receipt(p1).replace(p1.id, "c-0123456789ab"))
        cloud.send(receipt_topic(gw, p1.id), receipt(p1, remaining=5, points_erased=115))  # admits data remains
        wait_for(lambda: pub.stats.receipts_incomplete == 1)
        wait_for(lambda: sum(pub.stats.receipts_refused.values()) == 1 + len(forged) + 1 + 1)
        assert pub.stats.receipts == 0
        assert {cause: pub.stats.receipts_refused.get(cause) for cause in forged} == dict.fromkeys(forged, 1)
        assert pub.stats.receipts_refused["unknown_consent"] == 1
        assert pub.stats.receipts_refused["data_remains"] == 1
        assert "erasure_receipt" not in kinds(conn)  # nothing was recorded as confirmed
        assert all(e["event"] != "erased" for c in (p1, p2) for e in consent.events(conn, c.id))
        (incomplete,) = of_kind(conn, "erasure_incomplete")
        assert (incomplete.body["consent"], incomplete.body["receipt"]["remaining"]) == (p1.id, 5)
        assert "5 data point(s) remain after erasure" in audit.describe(incomplete)
        assert "5 件のデータが残っている" in audit.describe(incomplete, "ja")

        cloud.send(receipt_topic(gw, p1.id), receipt(p1))  # the real one: withdrawn, p1's pseudonym, nothing left
        wait_for(lambda: pub.stats.receipts == 1)
        cloud.send(receipt_topic(gw, p1.id), receipt(p1))  # an eraser restart re-announces it
        wait_for(lambda: pub.stats.receipts_known == 1)
    finally:
        pub.stop()
    (confirmed,) = of_kind(conn, "erasure_receipt")
    assert (confirmed.body["consent"], confirmed.body["receipt"]["subject"]) == (p1.id, ps1)
    assert [e["event"] for e in consent.events(conn, p1.id)] == ["given", "withdrawn", "erasure_incomplete", "erased"]
    assert [e["event"] for e in consent.events(conn, p2.id)] == ["given"]
    assert audit.verify(conn).ok


# -- C: the newest entries cannot vanish unnoticed --------------------------------------------------------------
def test_deleting_the_newest_entries_is_detected(tmp_path: Path) -> None:
    p = overflowing(tmp_path)
    for i, who in enumerate(("p1", "p2", "p3", "p4")):
        p.consents.grant("preventive-care", who, now=at(i))
    path = toml(tmp_path, "gw-1", tmp_path)
    assert kyojo("audit", "verify", "-c", str(path))[0] == 0
    p.conn.execute("DELETE FROM audit WHERE n >= 3")  # the chain that is left is still a valid chain
    v = audit.verify(p.conn)
    assert (v.ok, v.first_bad, v.entries) == (False, 3, 2)
    assert "wrote entries up to 4" in v.reason and "deleted" in v.reason
    code, out = kyojo("audit", "verify", "-c", str(path))
    assert code == 1
    assert "TAMPERED: entry 3" in out
    # also winding the entry counter back: the message sequence numbers the log names still give it away
    p.conn.execute("UPDATE meta SET value = 2 WHERE key = 'audit_n'")
    v = audit.verify(p.conn)
    assert not v.ok and "seq 4" in v.reason
    # the gateway goes on logging: the next entry does not reuse the deleted numbers, so the gap stays visible
    p.conn.execute("UPDATE meta SET value = 4 WHERE key = 'audit_n'")
    p.consents.grant("preventive-care", "p5", now=at(9))
    assert [e.n for e in audit.entries(p.conn)] == [1, 2, 5]
    v = audit.verify(p.conn)
    assert (v.ok, v.first_bad) == (False, 5) and "missing" in v.reason


def test_counters_catch_up_with_an_older_version_but_not_with_a_deletion(tmp_path: Path) -> None:
    """After a release rollback an older version appends without moving the counters (and may queue a consent
    record whose seq no entry names): the next open catches up instead of crying wolf."""
    p = overflowing(tmp_path)
    p.consents.grant("preventive-care", "p1", now=at(0))
    n, prev = audit.head(p.conn)
    body = {"consent": "c-1", "subject": "p2", "purpose": "preventive-care", "categories": ["health"], "by": "x"}
    p.conn.execute(  # what the older version wrote: a valid entry, no counters, a seq named nowhere
        "INSERT INTO audit VALUES(?, ?, ?, ?, ?, ?)",
        (n + 1, 5, "consent_given", json.dumps(body), prev, audit.entry_hash(prev, n + 1, 5, "consent_given", body)),
    )
    p.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
    p.conn.close()
    conn = connect(p.config.db_path)
    assert audit.verify(conn).ok
    conn.execute("DELETE FROM audit WHERE n = 2")
    conn.close()
    conn = connect(p.config.db_path)  # reopening does not forgive a deletion
    v = audit.verify(conn)
    assert (v.ok, v.first_bad) == (False, 2) and "deleted" in v.reason


@pytest.mark.broker
def test_verify_checks_the_clouds_anchor(tmp_path: Path, mosquitto: Mosquitto, cloud: Cloud) -> None:
    gw = f"h2-anchor-{uuid.uuid4().hex[:6]}"
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=gw)
    conn = connect(cfg.db_path)
    store = consent.open_store(cfg, conn)
    for i, who in enumerate(("p1", "p2", "p3", "p4")):
        store.grant("preventive-care", who, now=at(i))
    path = toml(tmp_path, gw, cfg.gateway.data_dir)
    hashes = {e.n: e.hash for e in audit.entries(conn)}
    sent = [0]

    def anchor(n: int, digest: str, conflicts: int = 0, gateway: str = gw) -> None:
        sent[0] += 1
        doc = AuditAnchor(gateway=gateway, n=n, hash=digest, seen_at=at(100 + sent[0]), conflicts=conflicts)
        cloud.send(anchor_topic(gw), doc.model_dump_json())

    def kept() -> tuple[int, int, str] | None:
        a = audit.load_anchor(conn)
        return None if a is None else (a.n, a.conflicts, a.hash)

    code, out = kyojo("audit", "verify", "-c", str(path), "--json")
    assert code == 0 and json.loads(out)["anchor"] is None
    pub = running_publisher(cfg)
    try:
        anchor(3, hashes[3])
        wait_for(lambda: kept() == (3, 0, hashes[3]))
        code, out = kyojo("audit", "verify", "-c", str(path), "--json")
        doc = json.loads(out)
        assert code == 0 and doc["ok"]
        assert (doc["anchor"]["n"], doc["anchor"]["hash"], doc["anchor"]["matches"]) == (3, hashes[3], True)
        code, out = kyojo("audit", "verify", "-c", str(path))
        assert code == 0 and "matches the cloud's anchor: entry 3" in out

        anchor(4, hashes[4], gateway="other-gw")  # not ours: ignored
        wait_for(lambda: pub.stats.anchors_refused.get("wrong_gateway") == 1)
        assert kept() == (3, 0, hashes[3])

        # the newest entries deleted AND the gateway's own counters wound back: only the cloud still knows
        snapshot = conn.execute("SELECT * FROM audit WHERE n = 4").fetchone()
        conn.execute("DELETE FROM audit WHERE n = 4")
        conn.execute("UPDATE meta SET value = 3 WHERE key IN ('audit_n', 'audit_seq', 'seq')")
        anchor(4, hashes[4])
        wait_for(lambda: kept() == (4, 0, hashes[4]))
        code, out = kyojo("audit", "verify", "-c", str(path), "--json")
        doc = json.loads(out)
        assert code == 1 and not doc["ok"] and doc["anchor"]["matches"] is False
        assert "the cloud holds entry 4" in doc["reason"] and "log ends at entry 3" in doc["reason"]
        assert "the cloud holds entry 4" in pub.stats.anchor_problem  # the agent said so as soon as it heard
        conn.execute("INSERT INTO audit VALUES(?, ?, ?, ?, ?, ?)", snapshot)  # put everything back
        conn.execute("UPDATE meta SET value = 4 WHERE key IN ('audit_n', 'audit_seq', 'seq')")
        assert audit.verify(conn).ok

        anchor(4, "f" * 64)  # the cloud saw another entry 4: this log was rewritten after it was anchored
        wait_for(lambda: kept() == (4, 0, "f" * 64))
        v = audit.verify(conn)
        assert (v.ok, v.first_bad) == (False, 4) and "rewritten" in v.reason

        anchor(4, hashes[4], conflicts=2)  # the cloud saw this gateway go back or change twice
        wait_for(lambda: kept() == (4, 2, hashes[4]))
        code, out = kyojo("audit", "verify", "-c", str(path))
        assert code == 1 and "go back or change 2 time(s)" in out
    finally:
        pub.stop()


# -- D: the database is private ---------------------------------------------------------------------------------
def test_database_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: files are world readable unless created otherwise
    try:
        cfg = AgentConfig.model_validate({"gateway": {"id": "gw-1", "data_dir": str(tmp_path / "data")}})
        p = Pipeline(connect(cfg.db_path), cfg)
        p.consents.grant("preventive-care", "p1", now=at(0))
        p.store([reading("hr", "p1", "heart_rate", 70, T0 + 1)])
        files = [cfg.db_path, cfg.db_path.with_name(cfg.db_path.name + "-wal")]
        files.append(cfg.db_path.with_name(cfg.db_path.name + "-shm"))
        assert all(f.exists() for f in files)
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        p.conn.close()
        # a database an older version left world-readable is tightened when it is opened
        cfg.db_path.chmod(0o644)
        connect(cfg.db_path).close()
        assert stat.S_IMODE(cfg.db_path.stat().st_mode) == 0o600
    finally:
        os.umask(old)

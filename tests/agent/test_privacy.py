"""Issue 7 on the gateway: signed records, catalog versions, pseudonyms, the tamper-evident audit log."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent import audit, consent
from edge_agent.config import AgentConfig
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from kyojo.cli import app
from kyojo.contract.vocab import Category, reading
from kyojo.contract.wire import decode_batch, parse_audit_head
from kyojo.keys import load_keys, verify_signature

T0 = 1_717_200_000.0
runner = CliRunner()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=UTC)


@pytest.fixture
def gw(tmp_path: Path) -> tuple[Path, Pipeline]:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-7"\ndata_dir = "data"\n', encoding="utf-8")
    cfg = AgentConfig.model_validate({"gateway": {"id": "home-7", "data_dir": str(tmp_path / "data")}})
    return path, Pipeline(connect(cfg.db_path), cfg)


def released_batches(p: Pipeline) -> list[object]:
    return [decode_batch(t, bytes(b)) for t, b in p.conn.execute("SELECT topic, payload FROM outbox WHERE retain = 0")]


def test_record_is_signed_complete_and_verifiable(gw: tuple[Path, Pipeline]) -> None:
    path, p = gw
    c = p.consents.grant("preventive-care", "p1", now=at(0), lang="ja")
    signed = consent.signed_record(p.conn, c.id)
    r = signed["record"]
    for field in (
        "record_id",
        "subject",
        "controller",
        "purpose",
        "categories",
        "granularity_s",
        "recipients",
        "storage_location",
        "retention_days",
        "jurisdiction",
        "notice",
        "withdrawal_method",
        "events",
    ):
        assert r[field], field
    assert r["notice"]["language"] == "ja"
    assert [e["event"] for e in r["events"]] == ["given"]
    keys = p.keys
    assert verify_signature(keys.public_key_b64(), consent.canonical(r), signed["signature"])
    forged = {**r, "retention_days": 99999}
    assert not verify_signature(keys.public_key_b64(), consent.canonical(forged), signed["signature"])
    out = runner.invoke(app, ["consent", "show", c.id, "-c", str(path), "--lang", "en"]).output
    assert "City Preventive Care Office" in out
    assert "Signature: OK" in out
    out = runner.invoke(app, ["consent", "show", c.id, "-c", str(path), "--lang", "ja"]).output
    assert "予防医療アラート" in out
    assert "署名: OK" in out


def test_cloud_sees_only_pseudonyms_unlinkable_across_purposes(gw: tuple[Path, Pipeline]) -> None:
    _, p = gw
    hc = p.consents.grant("preventive-care", "home-7", now=at(0))
    ec = p.consents.grant("community-energy", "home-7", now=at(0))
    p.store(
        [reading("home-7-hr", "home-7", "heart_rate", 70, T0 + 1), reading("home-7-tv", "home-7", "power", 90, T0 + 1)]
    )
    p.close_windows(T0 + 100)
    payloads = b"".join(bytes(b) for (b,) in p.conn.execute("SELECT payload FROM outbox"))
    assert b"home-7-" not in payloads  # no device id, no household id inside any payload
    assert b'"subject":"home-7"' not in payloads
    subjects = {b.items[0].subject for b in released_batches(p)}  # type: ignore[attr-defined]
    assert len(subjects) == 2  # the same household, two purposes, two unrelated ids
    records = {
        json.loads(bytes(b))["id"]: json.loads(bytes(b))["subject"]
        for (b,) in p.conn.execute("SELECT payload FROM outbox WHERE retain = 1")
    }
    assert records[hc.id] == p.keys.pseudonym("preventive-care", "home-7")
    assert records[ec.id] == p.keys.pseudonym("community-energy", "home-7")
    other = load_keys(p.config.gateway.data_dir.parent / "other-gw")
    assert other.pseudonym("preventive-care", "home-7") != records[hc.id]  # keyed per gateway


def test_catalog_narrowing_applies_widening_asks_again(gw: tuple[Path, Pipeline]) -> None:
    _, p = gw
    c = p.consents.grant("community-energy", "home-7", now=at(0))
    base = consent.default_catalog()
    energy = base.purposes["community-energy"]
    wider = replace(
        base,
        version=2,
        purposes={**base.purposes, "community-energy": replace(energy, categories=energy.categories | {Category.EV})},
    )
    narrower = replace(
        base, version=3, purposes={**base.purposes, "community-energy": replace(energy, categories=frozenset())}
    )
    assert c.needs_renewal(wider)
    assert c.effective_categories(wider) == {Category.ENERGY}  # nothing new flows before renewal
    assert not c.needs_renewal(narrower)
    assert c.effective_categories(narrower) == frozenset()  # narrowing applies without asking
    renewed = consent.ConsentStore(p.conn, "home-7", p.keys, wider).grant("community-energy", "home-7", now=at(5))
    assert renewed.id == c.id
    assert renewed.categories == {Category.ENERGY, Category.EV}
    assert [e["event"] for e in consent.events(p.conn, c.id)] == ["given", "renewed"]
    again = consent.ConsentStore(p.conn, "home-7", p.keys, wider).grant("community-energy", "home-7", now=at(9))
    assert again == renewed  # once renewed, asking again changes nothing


def test_purpose_granularity_is_enforced(tmp_path: Path) -> None:
    cfg = AgentConfig.model_validate(
        {"gateway": {"id": "gw", "data_dir": str(tmp_path)}, "aggregation": {"windows": {"health": 10}}}
    )
    p = Pipeline(connect(cfg.db_path), cfg)
    p.consents.grant("preventive-care", "p1", now=at(0))  # the purpose allows 60 s summaries at the finest
    p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(100))
    p.close_windows(T0 + 200)
    assert released_batches(p) == []
    assert p.stats.denied > 0


def test_audit_log_records_releases_and_detects_tampering(gw: tuple[Path, Pipeline]) -> None:
    path, p = gw
    c = p.consents.grant("preventive-care", "p1", now=at(0))
    p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(300))
    p.close_windows(T0 + 130)
    p.close_windows(T0 + 400)
    p.consents.withdraw(c.id, now=at(500))
    kinds = [e.kind for e in audit.entries(p.conn)]
    # nothing was acknowledged by a broker: both releases were queued, then dropped by the withdrawal
    assert kinds == ["consent_given", "release", "release", "consent_withdrawn", "release_dropped"]
    released = [e.body["seq"] for e in audit.entries(p.conn) if e.kind == "release"]
    dropped = next(e for e in audit.entries(p.conn) if e.kind == "release_dropped").body
    assert [r["seq"] for r in dropped["releases"]] == released
    assert (dropped["reason"], dropped["consent"], dropped["purpose"]) == ("consent_withdrawn", c.id, "preventive-care")
    rel = next(e for e in audit.entries(p.conn) if e.kind == "release")
    assert rel.body["items"] == 2
    assert rel.body["purpose"] == "preventive-care"
    assert len(rel.body["sha256"]) == 64
    assert audit.verify(p.conn).ok
    result = runner.invoke(app, ["audit", "verify", "-c", str(path)])
    assert result.exit_code == 0
    assert "ok: 5 entries" in result.output
    shown = runner.invoke(app, ["audit", "show", "-c", str(path), "--lang", "en"]).output
    assert "queued to send 2 summaries of health data for 'Preventive-care alerts'" in shown
    assert "dropped without sending (consent was withdrawn): 2 message(s)" in shown
    assert " sent " not in shown  # queued is not sent: no broker acknowledged anything
    exported = json.loads(runner.invoke(app, ["audit", "export", "-c", str(path)]).output)
    assert exported["verify"]["ok"]
    assert len(exported["entries"]) == 5

    conn = p.conn
    conn.execute("UPDATE audit SET body = replace(body, '\"items\": 2', '\"items\": 1') WHERE n = 2")  # edit
    v = audit.verify(conn)
    assert (v.ok, v.first_bad) == (False, 2)
    assert "edited" in v.reason
    result = runner.invoke(app, ["audit", "verify", "-c", str(path)])
    assert result.exit_code == 1


def test_audit_detects_deletion_and_reordering(gw: tuple[Path, Pipeline]) -> None:
    _, p = gw
    for i, who in enumerate(("p1", "p2", "p3", "p4")):
        p.consents.grant("preventive-care", who, now=at(i))
    conn = p.conn
    snapshot = conn.execute("SELECT n, at, kind, body, prev, hash FROM audit ORDER BY n").fetchall()
    conn.execute("DELETE FROM audit WHERE n = 2")
    v = audit.verify(conn)
    assert (v.ok, v.first_bad) == (False, 3)
    assert "missing" in v.reason
    conn.execute("DELETE FROM audit")
    conn.executemany("INSERT INTO audit VALUES(?, ?, ?, ?, ?, ?)", snapshot)
    assert audit.verify(conn).ok
    # swap the contents of entries 2 and 3 (keeping their numbers): a reordering
    two, three = snapshot[1], snapshot[2]
    conn.execute("UPDATE audit SET at=?, kind=?, body=?, prev=?, hash=? WHERE n = 2", three[1:])
    conn.execute("UPDATE audit SET at=?, kind=?, body=?, prev=?, hash=? WHERE n = 3", two[1:])
    v = audit.verify(conn)
    assert (v.ok, v.first_bad) == (False, 2)


def test_batches_carry_the_audit_head(gw: tuple[Path, Pipeline]) -> None:
    _, p = gw
    p.consents.grant("preventive-care", "p1", now=at(0))
    p.store([reading("hr", "p1", "heart_rate", 70, T0 + 1)])
    p.close_windows(T0 + 100)
    (batch,) = released_batches(p)
    given = next(audit.entries(p.conn))
    assert batch.audit_head == f"{given.n}:{given.hash}"  # type: ignore[attr-defined]
    assert parse_audit_head(batch.audit_head) == (1, given.hash)  # type: ignore[attr-defined]

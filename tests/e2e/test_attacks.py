"""Attacks by one legitimately enrolled, hostile gateway — the evidence behind "What Kyojo promises a household".

Every test runs on the deployed configuration: a real Mosquitto rendered by the production renderer (mTLS,
dynamic-security roles, the secret ``$share`` group; tests/citykit.py), a real InfluxDB, the real ingester,
eraser and rollup with their own certificates, and a real gateway agent as the victim (``home-victim``, a
household with a heart-rate strap under preventive care and a metered home under community energy). The attacker
(``home-attacker``) is enrolled like any gateway, holds its own certificate and signing key, and publishes
whatever it likes on the wire. After each attack the victim's data, the rollup and both audit logs are checked.

| finding (issue 14) | test |
|---|---|
| 1 overwrite / erase another household | test_1_a_gateway_cannot_overwrite_or_erase_another_households_data |
| 2 k-anonymity by invented subjects | test_2_invented_subjects_do_not_make_one_gateway_into_many_households |
| 3 erasure over mTLS, as deployed | test_3_withdrawal_erasure_receipt_runs_over_mtls_as_the_readme_deploys_it |
| 4 receipts believed blindly | test_4_receipts_come_only_from_the_eraser; tests/agent/test_audit.py (forged receipts) |
| 5 dropped messages logged as sent | test_5_outbox_overflow_is_in_the_households_log |
| 6 audit chain only checked against itself | test_6_a_truncated_log_is_caught_by_the_cloud_and_the_household |
| 6 consent signatures checked in the cloud | test_6_consent_records_must_carry_their_gateways_signature |
| 7 consent terms not enforced in the cloud | test_7_the_cloud_enforces_the_consents_terms |
| 7 a purpose's event kinds (issue 17) | test_7_a_purpose_carries_only_its_own_events |
| 8 resource floods | test_8_floods_of_consents_and_devices_stay_bounded; tests/ingest/test_ingest_trust.py (series) |
| 9 anyone joins the shared subscription | test_9_the_shared_subscription_cannot_be_joined |
| 10 LAN devices | tests/drivers/test_lan_trust.py, tests/drivers/test_ocpp_server.py (no city broker involved) |
| 11 InfluxQL from flags, ids | test_11_operator_flags_and_identifiers_cannot_smuggle_anything |
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import drivers.sim as sim
from cloud_ingest.config import IngestSettings, TrustError
from cloud_ingest.erasure import Eraser
from cloud_ingest.ingester import Ingester
from cloud_ingest.rollup import RollupConfig, run_rollup
from cloud_ingest.scope import Scope, new_key, parse_key
from drivers.clock import ScaledClock
from edge_agent import audit, consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from kyojo.contract.vocab import Category
from kyojo.contract.wire import (
    ConsentRecord,
    ConsentStatus,
    ErasureReceipt,
    agg_topic,
    consent_topic,
    event_topic,
    receipt_topic,
)
from kyojo.keys import GatewayKeys, load_keys
from provisioning import pki
from provisioning.local import InfluxDB
from tests.agentkit import agent_config, run_agent_in_thread
from tests.citykit import NOT_AUTHORIZED, City, CityClient, accepted
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

VICTIM = "home-victim"
ATTACKER = "home-attacker"
T0 = 1_717_189_200.0  # 2024-05-31T21:00:00Z, a simulated evening
SPEED = 600  # ten simulated minutes per second


def enroll_gateway(city: City, name: str) -> Path:
    """Enroll a gateway the way `kyojo provision gateway` does: its state dir is the agent's data dir, and the
    agent's consent-signing key rides in the CSR, so the CA registers it."""
    state = city.base / "ids" / name
    code = city.ca.enroll(name, pki.Role.GATEWAY)
    csr = pki.create_request(state, name, code, signing_key=load_keys(state).public_key_b64())
    pem = city.ca.sign_csr(csr.read_bytes(), expected_id=name)
    city.tls[name] = pki.install_certificate(state, pem, city.ca.cert_path.read_bytes()).parent
    city.roles[name] = pki.Role.GATEWAY
    return state


def signed(keys: GatewayKeys, **fields: Any) -> bytes:
    """A consent record as a gateway sends it, signed with ``keys`` (the attacker signs with its own key)."""
    rec = ConsentRecord(**fields)
    return rec.model_copy(update={"sig": keys.sign(rec.signing_bytes())}).model_dump_json().encode()


def item(metric: str, subject: str, device: str, start_ms: int, **values: float) -> dict[str, Any]:
    doc: dict[str, Any] = {"metric": metric, "subject": subject, "device": device, "start": start_ms}
    doc |= {"window_s": 60, "count": 60, "last": values.pop("last", 1.0)}
    return doc | values


def batch(gateway: str, consent_id: str, purpose: str, category: str, items: list[dict[str, Any]], seq: int) -> bytes:
    doc = {"v": 1, "gateway": gateway, "seq": seq, "sent": int(time.time() * 1000), "consent": consent_id}
    doc |= {"purpose": purpose, "category": category, "items": items}
    return orjson.dumps(doc)


class World:
    """The city for one test: broker, database, the cloud services' settings, the victim agent, the attacker."""

    def __init__(self, city: City, influxdb: InfluxDB, db: str, tmp: Path) -> None:
        self.city, self.influxdb, self.db, self.tmp = city, influxdb, db, tmp
        self.victim_dir = enroll_gateway(city, VICTIM)
        self.attacker_dir = enroll_gateway(city, ATTACKER)
        self.victim_keys = load_keys(self.victim_dir)
        self.attacker_keys = load_keys(self.attacker_dir)
        self.scope_key = new_key()
        self.scope = Scope(parse_key(self.scope_key))
        self.keys_file = city.ca.gateway_keys_path  # what `kyojo provision gateway-keys --out` hands the cloud
        self.broker = city.start_broker()
        self.closers: list[Callable[[], None]] = []
        self.agent: Agent | None = None
        self.clock = ScaledClock(T0, speed=SPEED)
        self.consents: dict[str, consent.Consent] = {}

    # -- cloud services ---------------------------------------------------------------------------------------
    def settings(self, name: str = "ingest-1", **kw: Any) -> IngestSettings:
        base = self.city.ingest_settings(name)
        base |= {"influx_url": self.influxdb.url, "influx_db": self.db, "scope_key": self.scope_key}
        base |= {"gateway_keys": self.keys_file, "batch_interval": timedelta(milliseconds=50), "session_expiry": 60}
        return IngestSettings(**(base | kw))

    def ingester(self, name: str = "ingest-1", **kw: Any) -> Ingester:
        ing = Ingester(self.settings(name, **kw))
        ing.start()
        self.closers.append(ing.stop)
        return ing

    def eraser(self, **kw: Any) -> Eraser:
        tls = self.city.tls["eraser-1"]
        cfg = self.settings(tls_cert=tls / pki.CERT_NAME, tls_key=tls / pki.KEY_NAME)
        er = Eraser(cfg, client_id="eraser-1", grace_s=kw.pop("grace_s", 1.0), **kw)
        er.start()
        self.closers.append(er.stop)
        return er

    # -- the victim: a real gateway agent ---------------------------------------------------------------------
    def start_victim(self, **extra: Any) -> Agent:
        cfg = agent_config(
            self.victim_dir, self.broker.port, gateway=VICTIM, mqtt=self.city.agent_mqtt(VICTIM), **extra
        )
        conn = connect(cfg.db_path)
        store = consent.open_store(cfg, conn)
        given = datetime.fromtimestamp(T0, tz=UTC)
        if not self.consents:
            self.consents["care"] = store.grant("preventive-care", "p1", now=given)
            self.consents["energy"] = store.grant("community-energy", VICTIM, now=given)
        conn.close()
        sims = [
            s
            for s in sim.household(VICTIM, 7, persons=("p1",))
            if s.device_id.endswith("-hr") or (s.subject == VICTIM and not s.device_id.endswith("-ev"))
        ]
        drivers = [sim.SimDriver(s, self.clock, tick_s=60, start=T0) for s in sims]
        self.victim_cfg = cfg
        _, stop, holder = run_agent_in_thread(lambda: Agent(cfg, clock=self.clock, drivers=drivers))
        self.agent = holder[0]
        self.stop_victim = stop
        self.closers.append(self.stop_victim_once)
        return self.agent

    def stop_victim_once(self) -> None:
        if self.agent is not None:
            self.stop_victim()
            self.agent = None

    def victim_conn(self) -> sqlite3.Connection:
        return connect(self.victim_cfg.db_path)

    # -- the attacker -----------------------------------------------------------------------------------------
    def attacker(self) -> CityClient:
        return self.city.client(ATTACKER)

    # -- what InfluxDB holds ----------------------------------------------------------------------------------
    def household(self, gateway: str, purpose: str) -> str:
        return self.scope.household(gateway, purpose)

    def points(self, measurement: str, where: str = "") -> list[dict[str, Any]]:
        q = f'SELECT * FROM "{measurement}"' + (f" WHERE {where}" if where else "")  # noqa: S608 - test literals
        return self.influxdb.query_rows(q, self.db)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


@pytest.fixture
def world(city: City, influxdb: InfluxDB, tmp_path: Path) -> Iterator[World]:
    db = f"attack_{uuid.uuid4().hex[:10]}"
    influxdb.query(f'CREATE DATABASE "{db}"')
    w = World(city, influxdb, db, tmp_path)
    try:
        yield w
    finally:
        w.close()


def victim_heart_rate(w: World) -> list[dict[str, Any]]:
    tag = w.household(VICTIM, "preventive-care")
    return w.points("heart_rate", f"\"household\" = '{tag}'")


# ------------------------------------------------------------------------------------------------------------
# 1. overwrite and erase another household's data
# ------------------------------------------------------------------------------------------------------------


def test_1_a_gateway_cannot_overwrite_or_erase_another_households_data(world: World) -> None:
    w = world
    ing = w.ingester()
    eraser = w.eraser()
    agent = w.start_victim()
    wait_for(lambda: len(victim_heart_rate(w)) >= 10, what="victim's heart-rate windows in InfluxDB")
    before = {r["time"]: r for r in victim_heart_rate(w)}
    subject = w.victim_keys.pseudonym("preventive-care", "p1")  # visible to anyone who reads a dashboard
    device = w.victim_keys.device_pseudonym("preventive-care", f"{VICTIM}-p1-hr")
    victim_consent = w.consents["care"].id

    evil = w.attacker()
    # its consent names the victim's pseudonym and even reuses the victim's consent id, on its own topic
    record = {
        "gateway": ATTACKER, "id": victim_consent, "subject": subject, "purpose": "preventive-care",
        "categories": ["health"], "status": ConsentStatus.ACTIVE, "given_at": datetime(2024, 1, 1, tzinfo=UTC),
    }  # fmt: skip
    assert evil.puback(consent_topic(ATTACKER, victim_consent), signed(w.attacker_keys, **record), retain=True) == 0
    # the victim's own tree is not the attacker's to write
    assert evil.puback(consent_topic(VICTIM, victim_consent), signed(w.attacker_keys, **record), retain=True) == (
        NOT_AUTHORIZED
    )
    forged = [item("heart_rate", subject, device, t, mean=250.0, min=250.0, max=250.0, last=250.0) for t in before]
    assert evil.puback(agg_topic(ATTACKER, "health"), batch(ATTACKER, victim_consent, "preventive-care", "health",
                                                            forged, 1)) == 0  # fmt: skip
    wait_for(lambda: ing.stats()["rejected"].get("foreign_subject", 0) == 1, what="the forgery refused")

    # then it withdraws "its" consent, hoping the eraser deletes the victim's data and tells it so
    # (one certificate is one connection: the broker takes the client id from the certificate)
    assert accepted(evil.suback(receipt_topic(ATTACKER, "+")))
    withdrawn = record | {"status": ConsentStatus.WITHDRAWN, "withdrawn_at": datetime.now(UTC)}
    assert evil.puback(consent_topic(ATTACKER, victim_consent), signed(w.attacker_keys, **withdrawn), retain=True) == 0
    got = evil.wait_messages(1, timeout=30)
    assert got, "the eraser answered the attacker"
    receipt = ErasureReceipt.model_validate_json(got[0][1])
    assert receipt.points_erased == 0  # the attacker's household tag holds nothing of the victim's

    after = {r["time"]: r for r in victim_heart_rate(w) if r["time"] in before}
    assert after == before  # every one of the victim's points, every field, untouched
    assert agent.publisher.stats.receipts == 0  # the victim was told nothing about an erasure that did not happen

    # the victim withdraws for real: the eraser is not fooled by the attacker's log entry under the same id
    conn = w.victim_conn()
    consent.open_store(w.victim_cfg, conn).withdraw(victim_consent, now=datetime.fromtimestamp(w.clock.now(), UTC))
    conn.close()
    wait_for(lambda: agent.publisher.stats.receipts == 1, what="the victim's receipt")
    assert victim_heart_rate(w) == []
    mine = eraser.erased[(VICTIM, victim_consent)]
    assert mine.points_erased >= len(before) and mine.remaining == 0
    conn = w.victim_conn()
    assert audit.verify(conn).ok
    assert [e.kind for e in audit.entries(conn)].count("erasure_receipt") == 1
    conn.close()


# ------------------------------------------------------------------------------------------------------------
# 2. k-anonymity by invented subjects
# ------------------------------------------------------------------------------------------------------------


def test_2_invented_subjects_do_not_make_one_gateway_into_many_households(world: World) -> None:
    w = world
    ing = w.ingester(max_subjects_per_gateway=16)
    w.start_victim()
    energy = w.household(VICTIM, "community-energy")
    wait_for(lambda: len(w.points("energy", f"\"household\" = '{energy}'")) >= 20, what="victim's energy windows")
    victim_rows = w.points("energy", f"\"household\" = '{energy}'")
    hour = min(r["time"] for r in victim_rows) // 3_600_000 * 3_600_000

    evil = w.attacker()
    for i in range(20):  # 14 would do; the last four hit the per-gateway subject cap
        sid = f"fake-{i:02d}"
        rec = {"gateway": ATTACKER, "id": f"ce-{i}", "subject": sid, "purpose": "community-energy",
               "categories": ["energy"], "status": ConsentStatus.ACTIVE,
               "given_at": datetime(2024, 1, 1, tzinfo=UTC)}  # fmt: skip
        assert evil.puback(consent_topic(ATTACKER, f"ce-{i}"), signed(w.attacker_keys, **rec), retain=True) == 0
        seq = i + 1
        items = [item("energy", sid, f"m-{i}", hour + k * 60_000, delta=10.0, last=10.0 * (k + 1)) for k in range(5)]
        assert evil.puback(agg_topic(ATTACKER, "energy"), batch(ATTACKER, f"ce-{i}", "community-energy", "energy",
                                                                items, seq)) == 0  # fmt: skip
    wait_for(lambda: ing.stats()["rejected"].get("gateway_cap_subjects", 0) == 4, what="the subject cap")

    def subjects() -> set[str]:
        return {r["subject"] for r in w.points("energy", f"time >= {hour}ms AND time < {hour + 3_600_000}ms")}

    # counted by subject, this hour (the victim and 16 invented subjects) would pass a k of 15 ...
    wait_for(lambda: len(subjects()) == 1 + 16, what="the attacker's 16 subjects written")
    cfg = RollupConfig(metric="energy", field="delta", purpose="community-energy", bucket_s=3600, k=15)
    from cloud_ingest.erasure import InfluxV1Admin

    admin = InfluxV1Admin(w.influxdb.url, w.db)
    [bucket] = run_rollup(admin, cfg, hour, hour + 3_600_000)
    assert (bucket.households, bucket.suppressed) == (2, "k_threshold")  # ... but it is two households
    assert w.points("community_energy") == []  # nothing released, nothing about the victim exposed
    # and with a k two households can meet, one gateway's 16 subjects still count once in the dominance rule
    two = RollupConfig(metric="energy", field="delta", purpose="community-energy", bucket_s=3600, k=2, max_share=0.9)
    [released] = run_rollup(admin, two, hour, hour + 3_600_000)
    assert released.households == 2 and released.suppressed is None


# ------------------------------------------------------------------------------------------------------------
# 3. withdrawal -> erasure -> receipt over mTLS, with the services started as the README deploys them
# ------------------------------------------------------------------------------------------------------------


def _service(w: World, args: list[str], config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYOJO_")}
    logf = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_ingest", *args, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=logf,
        env=env,
    )

    def stop() -> None:
        proc.terminate()
        proc.wait(20)
        assert proc.stdout is not None
        proc.stdout.close()
        logf.close()

    w.closers.append(stop)
    return proc


def _toml(path: Path, settings: dict[str, Any]) -> Path:
    lines = []
    for key, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {str(value)!r}".replace("'", '"'))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_3_withdrawal_erasure_receipt_runs_over_mtls_as_the_readme_deploys_it(world: World) -> None:
    w = world
    city, b = w.city, w.broker
    ing_tls, con_tls, er_tls = city.tls["ingest-1"], city.tls["ingest-1-consents"], city.tls["eraser-1"]
    common = {
        "broker_host": b.host, "broker_port": b.port, "tls_ca": str(ing_tls / pki.CA_NAME),
        "influx_url": w.influxdb.url, "influx_db": w.db, "scope_key": w.scope_key, "gateway_keys": str(w.keys_file),
    }  # fmt: skip
    ingest_toml = _toml(w.tmp / "ingest.toml", common | {
        "client_id": "ingest-1", "group": city.group,
        "tls_cert": str(ing_tls / pki.CERT_NAME), "tls_key": str(ing_tls / pki.KEY_NAME),
        "consent_tls_cert": str(con_tls / pki.CERT_NAME), "consent_tls_key": str(con_tls / pki.KEY_NAME),
    })  # fmt: skip
    eraser_toml = _toml(w.tmp / "eraser.toml", common | {
        "tls_cert": str(er_tls / pki.CERT_NAME), "tls_key": str(er_tls / pki.KEY_NAME),
    })  # fmt: skip
    ingester = _service(w, ["run", "--stats-interval", "0.5"], ingest_toml, w.tmp / "ingest.log")
    eraser = _service(w, ["erasure", "--grace", "1", "--stats-interval", "0.5"], eraser_toml, w.tmp / "eraser.log")
    for proc in (ingester, eraser):
        assert proc.stdout is not None
        first = orjson.loads(proc.stdout.readline())
        assert first.get("event") == "started" and first["connected"], first

    agent = w.start_victim()
    wait_for(lambda: len(victim_heart_rate(w)) >= 10, what="victim's data through the deployed ingester")
    conn = w.victim_conn()
    care = w.consents["care"].id
    consent.open_store(w.victim_cfg, conn).withdraw(care, now=datetime.fromtimestamp(w.clock.now(), UTC))
    conn.close()
    wait_for(lambda: agent.publisher.stats.receipts == 1, what="the receipt over mTLS")
    assert victim_heart_rate(w) == []
    energy = w.household(VICTIM, "community-energy")
    assert w.points("energy", f"\"household\" = '{energy}'")  # the other purpose is untouched
    conn = w.victim_conn()
    kinds = [e.kind for e in audit.entries(conn)]
    assert audit.verify(conn).ok and kinds.count("erasure_receipt") == 1
    conn.close()

    # an eraser whose identity the broker does not know fails loudly at start instead of looping on nothing
    lost = w.tmp / "lost.toml"
    _toml(
        lost,
        common | {"tls_cert": str(city.tls["gw-a"] / pki.CERT_NAME), "tls_key": str(city.tls["gw-a"] / pki.KEY_NAME)},
    )
    res = subprocess.run(
        [sys.executable, "-m", "cloud_ingest", "erasure", "--config", str(lost)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 1 and b"subscription refused" in res.stderr, res.stderr[-500:]
    # and a deployed ingester without a scope key, or with a guessable group, refuses to start at all
    bad = _toml(w.tmp / "bad.toml", {k: v for k, v in common.items() if k != "scope_key"} | {"group": "kyojo-ingest"})
    res = subprocess.run(
        [sys.executable, "-m", "cloud_ingest", "run", "--config", str(bad), "--tls-cert",
         str(ing_tls / pki.CERT_NAME), "--tls-key", str(ing_tls / pki.KEY_NAME)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and b"well known" in res.stderr and b"scope_key" in res.stderr


# ------------------------------------------------------------------------------------------------------------
# 4. receipts
# ------------------------------------------------------------------------------------------------------------


def test_4_receipts_come_only_from_the_eraser(world: World) -> None:
    w = world
    w.ingester()
    agent = w.start_victim()
    wait_for(lambda: len(victim_heart_rate(w)) >= 3, what="victim's data")
    care = w.consents["care"].id
    fake = ErasureReceipt(
        gateway=VICTIM, consent=care, subject=w.victim_keys.pseudonym("preventive-care", "p1"),
        purpose="preventive-care", points_erased=10, remaining=0, erased_at=datetime.now(UTC), store="influxdb:x",
    ).model_dump_json().encode()  # fmt: skip
    # neither another gateway nor an ingester may write a gateway's receipts; the broker refuses both
    assert w.attacker().puback(receipt_topic(VICTIM, care), fake, retain=True) == NOT_AUTHORIZED
    assert w.city.client("ingest-2").puback(receipt_topic(VICTIM, care), fake, retain=True) == NOT_AUTHORIZED
    # the eraser's identity may; for a consent that is still active the gateway refuses to believe it
    assert w.city.client("eraser-1", client_id="eraser-probe").puback(receipt_topic(VICTIM, care), fake) == 0
    wait_for(lambda: sum(agent.publisher.stats.receipts_refused.values()) == 1, what="the receipt judged")
    assert agent.publisher.stats.receipts == 0
    conn = w.victim_conn()
    assert "erasure_receipt" not in [e.kind for e in audit.entries(conn)]
    conn.close()


# ------------------------------------------------------------------------------------------------------------
# 5. the household's log tells queued, sent and dropped apart
# ------------------------------------------------------------------------------------------------------------


def test_5_outbox_overflow_is_in_the_households_log(world: World) -> None:
    w = world
    w.ingester()  # the city's side: a message nobody subscribed to would stay queued (PUBACK 0x10)
    agent = w.start_victim(outbox={"max_messages": 10})
    wait_for(lambda: agent.publisher.stats.messages_sent >= 3, what="first releases acknowledged")
    w.broker.stop()  # the city's broker is down for a while; the gateway keeps releasing into its outbox
    wait_for(lambda: agent.pipeline.stats.outbox_dropped > 0, what="the outbox to overflow")
    w.broker.start()
    wait_for(lambda: agent.publisher.stats.connected, what="the gateway back online")
    sent_before = agent.publisher.stats.messages_sent
    wait_for(lambda: agent.publisher.stats.messages_sent > sent_before + 3, what="the backlog going out")
    w.stop_victim_once()
    conn = w.victim_conn()
    dropped_total = int(conn.execute("SELECT value FROM meta WHERE key = 'outbox_dropped'").fetchone()[0])
    entries = list(audit.entries(conn))
    waiting = {int(r[0]) for r in conn.execute("SELECT seq FROM outbox WHERE consent IS NOT NULL")}
    queued = {e.body["seq"] for e in entries if e.kind == "release"}
    acked = {r["seq"] for e in entries if e.kind == "release_acked" for r in e.body["releases"]}
    dropped = {r["seq"] for e in entries if e.kind == "release_dropped" for r in e.body["releases"]}
    reasons = {e.body["reason"] for e in entries if e.kind == "release_dropped"}
    assert audit.verify(conn).ok
    conn.close()
    assert dropped and dropped <= queued and reasons == {"outbox_full"}
    # every release the log says was queued was acknowledged by the broker, logged as dropped, or is still
    # waiting in the outbox: the log never says "sent" for a message that never left
    assert queued <= acked | dropped | waiting
    assert not (acked & waiting)
    assert len(dropped) == dropped_total


# ------------------------------------------------------------------------------------------------------------
# 6. the audit chain against the cloud; consent signatures
# ------------------------------------------------------------------------------------------------------------


def test_6_a_truncated_log_is_caught_by_the_cloud_and_the_household(world: World) -> None:
    w = world
    ing = w.ingester(anchor_interval=0.0)
    agent = w.start_victim()
    wait_for(lambda: agent.publisher.stats.anchors >= 3, what="anchors back at the gateway")
    w.stop_victim_once()
    conn = w.victim_conn()
    anchored = conn.execute("SELECT max(n) FROM audit_anchor").fetchone()[0]
    # someone with the database deletes the newest entries and covers the local counters too
    with conn:
        conn.execute("DELETE FROM audit WHERE n > ?", (anchored - 3,))
        conn.execute("DELETE FROM meta WHERE key IN ('audit_n', 'audit_seq')")  # the local counters too
    verdict = audit.verify(conn)
    conn.close()
    assert (
        not verdict.ok and "the cloud holds entry" in verdict.reason
    )  # the anchor the cloud sent back says it was longer
    agent = w.start_victim()
    wait_for(lambda: ing.stats()["audit_conflicts"] >= 1, what="the cloud to see the history go back")
    # ... and says so in the anchor it keeps for the gateway, which the household's own check then reports
    conn = w.victim_conn()

    def anchored_conflicts() -> int:
        stored = audit.load_anchor(conn)
        return 0 if stored is None else stored.conflicts

    wait_for(lambda: anchored_conflicts() >= 1, what="the anchor's conflict kept at home")
    assert agent.publisher.stats.anchor_problem  # said at once, in the agent's status
    assert not audit.verify(conn).ok
    conn.close()


def test_6_consent_records_must_carry_their_gateways_signature(world: World) -> None:
    w = world
    ing = w.ingester()
    evil = w.attacker()
    base = {"gateway": ATTACKER, "subject": "s-1", "purpose": "community-energy", "categories": ["energy"],
            "status": ConsentStatus.ACTIVE, "given_at": datetime(2024, 1, 1, tzinfo=UTC)}  # fmt: skip
    unsigned = ConsentRecord(id="u1", **base).model_dump_json().encode()
    by_other = signed(w.victim_keys, id="u2", **base)  # a key that is not the attacker's registered one
    assert evil.puback(consent_topic(ATTACKER, "u1"), unsigned, retain=True) == 0
    assert evil.puback(consent_topic(ATTACKER, "u2"), by_other, retain=True) == 0
    wait_for(lambda: ing.stats()["rejected"].get("consent_record_signature", 0) == 2, what="both refused")
    assert ing.stats()["consents_known"] == 0


# ------------------------------------------------------------------------------------------------------------
# 7. the consent's terms, in the cloud
# ------------------------------------------------------------------------------------------------------------


def test_7_the_cloud_enforces_the_consents_terms(world: World) -> None:
    w = world
    ing = w.ingester()
    evil = w.attacker()
    given = datetime(2024, 6, 1, tzinfo=UTC)
    t_given = int(given.timestamp() * 1000)
    rec = {"gateway": ATTACKER, "id": "t1", "subject": "s-1", "purpose": "community-energy",
           "categories": ["energy"], "status": ConsentStatus.ACTIVE, "given_at": given}  # fmt: skip
    assert evil.puback(consent_topic(ATTACKER, "t1"), signed(w.attacker_keys, **rec), retain=True) == 0
    early = [item("power", "s-1", "m", t_given - 3_600_000, mean=1.0)]
    fine = [item("power", "s-1", "m", t_given + 60_000, mean=1.0) | {"window_s": 10}]
    ok = [item("power", "s-1", "m", t_given + 120_000, mean=1.0)]
    for seq, items in enumerate((early, fine, ok), 1):
        assert evil.puback(agg_topic(ATTACKER, "energy"), batch(ATTACKER, "t1", "community-energy", "energy",
                                                                items, seq)) == 0  # fmt: skip
    wait_for(lambda: ing.stats()["received"] == 3, what="the first three batches judged")
    # withdrawn at given + 5 min: nothing more is taken under it
    updates = ing.stats()["consent_updates"]
    withdrawn = rec | {"status": ConsentStatus.WITHDRAWN, "withdrawn_at": given + timedelta(minutes=5)}
    assert evil.puback(consent_topic(ATTACKER, "t1"), signed(w.attacker_keys, **withdrawn), retain=True) == 0
    wait_for(lambda: ing.stats()["consent_updates"] > updates, what="the withdrawal heard")
    late = [item("power", "s-1", "m", t_given + 600_000, mean=1.0)]
    assert evil.puback(agg_topic(ATTACKER, "energy"), batch(ATTACKER, "t1", "community-energy", "energy", late, 4)) == 0
    wait_for(lambda: ing.stats()["received"] == 4, what="all four batches judged")
    assert ing.wait_idle()
    st = ing.stats()
    assert st["rejected"] == {"consent_time": 1, "consent_granularity": 1, "consent_withdrawn": 1}
    assert [r["time"] for r in w.points("power")] == [t_given + 120_000]


# ------------------------------------------------------------------------------------------------------------
# 8. floods
# ------------------------------------------------------------------------------------------------------------


def test_7_a_purpose_carries_only_its_own_events(world: World) -> None:
    """Issue 17: the family's watch-over consent covers ``wellbeing`` events of kind ``watchover.*`` only. A hostile
    gateway holding such a consent cannot pass anything else off under it (a health alert relabelled, a disaster
    status), whatever category it claims."""
    w = world
    ing = w.ingester()
    evil = w.attacker()
    given = datetime(2024, 6, 1, tzinfo=UTC)
    t = int(given.timestamp() * 1000) + 600_000
    rec = {"gateway": ATTACKER, "id": "wo1", "subject": "s-1", "purpose": "watchover-family",
           "categories": ["wellbeing"], "status": ConsentStatus.ACTIVE, "given_at": given}  # fmt: skip
    assert evil.puback(consent_topic(ATTACKER, "wo1"), signed(w.attacker_keys, **rec), retain=True) == 0

    def events(seq: int, *kinds: str) -> bytes:
        evs = [{"id": f"e{seq}-{i}", "kind": k, "subject": "s-1", "device": "m", "at": t + i, "severity": "warning"}
               for i, k in enumerate(kinds)]  # fmt: skip
        doc = {"v": 1, "gateway": ATTACKER, "seq": seq, "sent": int(time.time() * 1000), "consent": "wo1"}
        return orjson.dumps(doc | {"purpose": "watchover-family", "category": "wellbeing", "events": evs})

    topic = event_topic(ATTACKER, Category.WELLBEING)
    assert evil.puback(topic, events(1, "alert.af_burden")) == 0
    assert evil.puback(topic, events(2, "watchover.absence", "safety.status")) == 0
    assert evil.puback(topic, events(3, "watchover.absence")) == 0
    wait_for(lambda: ing.stats()["received"] == 3, what="the three batches judged")
    assert ing.wait_idle()
    assert ing.stats()["rejected"] == {"event_kind": 2}
    assert [(r["kind"], r["event_id"]) for r in w.points("events", "purpose = 'watchover-family'")] == [
        ("watchover.absence", "e3-0")
    ]


def test_7_a_gateway_answers_a_disaster_only_for_the_area_it_was_enrolled_in(world: World) -> None:
    """Issue 17: the area a gateway answers a disaster declaration for is the one the operator enrolled it in
    (``kyojo provision enroll --area``; the cloud reads ``kyojo provision area --out``), not what its own config
    says. A hostile gateway claiming to be elsewhere (to make another area look safe or in need) is refused as
    ``area``; its answer for its own area is taken."""
    w = world
    ca = w.city.ca
    assert ca.gateway_areas() == {}
    # the attacker's gateway is re-enrolled with its area, as an installer does it (the CA registers it at signing)
    state = w.city.base / "ids" / "home-placed"
    code = ca.enroll("home-placed", pki.Role.GATEWAY, area="aizu-1")
    csr = pki.create_request(state, "home-placed", code, signing_key=load_keys(state).public_key_b64())
    ca.sign_csr(csr.read_bytes(), expected_id="home-placed")
    ca.register_area(ATTACKER, "aizu-2")  # the operator's `kyojo provision area home-attacker aizu-2`
    assert ca.gateway_areas() == {"home-placed": "aizu-1", ATTACKER: "aizu-2"}
    with pytest.raises(pki.PkiError):
        ca.enroll("ingest-9", pki.Role.INGEST, area="aizu-1")  # only gateways have an area
    areas = w.tmp / "gateway_areas.json"
    from typer.testing import CliRunner

    from kyojo.cli import app as kyojo_app

    out = CliRunner().invoke(kyojo_app, ["provision", "area", "--ca-dir", str(ca.ca_dir), "--out", str(areas)])
    assert out.exit_code == 0, out.output
    ing = w.ingester(gateway_areas=areas)
    evil = w.attacker()
    given = datetime(2024, 6, 1, tzinfo=UTC)
    t = int(given.timestamp() * 1000) + 600_000
    rec = {"gateway": ATTACKER, "id": "ds1", "subject": "s-1", "purpose": "disaster-safety",
           "categories": ["wellbeing"], "status": ConsentStatus.ACTIVE, "given_at": given}  # fmt: skip
    assert evil.puback(consent_topic(ATTACKER, "ds1"), signed(w.attacker_keys, **rec), retain=True) == 0

    def status(seq: int, area: str) -> bytes:
        ev = {"id": f"s{seq}", "kind": "safety.status", "subject": "s-1", "device": "m", "at": t + seq,
              "severity": "info", "attrs": {"declaration": f"d1-{area}", "area": area, "safe": True}}  # fmt: skip
        doc = {"v": 1, "gateway": ATTACKER, "seq": seq, "sent": int(time.time() * 1000), "consent": "ds1"}
        return orjson.dumps(doc | {"purpose": "disaster-safety", "category": "wellbeing", "events": [ev]})

    topic = event_topic(ATTACKER, Category.WELLBEING)
    assert evil.puback(topic, status(1, "aizu-1")) == 0  # another area: refused
    assert evil.puback(topic, status(2, "aizu-2")) == 0  # its own: taken
    wait_for(lambda: ing.stats()["received"] == 2, what="the two statuses judged")
    assert ing.wait_idle()
    assert ing.stats()["rejected"] == {"area": 1}
    rows = w.points("events", "purpose = 'disaster-safety'")
    assert [(r["event_id"], r["area"]) for r in rows] == [("s2", "aizu-2")]


def test_8_floods_of_consents_and_devices_stay_bounded(world: World) -> None:
    w = world
    evil = w.attacker()
    rec = {"gateway": ATTACKER, "subject": "s-1", "purpose": "community-energy", "categories": ["energy"],
           "status": ConsentStatus.ACTIVE, "given_at": datetime(2024, 1, 1, tzinfo=UTC)}  # fmt: skip
    infos = [
        evil.publish(consent_topic(ATTACKER, f"f{i}"), signed(w.attacker_keys, id=f"f{i}", **rec), qos=1, retain=True)
        for i in range(600)
    ]
    for info in infos:
        info.wait_for_publish(30)
    # a new ingester starts at once and the victim's data flows while the flood is still being read
    ing = w.ingester(snapshot_wait=0.0, max_consents_per_gateway=50, max_devices_per_gateway=30)
    w.start_victim()
    wait_for(lambda: len(victim_heart_rate(w)) >= 3, what="the victim's data despite the flood")
    wait_for(lambda: not ing.stats()["consents_loading"], what="the snapshot")
    assert ing.stats()["rejected"]["consent_record_cap"] == 600 - 50
    taken = ing.consent_ids(ATTACKER)[0]  # one of the 50 records the ingester kept
    items = [item("power", "s-1", f"dev-{i}", 1_717_300_000_000, mean=1.0) for i in range(100)]
    assert evil.puback(agg_topic(ATTACKER, "energy"), batch(ATTACKER, taken, "community-energy", "energy",
                                                            items[:20], 1)) == 0  # fmt: skip
    assert evil.puback(agg_topic(ATTACKER, "energy"), batch(ATTACKER, taken, "community-energy", "energy",
                                                            items[20:], 2)) == 0  # fmt: skip
    wait_for(lambda: ing.stats()["rejected"].get("gateway_cap_devices", 0) == 1, what="the device cap")
    mine = w.household(ATTACKER, "community-energy")
    wait_for(lambda: ing.stats()["written"] >= 20 and ing.stats()["pending_points"] == 0, what="the first 20")
    series = w.influxdb.query_rows(f'SHOW SERIES FROM "power" WHERE "household" = \'{mine}\'', w.db)
    assert len(series) == 20


# ------------------------------------------------------------------------------------------------------------
# 9. the ingesters' shared subscription
# ------------------------------------------------------------------------------------------------------------


def test_9_the_shared_subscription_cannot_be_joined(world: World) -> None:
    w = world
    ing = w.ingester()
    evil = w.attacker()
    assert evil.suback(f"$share/{w.city.group}/kyojo/v1/+/agg/+") == NOT_AUTHORIZED
    assert evil.suback("kyojo/v1/+/agg/+") == NOT_AUTHORIZED
    w.start_victim()
    wait_for(lambda: len(victim_heart_rate(w)) >= 5, what="victim's data")
    assert evil.messages == []
    assert ing.stats()["rejected_total"] == 0
    with pytest.raises(TrustError, match="well known"):
        Ingester(w.settings(group="kyojo-ingest")).start()


# ------------------------------------------------------------------------------------------------------------
# 11. names from flags and ids
# ------------------------------------------------------------------------------------------------------------


def test_11_operator_flags_and_identifiers_cannot_smuggle_anything(world: World) -> None:
    w = world
    ing = w.ingester()
    from typer.testing import CliRunner

    from kyojo.cli import app

    victim_db = f"keep_{uuid.uuid4().hex[:6]}"
    w.influxdb.query(f'CREATE DATABASE "{victim_db}"')
    hostile = f'power" FROM "power"; DROP DATABASE "{victim_db}"; SELECT "x'
    res = CliRunner().invoke(
        app, ["ingest", "rollup", "--influx-url", w.influxdb.url, "--influx-db", w.db, "--metric", hostile]
    )
    assert res.exit_code in (0, 2), res.output
    names = [r["name"] for r in w.influxdb.query_rows("SHOW DATABASES")]
    assert victim_db in names  # the name stayed a name
    # an id with a trailing newline is no id: the record is refused before anyone reads it
    evil = w.attacker()
    rec = ConsentRecord.model_construct(
        v=1, gateway=ATTACKER, id="c1\n", subject="s", purpose="community-energy", categories=[Category.ENERGY],
        status=ConsentStatus.ACTIVE, given_at=datetime(2024, 1, 1, tzinfo=UTC), expires_at=None, withdrawn_at=None,
        sig=None,
    )  # fmt: skip
    # (Mosquitto itself drops a client whose topic carries a control character; the payload is the way in)
    assert evil.puback(consent_topic(ATTACKER, "c1"), rec.model_dump_json().encode(), retain=True) == 0
    wait_for(lambda: sum(v for k, v in ing.stats()["rejected"].items() if k.startswith("consent_record")) == 1)
    assert ing.stats()["consents_known"] == 0

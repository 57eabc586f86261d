"""The rendered broker configuration, proven against a REAL Mosquitto 2.0.11 over mTLS with paho MQTT v5.

The broker is configured by the production renderer (provisioning/broker.py): mTLS identities (CN = username =
client id) and the dynamic-security plugin with one role per identity. Each test states what it proves: each
gateway is confined to its own tree (PUBACK/SUBACK 0x87 elsewhere), only ingesters join the secret $share group,
only the eraser writes receipts, an unknown CN gets nothing, revocation + broker-sync disconnect a connected
gateway for good, broker-sync is idempotent, and the files are owned so that Mosquitto (user mosquitto) can run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drivers.clock import ScaledClock
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from provisioning import broker as brokerlib
from provisioning import pki
from provisioning.cli import app
from provisioning.local import ServiceError
from tests.agentkit import T0, RampDriver, agent_config, run_agent_in_thread
from tests.citykit import (
    ADMIN,
    CONSENTS,
    ERASER,
    GRANTED_QOS1,
    HOST,
    INGESTERS,
    NOT_AUTHORIZED,
    City,
    CityBroker,
    CityClient,
    accepted,
    tls_probe,
)
from tests.kit import free_port, wait_for

pytestmark = pytest.mark.broker

ADMINISTRATIVE_ACTION = 0x98  # DISCONNECT reason when dynsec deletes/disables a connected client


def _aggs(c: CityClient) -> list[int]:
    return [int(p) for t, p in list(c.messages) if "/agg/" in t]


def _publish_and_collect(publisher: CityClient, members: list[CityClient], n: int) -> list[int]:
    """Publish n aggregates; return what the members got, once all n arrived (or after 5 s)."""
    start = [len(_aggs(m)) for m in members]
    for k in range(n):
        assert publisher.puback(f"kyojo/v1/{publisher.identity}/agg/energy", str(k).encode()) == 0x00

    def got() -> list[int]:
        return sorted(v for m, s0 in zip(members, start, strict=True) for v in _aggs(m)[s0:])

    wait_for(lambda: len(got()) >= n, 5, f"{n} aggregates at the ingesters")
    return got()


def _admin(city: City, b: CityBroker) -> brokerlib.DynsecAdmin:
    """The admin's control connection (connects in ``with``)."""
    return brokerlib.DynsecAdmin(b.host, b.port, city.ssl_context(ADMIN))


# ------------------------------------------------------------------------------------------------------------
# Each gateway: its own tree only
# ------------------------------------------------------------------------------------------------------------


def test_gateway_writes_only_in_its_own_tree(city: City) -> None:
    """gw-a: accepted in kyojo/v1/gw-a/{agg,event,consent,status}; PUBACK 0x87 in gw-b's tree, for any downlink
    (receipts, anchors: its own too), for ingester topics and for the dynsec control API."""
    city.start_broker()
    a = city.client("gw-a")
    assert a.connack is not None
    # Accepted: 0x10 "No matching subscribers" is a success code (< 0x80).
    assert accepted(a.puback("kyojo/v1/gw-a/agg/health"))
    assert accepted(a.puback("kyojo/v1/gw-a/event/mobility"))
    assert accepted(a.puback("kyojo/v1/gw-a/consent/c-1", retain=True))
    assert accepted(a.puback("kyojo/v1/gw-a/status", retain=True))
    for topic in (
        "kyojo/v1/gw-b/agg/health",
        "kyojo/v1/gw-b/consent/c-1",
        "kyojo/v1/gw-b/status",
        "kyojo/v1/gw-a/receipt/c-1",
        "kyojo/v1/gw-b/receipt/c-1",
        "kyojo/v1/gw-a/anchor",
        "kyojo/v1/gw-b/anchor",
        "kyojo/v1/gw-a/agg/health/extra",
        "kyojo/v1/%u/agg/health",  # dynsec does not substitute %u; no role contains it either
        "kyojo/v1/_ingest/sync/ingest-1",
        "$CONTROL/dynamic-security/v1",
    ):
        assert a.puback(topic) == NOT_AUTHORIZED, topic
    # The broker announces max_packet_size to v5 clients in CONNACK.
    assert a.connack[1].MaximumPacketSize == brokerlib.BrokerSettings.max_packet_size


def test_gateway_reads_only_its_own_downlink(city: City) -> None:
    """gw-a may subscribe to its own receipts and anchor; gw-b's SUBSCRIBE to gw-a's (or everyone's) downlink is
    refused with SUBACK 0x87 (dynsec checks SUBSCRIBE, acl_file did not); a receipt for gw-a reaches gw-a only."""
    city.start_broker()
    a, b, eraser, ingest = city.client("gw-a"), city.client("gw-b"), city.client(ERASER), city.client("ingest-1")
    assert a.suback("kyojo/v1/gw-a/receipt/+") == GRANTED_QOS1
    assert a.suback("kyojo/v1/gw-a/anchor") == GRANTED_QOS1
    for f in ("kyojo/v1/gw-a/receipt/+", "kyojo/v1/+/receipt/+", "kyojo/v1/gw-a/anchor", "kyojo/v1/+/anchor", "#"):
        assert b.suback(f) == NOT_AUTHORIZED, f
    assert a.suback("kyojo/v1/gw-a/#") == NOT_AUTHORIZED  # wider than its grant
    assert b.suback("kyojo/v1/gw-b/receipt/+") == GRANTED_QOS1
    assert eraser.puback("kyojo/v1/gw-a/receipt/c-9", b"erased") == 0x00
    assert ingest.puback("kyojo/v1/gw-a/anchor", b"anchor") == 0x00
    assert a.wait_messages(2) == [("kyojo/v1/gw-a/receipt/c-9", b"erased"), ("kyojo/v1/gw-a/anchor", b"anchor")]
    # gw-b's own receipt arrives (its subscription is live) and gw-a's never did.
    assert eraser.puback("kyojo/v1/gw-b/receipt/c-1", b"mine") == 0x00
    assert b.wait_messages(1) == [("kyojo/v1/gw-b/receipt/c-1", b"mine")]


def test_only_the_eraser_writes_receipts(city: City) -> None:
    """Receipts (proof of erasure to the household): the eraser only. Anchors: the eraser and the ingesters
    (which see the audit heads). Gateways write neither, not even another's; the admin writes no data at all."""
    city.start_broker()
    eraser, ingest, consents = city.client(ERASER), city.client("ingest-1"), city.client("ingest-1-consents")
    a, admin = city.client("gw-a"), city.client(ADMIN)
    assert accepted(eraser.puback("kyojo/v1/gw-b/receipt/c-1", retain=True))
    assert accepted(eraser.puback("kyojo/v1/gw-b/anchor", retain=True))
    assert accepted(ingest.puback("kyojo/v1/gw-b/anchor", retain=True))
    for c in (ingest, consents, a, admin):
        assert c.puback("kyojo/v1/gw-b/receipt/c-1") == NOT_AUTHORIZED, c.identity
    for c in (a, admin):
        assert c.puback("kyojo/v1/gw-b/anchor") == NOT_AUTHORIZED, c.identity
    for c in (eraser, admin):
        assert c.puback("kyojo/v1/gw-b/agg/health") == NOT_AUTHORIZED, c.identity  # nobody forges data
        assert c.suback(f"$share/{city.group}/kyojo/v1/+/agg/+") == NOT_AUTHORIZED, c.identity
    # The eraser reads consent records, unshared (it needs every withdrawal).
    assert eraser.suback("kyojo/v1/+/consent/+") == GRANTED_QOS1
    assert a.puback("kyojo/v1/gw-a/consent/c-7", b"{}", retain=True) == 0x00
    assert ("kyojo/v1/gw-a/consent/c-7", b"{}") in eraser.wait_messages(1)


def test_client_id_cannot_be_spoofed(city: City) -> None:
    """gw-a connecting with client id "gw-b" gets client id gw-a (use_username_as_clientid): gw-b is not
    disconnected, and the spoofer still has only gw-a's rights (0x87 in gw-b's tree)."""
    b_ = city.start_broker()
    b = city.client("gw-b")
    spoof = city.client("gw-a", client_id="gw-b")
    assert spoof.puback("kyojo/v1/gw-b/agg/health") == NOT_AUTHORIZED
    assert accepted(spoof.puback("kyojo/v1/gw-a/agg/health"))
    # A takeover would have closed gw-b's connection before the spoofer's CONNACK; gw-b still gets PUBACKs.
    assert accepted(b.puback("kyojo/v1/gw-b/agg/health"))
    assert b.disconnects == []
    log = b_.log_text()
    assert "as gw-a (p5" in log  # the broker logs the client id it assigned
    assert "Client gw-b already connected" not in log


# ------------------------------------------------------------------------------------------------------------
# Ingesters: the secret shared subscription is theirs alone
# ------------------------------------------------------------------------------------------------------------


def test_ingesters_share_the_aggregate_subscription(city: City) -> None:
    """Two ingest identities in the secret $share group split the aggregates, each message exactly once; events
    too; the consent connection reads consent records unshared and may use only its own sync topic."""
    city.start_broker()
    i1, i2, a = city.client("ingest-1"), city.client("ingest-2"), city.client("gw-a")
    for c in (i1, i2):
        assert c.suback(f"$share/{city.group}/kyojo/v1/+/agg/+") == GRANTED_QOS1
        assert c.suback(f"$share/{city.group}/kyojo/v1/+/event/+") == GRANTED_QOS1
    assert _publish_and_collect(a, [i1, i2], 20) == list(range(20))
    assert _aggs(i1) and _aggs(i2)  # both members got a share
    assert a.puback("kyojo/v1/gw-a/event/mobility", b"e") == 0x00
    wait_for(lambda: ("kyojo/v1/gw-a/event/mobility", b"e") in i1.messages + i2.messages, 5, "the event")
    consents = city.client("ingest-1-consents")
    assert consents.suback("kyojo/v1/+/consent/+") == GRANTED_QOS1
    assert a.puback("kyojo/v1/gw-a/consent/c-2", b"{}") == 0x00
    assert consents.wait_for(lambda: ("kyojo/v1/gw-a/consent/c-2", b"{}") in consents.messages)
    assert consents.suback("kyojo/v1/_ingest/sync/ingest-1-consents") == GRANTED_QOS1
    assert consents.puback("kyojo/v1/_ingest/sync/ingest-1-consents", b"n") == 0x00
    assert consents.wait_for(lambda: ("kyojo/v1/_ingest/sync/ingest-1-consents", b"n") in consents.messages)
    assert consents.puback("kyojo/v1/_ingest/sync/ingest-1", b"n") == NOT_AUTHORIZED
    assert consents.suback("kyojo/v1/_ingest/sync/+") == NOT_AUTHORIZED
    assert i1.puback("kyojo/v1/gw-a/agg/energy", b"0") == NOT_AUTHORIZED  # services cannot forge data


def test_gateway_cannot_join_the_ingesters_share_group(city: City) -> None:
    """The hole acl_file left open (any client could join the $share group and swallow its round-robin share):
    with dynsec a gateway's SUBSCRIBE to $share/<secret group>/kyojo/v1/+/agg/+ and to kyojo/v1/+/agg/+ gets
    SUBACK 0x87, it receives nothing, and the ingesters get every message. Ingesters cannot leave the secret group
    either (another group, or unshared, is refused), so nobody can set up a parallel reader."""
    city.start_broker()
    i1, i2, rogue, a = city.client("ingest-1"), city.client("ingest-2"), city.client("gw-c"), city.client("gw-a")
    for c in (i1, i2):
        assert c.suback(f"$share/{city.group}/kyojo/v1/+/agg/+") == GRANTED_QOS1
    for f in (
        f"$share/{city.group}/kyojo/v1/+/agg/+",
        f"$share/{city.group}/kyojo/v1/+/event/+",
        f"$share/{city.group}/#",
        "$share/kyojo-ingest/kyojo/v1/+/agg/+",  # the old well-known name
        "kyojo/v1/+/agg/+",
        "kyojo/v1/gw-a/agg/+",
        "#",
    ):
        assert rogue.suback(f) == NOT_AUTHORIZED, f
    for f in ("$share/kyojo-ingest/kyojo/v1/+/agg/+", "kyojo/v1/+/agg/+", f"$share/{city.group}/kyojo/v1/#"):
        assert i1.suback(f) == NOT_AUTHORIZED, f
    assert _publish_and_collect(a, [i1, i2], 30) == list(range(30))
    assert rogue.messages == []


def test_unknown_identity_gets_nothing(city: City) -> None:
    """A certificate of this CA whose CN has no dynsec client (enrolled after the broker's config was rendered,
    not synced yet) connects, but every PUBLISH and SUBSCRIBE is refused and nothing reaches it. After
    broker-sync the same certificate works: the refusal was the missing client entry."""
    city.start_broker()
    city.identity("gw-new")
    new, eraser = city.client("gw-new"), city.client(ERASER)
    assert new.connack is not None and new.connack[0].value == 0x00
    assert new.puback("kyojo/v1/gw-new/agg/health") == NOT_AUTHORIZED
    assert new.puback("kyojo/v1/gw-new/status") == NOT_AUTHORIZED
    for f in ("kyojo/v1/gw-new/receipt/+", "#", "$SYS/#", f"$share/{city.group}/kyojo/v1/+/agg/+"):
        assert new.suback(f) == NOT_AUTHORIZED, f
    assert eraser.puback("kyojo/v1/gw-new/receipt/c-1", b"r") == 0x10  # no subscriber took it
    assert city.sync() == [
        "role gateway:gw-new: created (14 ACLs)",
        "client gw-new: created with role gateway:gw-new",
    ]
    assert accepted(new.puback("kyojo/v1/gw-new/agg/health"))
    assert new.suback("kyojo/v1/gw-new/receipt/+") == GRANTED_QOS1
    assert new.messages == []


def test_the_real_gateway_agent_works_within_its_role(city: City) -> None:
    """The edge agent (mTLS, its certificate's CN as gateway id) releases its consent record and aggregates under
    the gateway role with no refused publish; the ingesters' secret group and consent connection receive them."""
    city.start_broker()
    ingest, consents = city.client("ingest-1"), city.client("ingest-1-consents")
    assert ingest.suback(f"$share/{city.group}/kyojo/v1/+/agg/+") == GRANTED_QOS1
    assert consents.suback("kyojo/v1/+/consent/+") == GRANTED_QOS1
    cfg = agent_config(city.base / "agent", city.current_broker.port, gateway="gw-a", mqtt=city.agent_mqtt("gw-a"))
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).grant("preventive-care", "p1", now=datetime.fromtimestamp(T0, tz=UTC))
    conn.close()
    clock = ScaledClock(T0, speed=600)
    _, stop, holder = run_agent_in_thread(lambda: Agent(cfg, clock=clock, drivers=[RampDriver(clock)]))
    try:
        assert ingest.wait_for(lambda: any("/agg/" in t for t, _ in ingest.messages), 20), "no aggregate"
        assert consents.wait_for(lambda: bool(consents.messages), 5), "no consent record"
        stats = holder[0].publisher.stats
    finally:
        stop()
    assert stats.refused == 0
    assert all(t.startswith("kyojo/v1/gw-a/agg/") for t, _ in ingest.messages)
    assert all(t.startswith("kyojo/v1/gw-a/consent/") for t, _ in consents.messages)


# ------------------------------------------------------------------------------------------------------------
# TLS and revocation
# ------------------------------------------------------------------------------------------------------------


def test_handshake_requires_a_certificate_from_this_ca(city: City, tmp_path: Path) -> None:
    """No client certificate: alert handshake_failure (TLS 1.2). A certificate of another CA with the same CN:
    unknown_ca. Neither reaches MQTT."""
    b = city.start_broker()
    assert city.probe("gw-a") == "connack:00"
    assert city.probe(None) == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    with City(tmp_path / "rogue", cast=False) as rogue:
        tls = rogue.identity("gw-a")
        ctx = city.ssl_context(None, tls12=True)
        ctx.load_cert_chain(str(tls / pki.CERT_NAME), str(tls / pki.KEY_NAME))
        assert tls_probe(ctx, b.port) == "TLSV1_ALERT_UNKNOWN_CA"


def test_revoked_certificate_is_refused_after_sighup(city: City) -> None:
    """Revocation in Mosquitto 2.0.11: a new crl.pem alone changes nothing; after SIGHUP the revoked certificate
    fails the handshake (TLS alert certificate_revoked) while others still connect; a connection opened before
    the SIGHUP survives it (hence broker-sync, next test); after a restart the revoked client cannot come back."""
    b = city.start_broker()
    assert city.probe("gw-c") == "connack:00"
    city.ca.revoke("gw-c", "key compromise")
    assert city.probe("gw-c") == "connack:00"  # CRL file changed, not reloaded: still in
    held = city.client("gw-c")
    b.reload_and_wait()
    assert city.probe("gw-c") == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert city.probe("gw-a") == "connack:00"
    assert accepted(held.puback("kyojo/v1/gw-c/agg/health"))  # established: not re-checked
    assert held.disconnects == []
    held.close()
    b.restart()
    assert city.probe("gw-c") == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert city.probe("gw-a") == "connack:00"


def test_revoke_and_sync_disconnect_a_connected_gateway(city: City) -> None:
    """Issue 22 item 11: the operator's revoke (CA revoke + CRL, SIGHUP, broker-sync) disconnects a gateway that
    is connected right now (DISCONNECT 0x98 administrative action), and its automatic reconnects fail the TLS
    handshake; other gateways are untouched."""
    b = city.start_broker()
    gw, other = city.client("gw-c"), city.client("gw-a")
    assert accepted(gw.puback("kyojo/v1/gw-c/agg/health"))
    changes = city.revoke("gw-c")
    assert "client gw-c: deleted (no valid certificate in the CA); disconnected if it was connected" in changes
    reason = gw.wait_disconnect()
    assert reason is not None and reason.value == ADMINISTRATIVE_ACTION
    # paho reconnects by itself (after ~1 s): the broker refuses the certificate, no second CONNACK.
    assert gw.wait_for(lambda: len(gw.disconnects) >= 2, 10), "paho made no reconnect attempt"
    assert gw.connacks == [gw.connacks[0]] and not gw.is_connected()
    wait_for(lambda: "certificate verify failed" in b.log_text(), what="the broker's log line")
    assert city.probe("gw-c") == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert other.disconnects == []
    assert accepted(other.puback("kyojo/v1/gw-a/agg/health"))


def test_deleted_identity_is_denied_before_the_crl_reload(city: City) -> None:
    """broker-sync alone (CRL not reloaded yet): the revoked gateway is disconnected; its reconnect succeeds at
    TLS level but, without a dynsec client, every PUBLISH and SUBSCRIBE is refused."""
    city.start_broker()
    gw = city.client("gw-c")
    city.ca.revoke("gw-c")
    assert city.sync() == [
        "client gw-c: deleted (no valid certificate in the CA); disconnected if it was connected",
        "role gateway:gw-c: deleted",
    ]
    assert gw.wait_for(lambda: len(gw.connacks) >= 2, 10), "paho did not reconnect"
    assert gw.disconnects[0].value == ADMINISTRATIVE_ACTION
    assert gw.puback("kyojo/v1/gw-c/agg/health") == NOT_AUTHORIZED
    assert gw.suback("kyojo/v1/gw-c/receipt/+") == NOT_AUTHORIZED


def test_disable_client_does_not_keep_a_certificate_out(city: City) -> None:
    """KNOWN LIMIT of dynsec 2.0.11 with certificate identities (why broker-sync deletes instead): disableClient
    disconnects the client, but it reconnects at once and keeps its role's rights, since the broker never asks
    the plugin to authenticate a certificate. `broker-sync --kick` uses exactly this (disable + enable)."""
    city.start_broker()
    gw = city.client("gw-c")
    with _admin(city, city.current_broker) as admin:
        admin.execute([{"command": "disableClient", "username": "gw-c"}])
        assert admin.execute([{"command": "getClient", "username": "gw-c"}])[0]["data"]["client"]["disabled"]
    assert gw.wait_for(lambda: len(gw.connacks) >= 2, 10), "paho did not reconnect"
    assert gw.disconnects[0].value == ADMINISTRATIVE_ACTION
    assert gw.connacks[1].value == 0x00
    assert accepted(gw.puback("kyojo/v1/gw-c/agg/health"))  # disabled, yet publishing
    assert city.sync() == ["client gw-c: enabled"]
    assert city.sync(kick=["gw-c"]) == ["client gw-c: disconnected"]
    assert gw.wait_for(lambda: len(gw.connacks) >= 3, 10)
    assert len(gw.disconnects) >= 2


def test_expired_crl_locks_everyone_out(city: City) -> None:
    """OpenSSL refuses every client once the CRL is past nextUpdate ("certificate verify failed"; the client
    sees the connection closed): `crl` must run on a timer. A fresh CRL + SIGHUP lets them back in."""
    city.ca.write_crl(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=city.ca.lifetimes.crl_days + 1))
    b = city.start_broker()
    assert city.probe("gw-a") != "connack:00"
    # the broker logs the refusal when it gets to it, which can be after the client saw the connection close
    wait_for(lambda: "certificate verify failed" in b.log_text(), what="the broker's log line")
    city.ca.write_crl()
    b.reload_and_wait()
    assert city.probe("gw-a") == "connack:00"


# ------------------------------------------------------------------------------------------------------------
# Rendering and broker-sync
# ------------------------------------------------------------------------------------------------------------


def test_rendered_dynsec_denies_by_default_and_names_every_cn(city: City) -> None:
    """dynamic-security.json: default access all deny, no passwords, no groups, one role per valid identity with
    its CN written out (no %u/%c: dynsec 2.0.11 does not substitute them), revoked identities left out."""
    city.ca.revoke("gw-b")
    state = brokerlib.desired_state(brokerlib.ca_identities(city.ca), city.group)
    doc = json.loads(brokerlib.render_dynsec(state))
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": False,
    }
    assert doc["groups"] == []
    clients = {c["username"]: c for c in doc["clients"]}
    assert set(clients) == {
        "gw-a",
        "gw-c",
        "ingest-1",
        "ingest-2",
        "ingest-1-consents",
        "ingest-2-consents",
        ERASER,
        ADMIN,
    }
    assert all("password" not in c and len(c["roles"]) == 1 for c in clients.values())
    roles = {r["rolename"]: r["acls"] for r in doc["roles"]}
    assert set(roles) == {c["roles"][0]["rolename"] for c in clients.values()}
    text = json.dumps(doc)
    assert "%u" not in text and "%c" not in text and "gw-b" not in text
    gw_topics = {(a["acltype"], a["topic"]) for a in roles["gateway:gw-a"]}
    assert ("publishClientSend", "kyojo/v1/gw-a/agg/+") in gw_topics
    # its own topics, and the city's signed disaster declarations (read only)
    assert {t for _k, t in gw_topics if "gw-a" not in t} == {"kyojo/v1/city/disaster"}
    assert ("publishClientSend", "kyojo/v1/city/disaster") not in gw_topics
    shared = [a["topic"] for a in roles["ingest:ingest-1"] if a["topic"].startswith("$share/")]
    assert shared and all(t.startswith(f"$share/{city.group}/") for t in shared)
    assert not [a for r in roles.values() for a in r if not a["allow"]]


@pytest.mark.parametrize("group", ["kyojo-ingest", "kyojo-ingest-3f9c2a7d41b85e60", "kyojo-ingest-" + "A" * 32, ""])
def test_render_refuses_a_guessable_share_group(city: City, group: str) -> None:
    """Only new_share_group()'s shape (kyojo-ingest-<32 lowercase hex>) is rendered; broker-config refuses a
    tampered share_group file (exit 2) and writes nothing."""
    ids = brokerlib.ca_identities(city.ca)
    with pytest.raises(brokerlib.BrokerConfigError, match="not a secret"):
        brokerlib.desired_state(ids, group)
    assert brokerlib.desired_state(ids, brokerlib.new_share_group()).clients
    (city.ca.ca_dir / brokerlib.SHARE_GROUP_FILE).write_text(group + "\n")
    out = city.base / "out"
    res = CliRunner().invoke(app, ["broker-config", "--ca-dir", str(city.ca.ca_dir), "--out-dir", str(out)])
    assert res.exit_code == 2, res.output
    assert "not a secret" in res.output
    assert not out.exists()


def test_broker_sync_is_idempotent_and_repairs_drift(city: City) -> None:
    """broker-sync makes the live plugin equal the CA whatever happened to it: a new gateway, a revoked one, a
    rotated share group, hand-made drift (an extra ACL, a foreign client, a group handing out a role, a disabled
    client, a widened default access). A second run changes nothing. Listing pages are followed (page of 3)."""
    b = city.start_broker()
    assert city.sync() == []
    with _admin(city, b) as admin:
        admin.execute(
            [
                {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]},
                {"command": "addRoleACL", "rolename": "gateway:gw-a", "acltype": "subscribePattern", "topic": "#",
                 "allow": True, "priority": 0},
                {"command": "createClient", "username": "intruder", "roles": [{"rolename": "ingest:ingest-1"}]},
                {"command": "createGroup", "groupname": "backdoor", "roles": [{"rolename": "ingest:ingest-2"}]},
                {"command": "addGroupClient", "groupname": "backdoor", "username": "gw-b"},
                {"command": "disableClient", "username": "gw-b"},
                {"command": "removeClientRole", "username": "gw-c", "rolename": "gateway:gw-c"},
            ]
        )  # fmt: skip
    city.identity("gw-d")
    city.ca.revoke("gw-b")
    (city.ca.ca_dir / brokerlib.SHARE_GROUP_FILE).unlink()
    old_group, city.group = city.group, brokerlib.load_share_group(city.ca.ca_dir, create=True)
    brokerlib.DynsecAdmin.PAGE = 3
    try:
        changes = city.sync()
        assert city.sync() == []
    finally:
        brokerlib.DynsecAdmin.PAGE = 500
    assert changes == [
        "default access: deny all (allowed before: subscribe)",
        "group backdoor: deleted (Kyojo grants rights only through per-identity roles)",
        "role gateway:gw-a: 1 ACLs removed, 0 added",
        "role gateway:gw-d: created (14 ACLs)",
        *(f"role ingest:{n}: 4 ACLs removed, 4 added" for n in sorted((*INGESTERS, *CONSENTS))),
        "client gw-c: role gateway:gw-c added",
        "client gw-d: created with role gateway:gw-d",
        "client gw-b: deleted (no valid certificate in the CA); disconnected if it was connected",
        "client intruder: deleted (no valid certificate in the CA); disconnected if it was connected",
        "role gateway:gw-b: deleted",
    ]  # fmt: skip
    i1, a, c, d = city.client("ingest-1"), city.client("gw-a"), city.client("gw-c"), city.client("gw-d")
    assert i1.suback(f"$share/{old_group}/kyojo/v1/+/agg/+") == NOT_AUTHORIZED
    assert i1.suback(f"$share/{city.group}/kyojo/v1/+/agg/+") == GRANTED_QOS1
    assert a.suback("#") == NOT_AUTHORIZED
    assert accepted(c.puback("kyojo/v1/gw-c/agg/health"))
    assert accepted(d.puback("kyojo/v1/gw-d/agg/health"))
    # The plugin saved the result into its JSON: a restart comes back with the same state.
    saved = json.loads(b.dynsec_path.read_text())
    assert {x["username"] for x in saved["clients"]} == {*city.tls} - {"gw-b"}
    b.restart()
    assert city.sync() == []


def test_broker_sync_and_revoke_cli(city: City) -> None:
    """`kyojo provision broker-sync` as the admin identity: nothing to change, then --dry-run (changes nothing),
    then the change; revoke says what to run next; a non-admin certificate is refused with a clear message."""
    b = city.start_broker()
    run = CliRunner().invoke
    base = [
        "broker-sync", "--ca-dir", str(city.ca.ca_dir), "--broker-host", HOST, "--broker-port", str(b.port),
        "--admin-tls", str(city.tls[ADMIN]),
    ]  # fmt: skip
    res = run(app, base)
    assert res.exit_code == 0, res.output
    assert "nothing to change" in res.output
    city.identity("gw-d")
    res = run(app, [*base, "--dry-run"])
    assert "would change: client gw-d: created with role gateway:gw-d" in res.output
    d = city.client("gw-d")
    assert d.puback("kyojo/v1/gw-d/agg/health") == NOT_AUTHORIZED  # dry run: nothing changed
    res = run(app, base)
    assert "changed: client gw-d: created with role gateway:gw-d" in res.output
    assert accepted(d.puback("kyojo/v1/gw-d/agg/health"))
    res = run(app, ["revoke", "gw-d", "--ca-dir", str(city.ca.ca_dir)])
    assert res.exit_code == 0, res.output
    assert "broker-sync: deletes gw-d from the broker" in res.output
    b.reload_and_wait()
    res = run(app, base)
    assert "changed: client gw-d: deleted" in res.output
    assert d.wait_disconnect() is not None
    not_admin = [*base[:-1], str(city.tls["gw-a"])]
    res = run(app, not_admin)
    assert res.exit_code == 2
    assert "not an admin identity" in res.output


# ------------------------------------------------------------------------------------------------------------
# Files: Mosquitto runs as user mosquitto and reads its key and the dynsec JSON after dropping privileges
# ------------------------------------------------------------------------------------------------------------


def _mosquitto_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        return None


def test_broker_config_owner_and_modes(city: City) -> None:
    """broker-config: public files 0644; the key and the dynsec JSON 0600 and, when we are root and the user
    mosquitto exists (the Debian package makes it), owned by mosquitto; the install commands say the same."""
    out = city.base / "bundle"
    res = CliRunner().invoke(
        app,
        ["broker-config", "--ca-dir", str(city.ca.ca_dir), "--out-dir", str(out), "--server-dir", str(city.server_dir)],
    )
    assert res.exit_code == 0, res.output
    user = _mosquitto_user()
    owner = "mosquitto" if os.geteuid() == 0 and user is not None else None
    assert brokerlib.default_owner() == owner
    for name in ("kyojo.conf", "ca.crt", "crl.pem", "broker.crt"):
        st = (out / name).stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o644, os.geteuid()), name
    for name in ("broker.key", "dynamic-security.json"):
        st = (out / name).stat()
        assert st.st_mode & 0o777 == 0o600, name
        assert st.st_uid == (user.pw_uid if owner and user else os.geteuid()), name
    assert f"install -m 0600 -o mosquitto -g mosquitto {out}/dynamic-security.json {out}/broker.key" in res.output
    assert "plugin_opt_config_file /etc/mosquitto/kyojo/dynamic-security.json" in (out / "kyojo.conf").read_text()
    assert f"plugin {brokerlib.DEBIAN_DYNSEC_PLUGIN}" in (out / "kyojo.conf").read_text()
    if os.geteuid() != 0:
        with pytest.raises(brokerlib.BrokerConfigError, match="only root"):
            brokerlib.write_broker_files(city.base / "x", [brokerlib.BrokerFile("k", b"", private=True)], "mosquitto")


class _AsUser(CityBroker):
    """The harness runs Mosquitto as the current user; this one lets it drop to another, like systemd's."""

    def __init__(self, workdir: Path, port: int, config: str, user: str) -> None:
        super().__init__(workdir, port, config, group="-")
        self.user = user

    def render_config(self) -> str:
        lines = super().render_config().splitlines()
        return "\n".join(f"user {self.user}" if ln.startswith("user ") else ln for ln in lines) + "\n"


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temp dir the mosquitto user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="kyojo-broker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or _mosquitto_user() is None, reason="needs root and the mosquitto user")
def test_mosquitto_runs_as_its_user_on_the_rendered_files(city: City, public_tmp: Path) -> None:
    """Issue 22 item 10, end to end: Mosquitto started as root with `user mosquitto` (as Debian's unit does) on
    the broker-config bundle. With the files owned by root (--owner root) it cannot read its key and does not
    start; with the default owner it starts, the plugin reads its JSON (the admin may subscribe) and saves a
    broker-sync change back into it."""
    user = _mosquitto_user()
    assert user is not None
    etc = public_tmp / "etc"
    args = ["broker-config", "--ca-dir", str(city.ca.ca_dir), "--out-dir", str(etc), "--etc-dir", str(etc)]
    args += ["--server-dir", str(city.server_dir), "--bind", HOST]
    work = public_tmp / "run"
    work.mkdir()
    os.chown(work, user.pw_uid, user.pw_gid)
    (work / "mosquitto.log").touch()
    os.chown(work / "mosquitto.log", user.pw_uid, user.pw_gid)

    def broker(port: int) -> _AsUser:
        conf = (etc / "kyojo.conf").read_text()
        return _AsUser(work, port, conf, "mosquitto")

    port = free_port()
    res = CliRunner().invoke(app, [*args, "--port", str(port), "--owner", "root"])
    assert res.exit_code == 0, res.output
    with pytest.raises(ServiceError, match="Unable to load server key file"):
        broker(port).start(timeout=5)
    res = CliRunner().invoke(app, [*args, "--port", str(port)])
    assert res.exit_code == 0, res.output
    assert (etc / "broker.key").stat().st_uid == user.pw_uid
    b = broker(port)
    b.start()
    city.brokers.append(b)  # stopped by the fixture
    admin = city.client(ADMIN, broker=b)
    assert admin.suback("$CONTROL/dynamic-security/v1/response") == GRANTED_QOS1
    assert accepted(city.client("gw-a", broker=b).puback("kyojo/v1/gw-a/agg/health"))
    city.identity("gw-d")
    assert "client gw-d: created with role gateway:gw-d" in city.sync(broker=b)
    saved = json.loads((etc / "dynamic-security.json").read_text())
    assert "gw-d" in {c["username"] for c in saved["clients"]}
    st = (etc / "dynamic-security.json").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (user.pw_uid, 0o600)


def test_ssl_context_helper_matches_the_installed_layout(city: City) -> None:
    """client_context() reads the layout install_certificate writes (identity.crt/.key, ca.crt)."""
    b = city.start_broker()
    ctx = brokerlib.client_context(city.tls["gw-a"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tls_probe(ctx, b.port) == "connack:00"

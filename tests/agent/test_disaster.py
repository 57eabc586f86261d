"""Safety status in a disaster (issue 17 section 2), the gateway's side: the city's signed declaration is the only
thing that starts it (a forged, altered, replayed, old or expired one is refused and counted, also after a
restart); while it lasts, a home that granted disaster-safety answers with a coarse status only, through the
consent gate and the audit log, over a real Mosquitto; it stops when the declaration ends."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.disaster import DeclarationError, Declarations, load_city_key, press
from kyojo.contract.wire import DisasterDeclaration, decode_events, disaster_topic
from provisioning import pki
from provisioning.local import Mosquitto
from tests.agentkit import Collector, agent_config, consenting_agent
from tests.citykit import ERASER, NOT_AUTHORIZED, City, accepted
from tests.kit import wait_for

NOW = datetime(2024, 6, 1, 3, 0, tzinfo=UTC)
T = NOW.timestamp()


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca")


def payload(decl: DisasterDeclaration) -> bytes:
    return decl.model_dump_json().encode()


def test_only_the_city_cas_fresh_declarations_are_taken(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    other = pki.init_ca(tmp_path / "other-ca", name="Not the city")
    d1 = ca.declare("aizu-1", 72, now=NOW)
    d2 = ca.declare("aizu-2", 72, now=NOW)
    forged = other.declare("aizu-1", 72, now=NOW)
    data = tmp_path / "gw"
    data.mkdir()
    decls = Declarations(data, load_city_key(ca.cert_path))

    def refused(raw: bytes, cause: str) -> None:
        with pytest.raises(DeclarationError) as err:
            decls.take(raw, T)
        assert err.value.cause == cause

    refused(payload(forged), "signature")  # another CA's key
    altered = orjson.loads(payload(d1)) | {"area": "aizu-9"}
    refused(orjson.dumps(altered), "signature")  # changed after signing
    refused(orjson.dumps(orjson.loads(payload(d1)) | {"sig": None}), "signature")
    refused(b"{not json", "malformed")
    assert decls.take(payload(d2), T).id == d2.id
    refused(payload(d1), "replayed")  # older than one taken (d1 was signed first)
    refused(payload(d2), "replayed")  # the same again
    d3 = ca.declare("aizu-1", 1, now=NOW - dt.timedelta(hours=2))
    refused(payload(d3), "ended")
    d4 = ca.declare("aizu-1", 1, now=NOW + dt.timedelta(hours=1))
    refused(payload(d4), "future")
    assert decls.refused == {"signature": 3, "malformed": 1, "replayed": 2, "ended": 1, "future": 1}
    assert decls.active("aizu-2", T) is not None and decls.active("aizu-1", T) is None

    # a restart remembers what was taken: a replay stays refused
    again = Declarations(data, load_city_key(ca.cert_path))
    assert again.active("aizu-2", T) is not None
    with pytest.raises(DeclarationError, match="replayed"):
        again.take(payload(d2), T)
    end = ca.declare("", 0, end=d2.id, now=NOW + dt.timedelta(hours=1))
    assert again.take(payload(end), T + 3600).status == "ended"
    assert again.active("aizu-2", T + 3601) is None
    # without a city CA configured, nothing is taken
    with pytest.raises(DeclarationError, match="signature"):
        Declarations(tmp_path / "none", None).take(payload(ca.declare("aizu-1", 72, now=NOW)), T)


@pytest.mark.broker
def test_a_declared_area_answers_with_a_coarse_status_until_it_ends(
    tmp_path: Path, ca: pki.CertificateAuthority, mosquitto: Mosquitto
) -> None:
    cfg = agent_config(
        tmp_path / "gw", mosquitto.port, gateway="gw-safe", safety={"city_ca": str(ca.cert_path), "interval": 1800}
    )
    cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"area": "aizu-1"})})
    agent, clock = consenting_agent(cfg, start=T)
    agent.pipeline.consents.grant("disaster-safety", "h1", now=NOW - dt.timedelta(days=1))
    cloud = Collector(mosquitto.port, "kyojo/v1/gw-safe/event/#", client_id="cloud-gw-safe")
    city = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="city-downlink")
    city.connect("127.0.0.1", mosquitto.port)
    city.loop_start()
    agent.publisher.start()
    try:
        wait_for(lambda: agent.publisher.stats.connected, what="the gateway connected")
        agent.flush()
        assert agent.safety.made == 0  # no declaration: nothing
        forged = pki.init_ca(tmp_path / "evil").declare("aizu-1", 72, now=NOW)
        city.publish(disaster_topic(), payload(forged), qos=1, retain=True).wait_for_publish(10)
        wait_for(lambda: agent.declarations.refused.get("signature") == 1, what="the forged declaration refused")
        decl = ca.declare("aizu-1", 72, now=NOW)
        city.publish(disaster_topic(), payload(decl), qos=1, retain=True).wait_for_publish(10)
        wait_for(lambda: agent.declarations.taken == 1, what="the declaration taken")

        press(cfg.gateway.data_dir, safe=True, check_on_us=False, now=T + 60)
        clock.t = T + 120
        agent.flush()
        clock.t = T + 600  # within the interval: no second status
        agent.flush()
        wait_for(lambda: len(cloud.messages) == 1, what="the status at the city")
        ((topic, raw, _),) = cloud.messages
        batch = decode_events(topic, raw)
        assert (batch.purpose, batch.category.value) == ("disaster-safety", "wellbeing")
        (ev,) = batch.events
        assert ev.kind == "safety.status" and ev.severity == "info"
        # no meter under watch-over here: activity and power are unknown and left out, never sent as "none"
        assert ev.attrs == {"declaration": decl.id, "area": "aizu-1", "safe": True, "check_on_us": False}
        assert agent.status()["safety"] == {
            "area": "aizu-1", "declaration": decl.id, "taken": 1, "refused": {"signature": 1}, "statuses": 1,
        }  # fmt: skip
        rows = agent.conn.execute("SELECT body FROM audit").fetchall()
        assert any("safety.status" in r[0] and "disaster-safety" in r[0] for r in rows)  # in the household's log

        clock.t = T + 2 * 3600
        end = ca.declare("", 0, end=decl.id, now=NOW + dt.timedelta(hours=1))
        city.publish(disaster_topic(), payload(end), qos=1, retain=True).wait_for_publish(10)
        wait_for(lambda: agent.declarations.taken == 2, what="the end taken")
        agent.flush()
        assert agent.safety.made == 1 and agent.status()["safety"]["declaration"] is None
    finally:
        agent.publisher.stop(10)
        cloud.close()
        city.publish(disaster_topic(), b"", qos=1, retain=True).wait_for_publish(10)  # the session's broker is shared
        city.loop_stop()
        city.disconnect()


@pytest.mark.broker
def test_on_the_deployed_broker_only_the_citys_downlink_writes_declarations(city: City) -> None:
    """The topic is the city's: the eraser (the cloud's downlink identity) may publish it, every gateway reads it,
    and no gateway or ingester may write it (the signature is the gateway's real check; this keeps the noise out)."""
    city.start_broker()
    gw_a, gw_b = city.client("gw-a"), city.client("gw-b")
    assert accepted(gw_a.suback(disaster_topic())) and accepted(gw_b.suback(disaster_topic()))
    assert gw_a.puback(disaster_topic(), b"{}", retain=True) == NOT_AUTHORIZED
    assert city.client("ingest-1").puback(disaster_topic(), b"{}", retain=True) == NOT_AUTHORIZED
    # as the city does it: sign on the CA host, publish with the downlink identity
    from typer.testing import CliRunner

    from kyojo.cli import app

    out = city.base / "decl.json"
    made = CliRunner().invoke(app, ["provision", "declare", "--ca-dir", str(city.ca.ca_dir), "--area", "aizu-1",
                                    "--hours", "72", "--out", str(out)])  # fmt: skip
    assert made.exit_code == 0, made.output
    kw = city.ingest_settings(ERASER)
    keys = ("broker_host", "broker_port", "tls_ca", "tls_cert", "tls_key")
    flags = [f"--{k.replace('_', '-')}" for k in keys]
    args = [x for k, f in zip(keys, flags, strict=True) for x in (f, str(kw[k]))]
    sent = CliRunner().invoke(app, ["ingest", "declare", str(out), *args])
    assert sent.exit_code == 0 and "published d1-aizu-1 (active) for aizu-1" in sent.output, sent.output
    signed = out.read_bytes().strip()
    assert gw_a.wait_messages(1) == [(disaster_topic(), signed)]
    assert gw_b.wait_messages(1) == [(disaster_topic(), signed)]
    # the same command with a gateway's identity is refused by the broker
    gw = city.ingest_settings("gw-c")
    bad = [x for k, f in zip(keys, flags, strict=True) for x in (f, str(gw[k]))]
    assert CliRunner().invoke(app, ["ingest", "declare", str(out), *bad]).exit_code == 1


def test_a_status_says_what_the_watched_meter_showed_and_nothing_it_does_not_know(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    from edge_agent.disaster import SafetyStatus

    decls = Declarations(tmp_path, load_city_key(ca.cert_path))
    decl = decls.take(payload(ca.declare("aizu-1", 72, now=NOW)), T)
    status = SafetyStatus(decls, "aizu-1", 1800.0)
    now = T + 600
    # a meter under watch-over: active 2 h ago (so not within 1 h, within 3 and 12 h), power 5 min ago
    (ev,) = status.due(now, ["p1"], last_activity=now - 7200, power_seen=now - 300, device="m", watched=True)
    assert ev.attrs == {"declaration": decl.id, "area": "aizu-1", "active_1h": False, "active_3h": True,
                        "active_12h": True, "power": True, "safe": False, "check_on_us": False}  # fmt: skip
    # the meter silent for 20 min during the disaster: no power (a cut), which the city must see
    (ev,) = status.due(now + 1800, ["p1"], last_activity=now - 7200, power_seen=now - 300, device="m")
    assert ev.attrs["power"] is False
    # no meter under watch-over: unknown, left out
    other = SafetyStatus(decls, "aizu-1", 1800.0)
    (ev,) = other.due(now, ["p1"], last_activity=None, power_seen=None, device="gateway", watched=False)
    assert "power" not in ev.attrs and not any(k.startswith("active_") for k in ev.attrs)
    assert SafetyStatus(decls, "elsewhere", 1800.0).due(now, ["p1"], last_activity=None, power_seen=None,
                                                        device="g") == []  # fmt: skip

"""The city broker's limits as ``kyojo provision broker-config`` renders them (issue 20, section 1: connections,
file descriptors, persistence), and the connection cap enforced by a real Mosquitto on the rendered file."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_ingest.mqtt5 import encode_connect
from provisioning import broker as brokerlib
from provisioning.local import CustomMosquitto, Mosquitto
from tests.citykit import HOST, City
from tests.kit import free_port, wait_for

NO_MATCHING_SUBSCRIBERS = 0x10


def _settings(tmp_path: Path, **kw: object) -> brokerlib.BrokerSettings:
    names = ("ca.crt", "b.crt", "b.key", "crl.pem", "dynamic-security.json")
    return brokerlib.BrokerSettings(*(tmp_path / n for n in names), **kw)  # type: ignore[arg-type]


def test_rendered_config_sizes_connections_persistence_and_latency(tmp_path: Path) -> None:
    lines = brokerlib.render_mosquitto_conf(_settings(tmp_path)).splitlines()
    listener = lines.index("listener 8883 0.0.0.0")
    # max_connections is a listener option: it must come after the listener line to apply to it
    assert lines.index("max_connections 50000") > listener
    for line in ("autosave_interval 60", "autosave_on_changes false", "set_tcp_nodelay true"):
        assert lines.index(line) < listener, line
    assert "persistence false" not in lines  # Debian's mosquitto.conf turns it on; nothing here turns it off


def test_systemd_drop_in_raises_the_descriptor_limit_above_the_connection_cap(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert brokerlib.render_systemd_limits(s).splitlines()[1:] == ["[Service]", "LimitNOFILE=65536"]
    with pytest.raises(brokerlib.BrokerConfigError, match="must exceed max_connections"):
        brokerlib.render_systemd_limits(_settings(tmp_path, max_connections=70_000))
    state = brokerlib.DynsecState({}, {})
    files = brokerlib.broker_files(s, state, ca_cert=b"ca", crl=b"crl")
    assert brokerlib.SYSTEMD_LIMITS_FILE in {f.name for f in files}
    cmds = brokerlib.install_commands(tmp_path / "out", Path("/etc/mosquitto/kyojo"), files)
    drop_in = f"install -D -m 0644 {tmp_path / 'out' / 'mosquitto-limits.conf'} {brokerlib.SYSTEMD_DROPIN}"
    assert cmds[-3:] == [drop_in, "systemctl daemon-reload", "systemctl restart mosquitto"]
    assert not any("mosquitto-limits.conf /etc/mosquitto/kyojo" in c for c in cmds)


def _connect(name: str) -> bytes:
    return encode_connect(name, keepalive=30, clean_start=True, session_expiry=0, receive_maximum=10)


def _handshake(city: City, name: str, port: int) -> str:
    """TLS 1.2 handshake + MQTT CONNECT; 'connack' or why it failed."""
    ctx = city.ssl_context(name, tls12=True)
    try:
        with (
            socket.create_connection((HOST, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            tls.sendall(_connect(name))
            ack = tls.recv(4)
            return "connack" if ack[:1] == b"\x20" and ack[3:4] == b"\x00" else f"no connack: {ack.hex()}"
    except (ssl.SSLError, OSError) as err:
        return type(err).__name__


def _hold(city: City, name: str, port: int) -> ssl.SSLSocket | None:
    """An open mTLS connection of ``name`` that got a successful CONNACK, or None (refused, closed)."""
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        tls = city.ssl_context(name, tls12=True).wrap_socket(raw, server_hostname=HOST)
    except (ssl.SSLError, OSError):
        raw.close()
        return None
    try:
        tls.sendall(_connect(name))
        ack = tls.recv(4)
    except (ssl.SSLError, OSError):
        ack = b""
    if ack[:1] == b"\x20" and len(ack) >= 4 and ack[3] == 0:
        return tls
    tls.close()
    return None


@pytest.mark.broker
def test_a_real_broker_refuses_connections_beyond_max_connections(city: City, tmp_path: Path) -> None:
    port = free_port()
    settings = brokerlib.BrokerSettings(
        cafile=city.ca.cert_path,
        certfile=city.server_dir / "broker.crt",
        keyfile=city.server_dir / "broker.key",
        crlfile=city.ca.crl_path,
        dynsec_file=tmp_path / "dynamic-security.json",
        port=port,
        bind=HOST,
        max_connections=2,
        nofile=100,
    )
    state = brokerlib.desired_state(brokerlib.ca_identities(city.ca), city.group)
    files = brokerlib.broker_files(settings, state, ca_cert=b"", crl=b"")
    brokerlib.write_broker_files(tmp_path, [f for f in files if f.name != "ca.crt" and f.name != "crl.pem"], None)
    with CustomMosquitto(tmp_path / "run", port, (tmp_path / "kyojo.conf").read_text(), persistence=False) as b:
        # connections that stay open until the broker says no. Mosquitto 2.0.11's count is not exact under load
        # (once in a full-suite run it admitted one connection more), so the cap is checked as "refused by the
        # (max_connections + 2)th at the latest", and the refusal by its log line.
        with contextlib.ExitStack() as stack:
            held = 0
            for name in ("gw-a", "gw-b", "gw-c", "eraser-1"):
                sock = _hold(city, name, port)
                if sock is None:
                    break
                stack.enter_context(sock)
                held += 1
            assert 2 <= held <= 3, held
            assert wait_for(lambda: "denied: max_connections exceeded" in b.log_path.read_text(), 5, "the refusal")
        wait_for(lambda: _handshake(city, "gw-c", port) == "connack", 5, "a free connection slot")


def _session(broker: Mosquitto, client_id: str, topic_filter: str) -> None:
    """A persistent session (clean_start=False, 1 h expiry) subscribed to ``topic_filter``, then gone."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    acked = threading.Event()
    c.on_subscribe = lambda *_a: acked.set()
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe(topic_filter, qos=1)
    assert acked.wait(5)
    c.disconnect()
    c.loop_stop()


def _puback(broker: Mosquitto, topic: str) -> int:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic.replace('/', '-')}", protocol=mqtt.MQTTv5)
    got: list[int] = []
    done = threading.Event()

    def on_publish(_c: object, _u: object, _mid: int, rc: ReasonCode, _p: object) -> None:
        got.append(rc.value)
        done.set()

    c.on_publish = on_publish
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, b"x", qos=1)
    assert done.wait(5)
    c.disconnect()
    c.loop_stop()
    return got[0]


@pytest.mark.broker
def test_mosquitto_2_0_forgets_shared_subscriptions_when_it_restarts(fresh_mosquitto: Mosquitto) -> None:
    """Pitfall measured (docs/OPERATIONS.md, "Restarting the broker"): with persistence on, a persistent session's
    plain subscription survives a restart, its ``$share`` subscription does not. Until the ingesters have
    reconnected and subscribed again, a gateway's data gets PUBACK 0x10 (No matching subscribers), i.e. it was
    accepted and delivered to nobody. If a Mosquitto upgrade fixes this, this test fails: update the docs."""
    _session(fresh_mosquitto, "ingest-shared", "$share/g/kyojo/v1/+/agg/+")
    _session(fresh_mosquitto, "ingest-plain", "kyojo/v1/+/event/+")
    assert _puback(fresh_mosquitto, "kyojo/v1/gw-a/agg/energy") == 0x00
    fresh_mosquitto.restart()
    assert _puback(fresh_mosquitto, "kyojo/v1/gw-a/event/health") == 0x00  # the plain one was restored
    assert _puback(fresh_mosquitto, "kyojo/v1/gw-a/agg/energy") == NO_MATCHING_SUBSCRIBERS  # the shared one not

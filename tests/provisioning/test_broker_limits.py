"""The city broker's limits as ``kyojo provision broker-config`` renders them (issue 20, section 1: connections,
file descriptors, persistence), and the connection cap enforced by a real Mosquitto on the rendered file."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from provisioning import broker as brokerlib
from provisioning.local import CustomMosquitto
from tests.citykit import HOST, City
from tests.kit import free_port, wait_for


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


def _handshake(city: City, name: str, port: int) -> str:
    """TLS 1.2 handshake + MQTT CONNECT; 'connack' or why it failed."""
    ctx = city.ssl_context(name, tls12=True)
    try:
        with (
            socket.create_connection((HOST, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            tls.sendall(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 30, 0, 0, 0]))
            return "connack" if tls.recv(4)[:1] == b"\x20" else "no connack"
    except (ssl.SSLError, OSError) as err:
        return type(err).__name__


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
        a = city.client("gw-a", broker=b)
        city.client("gw-b", broker=b)
        assert _handshake(city, "gw-c", port) != "connack"
        assert "max_connections exceeded" in b.log_path.read_text()
        a.close()  # a freed slot is taken again
        wait_for(lambda: _handshake(city, "gw-c", port) == "connack", 5, "a free connection slot")

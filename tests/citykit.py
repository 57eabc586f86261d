"""A small city for tests: a CA, identities made the way installers make them, and a REAL Mosquitto configured by
the production renderer (mTLS + dynamic-security plugin, the secret share group) on a free loopback port.

Use it from a test module (the fixture is function-scoped; each test gets its own CA, broker and clients; it is
registered for every test by tests/conftest.py, so a module imports only the names it uses; mark the test
``broker``)::

    from tests.citykit import NOT_AUTHORIZED, City, accepted

    def test_a_gateway_cannot_join_the_ingesters(city: City) -> None:
        city.start_broker()
        ingest, rogue, gw = city.client("ingest-1"), city.client("gw-c"), city.client("gw-a")
        assert accepted(ingest.suback(f"$share/{city.group}/kyojo/v1/+/agg/+"))
        assert rogue.suback(f"$share/{city.group}/kyojo/v1/+/agg/+") == NOT_AUTHORIZED
        assert gw.puback("kyojo/v1/gw-a/agg/health", b"1") == 0x00
        assert ingest.wait_messages(1) == [("kyojo/v1/gw-a/agg/health", b"1")]
        city.revoke("gw-a")  # CA revoke + CRL, SIGHUP, broker-sync: gw-a is disconnected and stays out
        assert gw.wait_disconnect() is not None and city.probe("gw-a") == "SSLV3_ALERT_CERTIFICATE_REVOKED"

The cast (made by ``City(base)``; ``cast=False`` for a bare CA): gateways :data:`GATEWAYS`, ingesters
:data:`INGESTERS` each with its consent connection ``<name>-consents``, the eraser :data:`ERASER`, the broker
admin :data:`ADMIN`. More: ``city.identity("gw-x")`` (then ``city.sync()`` if a broker already runs: the broker
knows only the identities it was rendered or synced with; an unsynced CN is an *unknown* identity).
Running real programs: ``city.ingest_settings("ingest-1")`` (kwargs for ``IngestSettings``) and
``city.agent_mqtt("gw-a")`` (the agent config's ``[mqtt]`` table).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning import broker as brokerlib
from provisioning import pki
from provisioning.local import CustomMosquitto
from tests.kit import free_port, wait_for

__all__ = [
    "ADMIN",
    "CONSENTS",
    "ERASER",
    "GATEWAYS",
    "GRANTED_QOS1",
    "HOST",
    "INGESTERS",
    "NOT_AUTHORIZED",
    "City",
    "CityBroker",
    "CityClient",
    "accepted",
    "city",
    "make_city",
    "tls_probe",
]

HOST = "127.0.0.1"
NOT_AUTHORIZED = 0x87  # PUBACK/SUBACK reason "Not authorized"
GRANTED_QOS1 = 0x01  # SUBACK "Granted QoS 1"
GATEWAYS = ("gw-a", "gw-b", "gw-c")
INGESTERS = ("ingest-1", "ingest-2")
CONSENTS = tuple(f"{name}-consents" for name in INGESTERS)  # the ingesters' consent connections
ERASER = "eraser-1"
ADMIN = "broker-admin"


def accepted(reason: int) -> bool:
    """A PUBACK/SUBACK reason below 0x80 is a success (0x10 "no matching subscribers" included)."""
    return reason < 0x80


# ------------------------------------------------------------------------------------------------------------
# MQTT v5 client (a real paho client with recorders and synchronous helpers)
# ------------------------------------------------------------------------------------------------------------


class CityClient(mqtt.Client):
    """A paho MQTT v5 client that records CONNACK, PUBACK/SUBACK reason codes, messages and disconnects.

    It IS a ``paho.mqtt.client.Client`` (use any paho call); the helpers wait on a condition variable, never by
    sleeping. Replacing ``on_message`` etc. stops the recording: wrap the recorder instead if you must.
    """

    def __init__(self, identity: str, client_id: str) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self.identity = identity
        self.connack: tuple[ReasonCode, Any] | None = None
        self.connacks: list[ReasonCode] = []  # every CONNACK, paho's automatic reconnects included
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.received: list[mqtt.MQTTMessage] = []
        self.disconnects: list[ReasonCode] = []
        self.connect_failures = 0
        self._cond = threading.Condition()
        self.on_connect = self._record_connect
        self.on_connect_fail = self._record_connect_fail
        self.on_publish = self._record_publish
        self.on_subscribe = self._record_subscribe
        self.on_message = self._record_message
        self.on_disconnect = self._record_disconnect

    # -- recorders (paho's network thread) ----------------------------------------------------------------------
    def _record_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, props: Any) -> None:
        with self._cond:
            self.connack = (rc, props)
            self.connacks.append(rc)
            self._cond.notify_all()

    def _record_connect_fail(self, _c: object, _u: object) -> None:
        with self._cond:
            self.connect_failures += 1
            self._cond.notify_all()

    def _record_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.acks[mid] = rc
            self._cond.notify_all()

    def _record_subscribe(self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        with self._cond:
            self.subacks[mid] = rcs
            self._cond.notify_all()

    def _record_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.received.append(msg)
            self._cond.notify_all()

    def _record_disconnect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.disconnects.append(rc)
            self._cond.notify_all()

    # -- helpers --------------------------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate`` (evaluated under the recorder's lock) holds; False at the deadline."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def puback(self, topic: str, payload: bytes = b"{}", *, retain: bool = False, timeout: float = 5.0) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0x00/0x10 accepted, 0x87 refused)."""
        info = self.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.identity}: publish to {topic} failed locally: {info.rc}"
        assert self.wait_for(lambda: info.mid in self.acks, timeout), f"{self.identity}: no PUBACK for {topic}"
        return self.acks[info.mid].value

    def suback(self, topic_filter: str, *, timeout: float = 5.0) -> int:
        """Subscribe at QoS 1 and return the SUBACK reason code (0x01 granted, 0x87 refused)."""
        rc, mid = self.subscribe(topic_filter, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None, f"{self.identity}: subscribe failed locally: {rc}"
        assert self.wait_for(lambda: mid in self.subacks, timeout), f"{self.identity}: no SUBACK for {topic_filter}"
        return self.subacks[mid][0].value

    def wait_messages(self, count: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Wait until at least ``count`` messages arrived (or the deadline); return all received so far."""
        self.wait_for(lambda: len(self.messages) >= count, timeout)
        with self._cond:
            return list(self.messages)

    def wait_disconnect(self, timeout: float = 5.0) -> ReasonCode | None:
        """The reason of the first disconnect (the broker's DISCONNECT reason, e.g. 0x98 administrative action),
        waiting up to ``timeout``; None if still connected."""
        self.wait_for(lambda: bool(self.disconnects), timeout)
        with self._cond:
            return self.disconnects[0] if self.disconnects else None

    def wait_connect_failure(self, timeout: float = 5.0) -> bool:
        """True once paho's automatic reconnect has failed at least once (e.g. the TLS handshake was refused)."""
        return self.wait_for(lambda: self.connect_failures > 0, timeout)

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.disconnect()
        self.loop_stop()


# ------------------------------------------------------------------------------------------------------------
# Broker
# ------------------------------------------------------------------------------------------------------------


class CityBroker(CustomMosquitto):
    """A real Mosquitto serving the production ``kyojo.conf`` and ``dynamic-security.json`` (in ``workdir``).

    ``crlfile`` is the CA's own ``crl.pem`` (a revocation needs only the SIGHUP, :meth:`reload_and_wait`); the
    plugin saves its live changes back into ``dynsec_path``, which survives :meth:`restart` like on a real host.
    """

    def __init__(self, workdir: Path, port: int, config: str, *, group: str, persistence: bool = False) -> None:
        super().__init__(workdir, port, config, persistence=persistence)
        self.group = group

    @property
    def dynsec_path(self) -> Path:
        """The plugin's JSON file."""
        return self.workdir / "dynamic-security.json"

    def log_text(self) -> str:
        """The broker log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reload_and_wait(self, timeout: float = 5.0) -> None:
        """SIGHUP (re-reads the CRL, not the dynsec JSON) and wait for the broker to log that it did."""
        before = self.log_text().count("Reloading config.")
        self.reload()
        wait_for(lambda: self.log_text().count("Reloading config.") > before, timeout, "'Reloading config.'")


# ------------------------------------------------------------------------------------------------------------
# The city
# ------------------------------------------------------------------------------------------------------------


class City:
    """A CA in ``base``, identities by role, real brokers and clients; :meth:`close` stops what it started."""

    def __init__(self, base: Path, *, cast: bool = True) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.ca = pki.init_ca(self.base / "ca")
        #: the ingesters' secret $share group (the same file `kyojo provision broker-config` makes)
        self.group = brokerlib.load_share_group(self.ca.ca_dir, create=True)
        self.server_dir = self.base / "server"
        self.ca.issue_server("broker", self.server_dir, ips=[HOST], dns=["localhost"])
        self.tls: dict[str, Path] = {}
        self.roles: dict[str, pki.Role] = {}
        self.brokers: list[CityBroker] = []
        self.clients: list[CityClient] = []
        self.identity(ADMIN, pki.Role.ADMIN)
        if cast:
            for gw in GATEWAYS:
                self.identity(gw)
            for name in (*INGESTERS, *CONSENTS):
                self.identity(name, pki.Role.INGEST)
            self.identity(ERASER, pki.Role.ERASER)

    # -- identities -----------------------------------------------------------------------------------------
    def identity(self, name: str, role: pki.Role = pki.Role.GATEWAY) -> Path:
        """Enroll ``name`` as an installer would (key made in its own state dir); return its ``tls`` directory
        (``identity.crt``, ``identity.key``, ``ca.crt``). Idempotent for an identity already made."""
        if name in self.tls:
            assert self.roles[name] is role, f"{name} is already a {self.roles[name].value}"
            return self.tls[name]
        code = self.ca.enroll(name, role)
        csr = pki.create_request(self.base / "ids" / name, name, code, role)
        pem = self.ca.sign_csr(csr.read_bytes(), expected_id=name)
        self.tls[name] = pki.install_certificate(self.base / "ids" / name, pem, self.ca.cert_path.read_bytes()).parent
        self.roles[name] = role
        return self.tls[name]

    def ssl_context(self, name: str | None, *, tls12: bool = False) -> ssl.SSLContext:
        """Client TLS context trusting the city CA, with ``name``'s certificate (None: no client certificate)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(self.ca.cert_path))
        if name is not None:
            tls = self.tls[name]
            ctx.load_cert_chain(str(tls / pki.CERT_NAME), str(tls / pki.KEY_NAME))
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    # -- brokers --------------------------------------------------------------------------------------------
    def broker(self, workdir: Path, *, persistence: bool = False) -> CityBroker:
        """A broker rendered from the CA's current identities, NOT started (``with city.broker(dir) as b:``)."""
        workdir = Path(workdir)
        settings = brokerlib.BrokerSettings(
            cafile=self.ca.cert_path,
            certfile=self.server_dir / "broker.crt",
            keyfile=self.server_dir / "broker.key",
            crlfile=self.ca.crl_path,
            dynsec_file=workdir / "dynamic-security.json",
            port=free_port(),
            bind=HOST,
        )
        state = brokerlib.desired_state(brokerlib.ca_identities(self.ca), self.group)
        files = brokerlib.broker_files(
            settings, state, ca_cert=self.ca.cert_path.read_bytes(), crl=self.ca.crl_path.read_bytes()
        )
        wanted = {"kyojo.conf", settings.dynsec_file.name}  # the rest is used in place (CA dir, server dir)
        brokerlib.write_broker_files(workdir, [f for f in files if f.name in wanted], owner=None)
        conf = (workdir / "kyojo.conf").read_text()
        made = CityBroker(workdir, settings.port, conf, group=self.group, persistence=persistence)
        self.brokers.append(made)
        return made

    def start_broker(self, workdir: Path | None = None, *, persistence: bool = False) -> CityBroker:
        """Render and start a broker (stopped by :meth:`close`); it becomes :attr:`current_broker`."""
        made = self.broker(workdir or self.base / f"mosquitto-{len(self.brokers) + 1}", persistence=persistence)
        made.start()
        return made

    @property
    def current_broker(self) -> CityBroker:
        """The most recently made broker that is running."""
        running = [b for b in self.brokers if b.running]
        assert running, "no broker running: call city.start_broker() first"
        return running[-1]

    # -- clients --------------------------------------------------------------------------------------------
    def client(
        self,
        name: str,
        *,
        broker: CityBroker | None = None,
        client_id: str | None = None,
        clean_start: bool = True,
        properties: Properties | None = None,
        will: tuple[str, bytes] | None = None,
        reconnect_delay: tuple[int, int] = (1, 2),
        check: bool = True,
        timeout: float = 5.0,
    ) -> CityClient:
        """A paho v5 client of identity ``name`` over mTLS, connected (CONNACK received; with ``check`` it must
        be a success). The client id defaults to the identity (the broker replaces it by the CN anyway). paho
        reconnects by itself after a disconnect (``reconnect_delay`` seconds); :meth:`close` disconnects it."""
        b = broker or self.current_broker
        c = CityClient(name, client_id or name)
        c.tls_set_context(self.ssl_context(name))
        c.reconnect_delay_set(*reconnect_delay)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        self.clients.append(c)
        c.connect(b.host, b.port, keepalive=30, clean_start=clean_start, properties=properties)
        c.loop_start()
        assert c.wait_for(lambda: c.connack is not None, timeout), f"{name} got no CONNACK"
        assert c.connack is not None
        if check:
            assert not c.connack[0].is_failure, f"{name}: CONNACK {c.connack[0]}"
        return c

    def probe(self, name: str | None, *, broker: CityBroker | None = None) -> str:
        """Raw TLS 1.2 + MQTT v5 CONNECT with ``name``'s certificate (no retries): ``"connack:<hex>"`` if the broker
        answered, else the TLS error's reason (e.g. ``SSLV3_ALERT_CERTIFICATE_REVOKED``). TLS 1.2 puts the
        server's verdict on the client certificate inside the handshake (with 1.3 it races with EOF)."""
        b = broker or self.current_broker
        return tls_probe(self.ssl_context(name, tls12=True), b.port)

    # -- operator actions -----------------------------------------------------------------------------------
    def sync(self, *, broker: CityBroker | None = None, kick: Iterable[str] = ()) -> list[str]:
        """``kyojo provision broker-sync``: make the live broker match the CA, as the admin identity."""
        b = broker or self.current_broker
        desired = brokerlib.desired_state(brokerlib.ca_identities(self.ca), self.group)
        with brokerlib.admin_session(b.host, b.port, self.tls[ADMIN]) as admin:
            return brokerlib.broker_sync(admin, desired) + brokerlib.kick(admin, kick)

    def revoke(self, name: str, reason: str = "key compromise") -> list[str]:
        """What an operator does: CA revoke + new CRL, reload it in every running broker (SIGHUP), broker-sync
        (deletes the identity from dynamic security, which disconnects it). Returns the sync's changes."""
        self.ca.revoke(name, reason)
        changes: list[str] = []
        for b in [b for b in self.brokers if b.running]:
            b.reload_and_wait()
            changes += self.sync(broker=b)
        return changes

    # -- settings for real programs -------------------------------------------------------------------------
    def ingest_settings(self, name: str, *, broker: CityBroker | None = None) -> dict[str, Any]:
        """Keyword arguments for ``cloud_ingest.config.IngestSettings`` of ingester ``name`` (its consent
        connection uses ``<name>-consents`` when that identity exists), in the secret group."""
        b = broker or self.current_broker
        tls = self.tls[name]
        kw: dict[str, Any] = {
            "broker_host": b.host,
            "broker_port": b.port,
            "tls_ca": tls / pki.CA_NAME,
            "tls_cert": tls / pki.CERT_NAME,
            "tls_key": tls / pki.KEY_NAME,
            "client_id": name,
            "group": self.group,
        }
        consent = self.tls.get(f"{name}-consents")
        if consent is not None:
            kw |= {"consent_tls_cert": consent / pki.CERT_NAME, "consent_tls_key": consent / pki.KEY_NAME}
        return kw

    def agent_mqtt(self, name: str, *, broker: CityBroker | None = None) -> dict[str, Any]:
        """The ``[mqtt]`` table of gateway ``name``'s agent config (``agentkit.agent_config(..., mqtt=...)``)."""
        b = broker or self.current_broker
        tls = self.tls[name]
        return {
            "host": b.host,
            "port": b.port,
            "tls": {"ca": tls / pki.CA_NAME, "cert": tls / pki.CERT_NAME, "key": tls / pki.KEY_NAME},
        }

    # -- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every client, stop every broker."""
        for c in self.clients:
            c.close()
        self.clients.clear()
        for b in self.brokers:
            b.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def make_city(base: Path) -> City:
    """A city with the standard cast (kept for older callers; same as ``City(base)``)."""
    return City(base)


_CONNECT_V5 = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 30, 0, 0, 1]) + b"p"


def tls_probe(ctx: ssl.SSLContext, port: int, host: str = HOST) -> str:
    """Handshake with ``ctx`` and send a minimal MQTT v5 CONNECT: ``"connack:<hex>"`` or the TLS error's reason."""
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(_CONNECT_V5)
            data = tls.recv(64)
    except ssl.SSLError as err:
        return str(err.reason or err)
    except OSError as err:
        return type(err).__name__
    if data[:1] != b"\x20":
        return f"no-connack:{data.hex()}"
    return f"connack:{data[3]:02x}"


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    """A fresh :class:`City` (standard cast, no broker yet: ``city.start_broker()``); closed after the test."""
    with City(tmp_path / "city") as made:
        yield made

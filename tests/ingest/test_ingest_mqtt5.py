"""The lean MQTT v5 codec (cloud_ingest.mqtt5) and subscriber (cloud_ingest.leanclient).

Frames are built here from the standard's byte layouts (and, for properties, with paho's independent encoder),
not with the codec under test. The subscriber runs against the real Mosquitto, against a fake broker that
sends malformed bytes, and over TLS with a CA made here with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_ingest.config import IngestSettings
from cloud_ingest.leanclient import LeanSubscriber, make_ssl_context
from cloud_ingest.mqtt5 import (
    Connack,
    Disconnect,
    MQTTProtocolError,
    Parser,
    Pingresp,
    Suback,
    decode_properties,
    decode_varint,
    encode_connect,
    encode_puback,
    encode_pubacks,
    encode_subscribe,
    encode_varint,
)
from provisioning.local import Mosquitto


def varint(n: int) -> bytes:
    """§1.5.5, written out independently of the codec."""
    out = b""
    while True:
        n, byte = n >> 7, n & 0x7F
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def publish(topic: str, payload: bytes, mid: int = 0, qos: int = 1, props: bytes = b"\x00", dup: bool = False) -> bytes:
    body = struct.pack(">H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack(">H", mid)
    body += props + payload
    return bytes([0x30 | qos << 1 | (0x08 if dup else 0)]) + varint(len(body)) + body


CONNACK_OK = b"\x20\x03\x00\x00\x00"  # session present 0, reason Success, no properties
SUBACK_QOS1 = b"\x90\x04\x00\x01\x00\x01"  # packet id 1, no properties, granted QoS 1


# -- codec ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_varint_round_trip_at_the_boundaries(n: int) -> None:
    raw = encode_varint(n)
    assert raw == varint(n)
    assert len(raw) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    assert decode_varint(raw + b"\xff", 0) == (n, len(raw))
    assert decode_varint(raw[:-1], 0) is None  # incomplete: wait for more bytes


def test_varint_limits() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(268_435_456)
    with pytest.raises(MQTTProtocolError):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)  # a fifth byte is malformed


def test_connect_bytes_are_the_standards() -> None:
    raw = encode_connect("ing-1", keepalive=30, clean_start=False, session_expiry=3600, receive_maximum=10_000)
    props = b"\x11" + struct.pack(">I", 3600) + b"\x21" + struct.pack(">H", 10_000)
    body = b"\x00\x04MQTT\x05\x00" + struct.pack(">H", 30) + bytes([len(props)]) + props + b"\x00\x05ing-1"
    assert raw == b"\x10" + varint(len(body)) + body
    with_auth = encode_connect(
        "c", keepalive=5, clean_start=True, session_expiry=0, receive_maximum=1, username="u", password=b"p"
    )
    assert with_auth[9] == 0x80 | 0x40 | 0x02  # user name, password, clean start
    assert with_auth.endswith(b"\x00\x01c\x00\x01u\x00\x01p")


def test_subscribe_and_puback_bytes() -> None:
    raw = encode_subscribe(7, "$share/g/kyojo/v1/+/agg/+", qos=1)
    filt = b"$share/g/kyojo/v1/+/agg/+"
    body = b"\x00\x07\x00" + struct.pack(">H", len(filt)) + filt + b"\x01"
    assert raw == b"\x82" + varint(len(body)) + body
    assert encode_puback(0x1234) == b"\x40\x02\x12\x34"
    assert encode_pubacks([1, 2, 65535]) == b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\xff\xff"


def test_properties_agree_with_paho_encoder() -> None:
    props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
    props.ServerKeepAlive = 20
    props.AssignedClientIdentifier = "auto-1"
    props.ReceiveMaximum = 100
    props.MaximumPacketSize = 1 << 20
    props.UserProperty = [("a", "1"), ("b", "2")]
    raw = props.pack()  # type: ignore[no-untyped-call]
    got, end = decode_properties(raw, 0, len(raw))
    assert end == len(raw)
    assert got == {0x13: 20, 0x12: "auto-1", 0x21: 100, 0x27: 1 << 20, 0x26: [("a", "1"), ("b", "2")]}
    connack = b"\x20" + varint(2 + len(raw)) + b"\x01\x00" + raw
    _, controls = Parser().feed(connack)
    assert controls == [Connack(True, 0, got)]


def test_many_frames_per_read_and_frames_split_across_reads() -> None:
    payloads = [bytes([i]) * (i * 37) for i in range(1, 40)]
    stream = CONNACK_OK + SUBACK_QOS1
    stream += b"".join(publish(f"kyojo/v1/gw-{i}/agg/energy", p, mid=i) for i, p in enumerate(payloads, 1))
    stream += publish("t/q0", b"zero", qos=0) + b"\xd0\x00" + b"\xe0\x00"
    expected_msgs = [(f"kyojo/v1/gw-{i}/agg/energy", p, i, 1) for i, p in enumerate(payloads, 1)]
    expected_msgs.append(("t/q0", b"zero", 0, 0))
    for step in (1, 2, 3, 7, 64, 1000, len(stream)):
        parser = Parser()
        msgs: list[tuple[str, bytes, int, int]] = []
        controls: list[Any] = []
        for i in range(0, len(stream), step):
            m, c = parser.feed(stream[i : i + step])
            msgs += [(t, bytes(p), mid, q) for t, p, mid, q, _dup in m]  # payload views are valid per read
            controls += c
        assert msgs == expected_msgs, step
        assert controls == [Connack(False, 0), Suback(1, (1,)), Pingresp(), Disconnect(0)], step
        assert parser.buffered == 0


def test_publish_with_properties_and_dup() -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 60
    raw_props = props.pack()  # type: ignore[no-untyped-call]
    msgs, _ = Parser().feed(publish("a/b", b"{}", mid=9, props=raw_props, dup=True))
    topic, payload, mid, qos, dup = msgs[0]
    assert (topic, bytes(payload), mid, qos, dup) == ("a/b", b"{}", 9, 1, True)


def _alias_props() -> bytes:
    return b"\x03\x23\x00\x01"  # Topic Alias = 1


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
        (publish("a", b"x", mid=1, qos=2), "QoS 2"),
        (publish("a", b"x", mid=0), "packet identifier 0"),
        (publish("a", b"x", mid=1, props=_alias_props()), "Topic Alias"),
        (publish("", b"x", mid=1), "empty topic"),
        (publish("a/+", b"x", mid=1), "wildcard"),
        (b"\x32\x06\x00\x02\xff\xfe\x00\x01", "invalid UTF-8"),
        (publish("a", b"x", mid=1, props=b"\x02\x7f\x00"), "unknown property"),
        (publish("a", b"", mid=1, props=b"\x05\x02\x00"), "property runs past"),
        (b"\x32\x01\x00", "topic length past the end"),
        (b"\xd1\x00", "reserved flags"),
        (b"\xd0\x01\x00", "PINGRESP with a body"),
        (b"\x62\x02\x00\x01", "PUBREL (we never take QoS 2)"),
        (b"\x00\x00", "packet type 0"),
        (b"\x30\xff\xff\xff\xff\x01", "5-byte remaining length"),
        (b"\x20\x02\x02\x00", "reserved CONNACK flag"),
    ],
)
def test_malformed_frames_raise_a_typed_error(frame: bytes, why: str) -> None:
    with pytest.raises(MQTTProtocolError):
        Parser().feed(frame)


def test_packet_size_limit() -> None:
    parser = Parser(max_packet=100)
    with pytest.raises(MQTTProtocolError, match="exceeds"):
        parser.feed(publish("a", b"x" * 200, mid=1)[:10])


# -- the subscriber against the real Mosquitto ---------------------------------------------------------------
class Collector:
    """Callbacks of a LeanSubscriber, recorded."""

    def __init__(self) -> None:
        self.msgs: list[tuple[int, str, bytes, int, bool]] = []
        self.connacks: list[Connack] = []
        self.subscribed = threading.Event()
        self.disconnects: list[str] = []
        self.lock = threading.Lock()

    def on_messages(self, gen: int, msgs: list[Any]) -> None:
        with self.lock:
            self.msgs += [(gen, t, bytes(p), mid, dup) for t, p, mid, _q, dup in msgs]

    def on_connect(self, _gen: int, connack: Connack) -> None:
        self.connacks.append(connack)

    def on_subscribe(self, _gen: int, codes: tuple[int, ...]) -> None:
        assert codes == (1,)
        self.subscribed.set()

    def on_disconnect(self, reason: str) -> None:
        self.disconnects.append(reason)

    def client(self, host: str, port: int, client_id: str, filt: str, **kw: Any) -> LeanSubscriber:
        return LeanSubscriber(
            host,
            port,
            client_id,
            filt,
            keepalive=kw.pop("keepalive", 30),
            session_expiry=60,
            receive_maximum=kw.pop("receive_maximum", 100),
            on_messages=self.on_messages,
            on_connect=self.on_connect,
            on_subscribe=self.on_subscribe,
            on_disconnect=self.on_disconnect,
            reconnect_min=0.05,
            reconnect_max=0.2,
            **kw,
        )

    def wait(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.msgs) >= n:
                    return True
            time.sleep(0.01)
        return False


def _publisher(broker: Mosquitto) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


@pytest.mark.broker
def test_unacked_messages_come_back_to_a_resumed_session(mosquitto: Mosquitto) -> None:
    """Receive Maximum caps what is in flight; unacked messages are resent (DUP) after reconnecting."""
    root = f"t/{uuid.uuid4().hex[:8]}"
    cid = f"lean-{uuid.uuid4().hex[:8]}"
    first = Collector()
    sub = first.client(mosquitto.host, mosquitto.port, cid, f"$share/g/{root}/#", receive_maximum=5)
    sub.start()
    assert first.subscribed.wait(10)
    pub = _publisher(mosquitto)
    for i in range(8):
        pub.publish(f"{root}/{i}", f"m{i}".encode(), qos=1).wait_for_publish(5)
    assert first.wait(5)
    time.sleep(0.3)
    assert len(first.msgs) == 5  # Receive Maximum: no more until we acknowledge
    gen = first.msgs[0][0]
    sub.ack(gen, [first.msgs[0][3], first.msgs[1][3]])
    assert first.wait(7)  # acknowledging makes room (Mosquitto 2.0.11 may let one more through)
    time.sleep(0.2)
    seen = {p for _g, _t, p, _m, _d in first.msgs}
    sub.stop()  # DISCONNECT 0x00: the session and its unacked messages stay on the broker
    assert first.connacks[0].session_present is False

    second = Collector()
    sub2 = second.client(mosquitto.host, mosquitto.port, cid, f"$share/g/{root}/#")
    sub2.start()
    assert second.wait(6)
    assert second.connacks[0].session_present is True
    payloads = sorted(p for _g, _t, p, _m, _d in second.msgs)
    assert payloads == [f"m{i}".encode() for i in range(2, 8)]  # all but the two acknowledged
    assert all(dup for _g, _t, p, _m, dup in second.msgs if p in seen)  # resent ones carry DUP
    gen2 = second.msgs[0][0]
    sub2.ack(gen2, [m for _g, _t, _p, m, _d in second.msgs])
    time.sleep(0.2)
    sub2.stop()
    pub.disconnect()
    pub.loop_stop()


# -- a fake broker: malformed bytes, keepalive, TLS ------------------------------------------------------------
class FakeBroker:
    """Accepts connections on loopback and answers each with ``script(conn)`` (optionally over TLS)."""

    def __init__(self, script: Any, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.tls = tls
        self.received: list[bytes] = []
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                conn.settimeout(5)
                self.script(self, conn)
            except OSError:
                pass
            finally:
                conn.close()

    def recv_some(self, conn: socket.socket) -> bytes:
        data = conn.recv(65536)
        self.received.append(data)
        return data

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def test_malformed_bytes_drop_the_connection_and_the_client_reconnects() -> None:
    def script(fb: FakeBroker, conn: socket.socket) -> None:
        fb.recv_some(conn)  # CONNECT
        conn.sendall(CONNACK_OK)
        fb.recv_some(conn)  # SUBSCRIBE
        conn.sendall(SUBACK_QOS1 + publish("a/b", b"ok", mid=1) + b"\x36\x02\x00\x00")  # then QoS 3
        time.sleep(0.5)  # the client must close first

    fb = FakeBroker(script)
    col = Collector()
    sub = col.client("127.0.0.1", fb.port, "c1", "a/#")
    sub.start()
    try:
        deadline = time.monotonic() + 10
        while fb.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fb.connections >= 2  # reconnected after dropping the bad connection
        assert sub.protocol_errors >= 1
        assert any("QoS 3" in r for r in col.disconnects)
        # the good PUBLISH in the same read as the bad frame is dropped with the connection: never acked,
        # so a real broker resends it on the resumed session
        assert not col.msgs
    finally:
        sub.stop()
        fb.close()


def test_keepalive_pings_and_acks_go_out_on_the_wire() -> None:
    got_ping = threading.Event()

    def script(fb: FakeBroker, conn: socket.socket) -> None:
        fb.recv_some(conn)
        conn.sendall(b"\x20\x06\x00\x00\x03\x13\x00\x01")  # CONNACK, Server Keep Alive = 1 s
        fb.recv_some(conn)
        conn.sendall(SUBACK_QOS1 + publish("a/b", b"x", mid=42))
        buf = b""
        while not got_ping.is_set():
            buf += fb.recv_some(conn)
            if b"\xc0\x00" in buf:
                conn.sendall(b"\xd0\x00")
                got_ping.set()
        fb.received.append(buf)

    fb = FakeBroker(script)
    col = Collector()
    sub = col.client("127.0.0.1", fb.port, "c2", "a/#", keepalive=60)
    sub.start()
    try:
        assert col.wait(1)
        sub.ack(col.msgs[0][0], [42])
        assert got_ping.wait(5)  # within the server's 1 s keep alive, not our 60 s
        assert b"\x40\x02\x00\x2a" in b"".join(fb.received)
    finally:
        sub.stop()
        fb.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kyojo test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


def test_tls_settings_build_a_verifying_context(tls_files: tuple[Path, Path, Path]) -> None:
    ca, _cert, _key = tls_files
    ctx = make_ssl_context(ca)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert IngestSettings(tls_ca=ca, mqtt_client="lean").mqtt_client == "lean"


def test_lean_client_over_tls(tls_files: tuple[Path, Path, Path]) -> None:
    ca, cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    payloads = [bytes([65 + i % 26]) * 20_000 for i in range(20)]  # spans many TLS records

    def script(fb: FakeBroker, conn: socket.socket) -> None:
        fb.recv_some(conn)
        conn.sendall(CONNACK_OK)
        fb.recv_some(conn)
        conn.sendall(SUBACK_QOS1 + b"".join(publish("a/b", p, mid=i) for i, p in enumerate(payloads, 1)))
        buf = b""
        while buf.count(b"\x40\x02") < len(payloads):
            buf += fb.recv_some(conn)
        fb.received.append(buf)

    fb = FakeBroker(script, tls=server_ctx)
    col = Collector()
    sub = col.client("127.0.0.1", fb.port, "c3", "a/#", ssl_context=make_ssl_context(ca))
    sub.start()
    try:
        assert col.wait(len(payloads))
        assert [p for _g, _t, p, _m, _d in col.msgs] == payloads
        sub.ack(col.msgs[0][0], [m for _g, _t, _p, m, _d in col.msgs])
        deadline = time.monotonic() + 5
        while b"".join(fb.received).count(b"\x40\x02") < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b"".join(fb.received).count(b"\x40\x02") >= len(payloads)
    finally:
        sub.stop()
        fb.close()


def test_tls_to_an_untrusted_broker_fails(tls_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _ca, cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    fb = FakeBroker(lambda fb, conn: fb.recv_some(conn), tls=server_ctx)
    col = Collector()
    sub = col.client("127.0.0.1", fb.port, "c4", "a/#", ssl_context=make_ssl_context(None))  # system CAs
    sub.start()
    try:
        deadline = time.monotonic() + 5
        while not col.disconnects and time.monotonic() < deadline:
            time.sleep(0.02)
        assert col.disconnects and "CERTIFICATE_VERIFY_FAILED" in col.disconnects[0]
        assert not col.connacks
    finally:
        sub.stop()
        fb.close()

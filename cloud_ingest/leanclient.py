"""A lean MQTT v5 subscriber for the ingester's data connection (the codec is :mod:`cloud_ingest.mqtt5`).

Why not paho here: paho parses each packet with several small reads and builds a ``Properties`` object and an
``MQTTMessage`` per PUBLISH, which caps it near 8-9k QoS 1 messages/s per process on this machine
(docs/ARCHITECTURE.md, "Pitfalls measured").
This client reads up to 256 KiB per ``recv``, parses every packet in it from one bytes object (payloads are
memoryviews, no copies), hands them to the ingester as one list, and sends the PUBACKs of a whole written
batch with one ``sendall``.

One thread does all socket I/O (TLS objects must not be read and written from two threads at once). Other
threads queue PUBACKs with :meth:`LeanSubscriber.ack` and wake it through a socket pair. Each successful
CONNECT starts a new *generation*: PUBACKs queued for an older generation are dropped, because packet
identifiers belong to one network connection and the broker resends unacknowledged messages of a resumed
session anyway (MQTT v5 §4.4).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cloud_ingest.mqtt5 import (
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    SERVER_KEEP_ALIVE,
    Connack,
    Disconnect,
    Message,
    MQTTProtocolError,
    Parser,
    Suback,
    encode_connect,
    encode_pubacks,
    encode_subscribe,
)
from kyojo.runtime.backoff import jittered

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024


def make_ssl_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client TLS context: verify the broker against ``ca`` (system store when None); mTLS when cert/key."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class LeanSubscriber:
    """Connects (clean_start=False, session expiry, Receive Maximum), subscribes to one filter at QoS 1, and
    delivers messages in lists; reconnects with jittered backoff until :meth:`stop`.

    Callbacks run on the client's thread: ``on_connect(generation, connack)`` (also for a refused CONNECT:
    check ``reason_code``), ``on_subscribe(generation, reason_codes)``, ``on_messages(generation, messages)``
    (each payload a memoryview valid only during the call), ``on_disconnect(reason)``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        topic_filter: str | Sequence[str],
        *,
        keepalive: int,
        session_expiry: int,
        receive_maximum: int,
        on_messages: Callable[[int, list[Message]], None],
        on_connect: Callable[[int, Connack], None],
        on_subscribe: Callable[[int, tuple[int, ...]], None],
        on_disconnect: Callable[[str], None],
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.client_id, self.topic_filter = host, port, client_id, topic_filter
        self._keepalive = keepalive
        self._connect_packet = encode_connect(
            client_id,
            keepalive=keepalive,
            clean_start=False,
            session_expiry=session_expiry,
            receive_maximum=receive_maximum,
            username=username,
            password=password.encode() if password is not None else None,
        )
        self._on_messages = on_messages
        self._on_connect = on_connect
        self._on_subscribe = on_subscribe
        self._on_disconnect = on_disconnect
        self._ssl = ssl_context
        self._backoff = (reconnect_min, reconnect_max)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._acks: list[int] = []
        self._gen = 0
        self._signalled = False
        self._closing = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self.protocol_errors = 0

    @property
    def generation(self) -> int:
        """The current connection's generation (0 before the first CONNACK)."""
        return self._gen

    def start(self) -> None:
        """Start the network thread (connects in the background)."""
        self._thread = threading.Thread(target=self._run, name=f"kyojo-mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    def ack(self, generation: int, packet_ids: list[int]) -> None:
        """Queue PUBACKs (thread-safe); dropped when ``generation`` is not the current connection's."""
        if not packet_ids:
            return
        with self._lock:
            if generation != self._gen:
                return
            self._acks.extend(packet_ids)
            if self._signalled:
                return
            self._signalled = True
        self._wake()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued, then DISCONNECT (reason 0: the session is kept) and end the thread."""
        with self._lock:
            self._closing = True
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full of wake-ups already (BlockingIOError), or closed while stopping
            self._wake_w.send(b"\x00")

    # -- network thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            sock: socket.socket | None = None
            reason = "connection closed"
            try:
                sock = self._open()
                attempt = 0
                reason = self._session(sock)
            except MQTTProtocolError as err:
                self.protocol_errors += 1
                reason = f"protocol error: {err}"
            except (OSError, TimeoutError) as err:
                reason = f"{type(err).__name__}: {err}"
            finally:
                if sock is not None:
                    sock.close()
            with self._lock:
                self._acks.clear()
            self._on_disconnect(reason)
            if self._stop.is_set():
                return
            lo, hi = self._backoff
            delay = jittered(attempt, lo, hi)  # full jitter: uniform in [0, min(hi, lo * 2**attempt)]
            attempt += 1
            log.warning("%s: %s; reconnecting in %.1fs", self.client_id, reason, delay)
            self._stop.wait(delay)

    def _open(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is None:
            return raw
        try:
            return self._ssl.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _session(self, sock: socket.socket) -> str:
        """One connection from CONNECT to its end; returns why it ended."""
        parser = Parser()
        sock.sendall(self._connect_packet)
        connack: Connack | None = None
        deadline = time.monotonic() + self._connect_timeout
        pending_msgs: list[Message] = []
        while connack is None:  # the server sends nothing before CONNACK (§3.2)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(_READ_SIZE)
            if not data:
                return "closed by the broker before CONNACK"
            msgs, controls = parser.feed(data)
            if controls and isinstance(controls[0], Connack):
                connack = controls[0]
                pending_msgs = msgs  # a resumed session may send PUBLISHes right after CONNACK, same read
                if len(controls) > 1:
                    raise MQTTProtocolError("protocol error: unexpected packet right after CONNACK")
            elif controls or msgs:
                raise MQTTProtocolError("protocol error: the first packet from the server is not CONNACK")
        sock.settimeout(None)
        with self._lock:
            self._gen += 1
            gen = self._gen
            self._acks.clear()
        self._on_connect(gen, connack)
        if connack.reason_code >= 0x80:
            return f"CONNACK refused: reason 0x{connack.reason_code:02x}"
        keepalive = connack.properties.get(SERVER_KEEP_ALIVE, self._keepalive)
        assert isinstance(keepalive, int)
        sock.sendall(encode_subscribe(1, self.topic_filter, qos=1))
        last_sent = last_recv = time.monotonic()
        ping_out = False
        if pending_msgs:
            self._on_messages(gen, pending_msgs)
        wake = self._wake_r
        is_tls = isinstance(sock, ssl.SSLSocket)
        tick = keepalive / 2 if keepalive else 1.0
        while True:
            readable, _, _ = select.select([sock, wake], [], [], tick)
            if wake in readable:
                try:
                    while wake.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            with self._lock:
                acks, self._acks = self._acks, []
                self._signalled = False
                closing = self._closing
            if acks:
                sock.sendall(encode_pubacks(acks))
                last_sent = time.monotonic()
            if closing:
                sock.sendall(DISCONNECT_PACKET)
                return "stopped"
            if sock in readable:
                data = sock.recv(_READ_SIZE)
                if not data:
                    return "closed by the broker"
                while is_tls and sock.pending():  # type: ignore[attr-defined]
                    data += sock.recv(_READ_SIZE)
                last_recv = time.monotonic()
                msgs, controls = parser.feed(data)
                for ctl in controls:
                    if isinstance(ctl, Suback):
                        self._on_subscribe(gen, ctl.reason_codes)
                    elif isinstance(ctl, Disconnect):
                        return f"DISCONNECT from the broker: reason 0x{ctl.reason_code:02x}"
                    elif isinstance(ctl, Connack):
                        raise MQTTProtocolError("protocol error: second CONNACK")
                    else:
                        ping_out = False  # PINGRESP (or a stray PUBACK): the link is alive either way
                if msgs:
                    self._on_messages(gen, msgs)
            if keepalive:
                now = time.monotonic()
                if ping_out and now - last_recv > 1.5 * keepalive:
                    return f"no PINGRESP within {1.5 * keepalive:.0f}s"
                if now - last_sent >= keepalive * 0.75 and not ping_out:
                    sock.sendall(PINGREQ_PACKET)
                    last_sent = now
                    ping_out = True

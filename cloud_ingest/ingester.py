"""The cloud ingester: MQTT v5 shared subscription -> validate -> consent check -> InfluxDB -> PUBACK.

Protocol facts this relies on:

- MQTT v5 shared subscriptions (``$share/<group>/<filter>``): the broker hands each message to ONE member
  of the group, so ingesters scale out by starting more processes with the same group.
- QoS 1 with manual acknowledgement: paho sends the PUBACK only when we call ``client.ack(mid, 1)``, which
  we do after InfluxDB answered 2xx for the message's points. A message never acknowledged stays in the
  client's session on the broker and is sent again (DUP) when the same client id reconnects with
  ``clean_start=False`` before the Session Expiry Interval runs out: an ingester killed with -9 between
  receive and write loses nothing. Redelivery writes the same points again, which overwrites them
  (measurement + tags + timestamp identify a point), so nothing doubles.
- Receive Maximum (CONNECT property): the broker never has more than that many unacknowledged QoS 1
  messages outstanding to us. That is the protocol's own backpressure: while InfluxDB is slow or down,
  the broker simply stops sending (and queues for us) instead of us buffering without bound.
- The data connection uses :class:`cloud_ingest.leanclient.LeanSubscriber` by default (``mqtt_client =
  "lean"``): it delivers every message of one socket read as one list, and sends the PUBACKs of a written
  batch with one ``sendall``. ``mqtt_client = "paho"`` keeps paho on the data path as a fallback.
- Consents travel on a second connection (clean session, unshared subscription, automatic PUBACK), so
  they never wait behind unacknowledged data that Receive Maximum holds back. The snapshot of retained
  consents is complete when a marker we publish to our own sync topic after the SUBACK comes back: one
  session's queue is delivered in order. Only then is the data connection opened, so no data is judged
  against a half-loaded consent table (a resumed session resends in-flight data right after CONNACK).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from cloud_ingest.config import IngestSettings, TrustError
from cloud_ingest.decode import BatchDecoder, Decoded
from cloud_ingest.leanclient import LeanSubscriber, make_ssl_context
from cloud_ingest.lineproto import LineBuilder
from cloud_ingest.mqtt5 import Connack, Message
from cloud_ingest.scope import Scope
from cloud_ingest.trust import AuditTrail, GatewayKeys, PurposeRules, load_gateway_areas, load_purpose_rules
from cloud_ingest.writer import InfluxV1Writer, InfluxV2Writer, RetryPolicy, WriteError, Writer
from kyojo.contract.wire import (
    AuditAnchor,
    ConsentStatus,
    GatewayStatus,
    WireError,
    anchor_topic,
    decode_consent,
    parse_audit_head,
    parse_topic,
)

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: HTTP statuses that blame the request's content: split the batch to find the message(s) at fault.
_CONTENT_STATUSES = frozenset({400, 413, 422})


#: the retained audit anchors the cloud published to every gateway (read back to seed the audit check)
ANCHOR_FILTER = "kyojo/v1/+/anchor"
#: every gateway's retained status (its will says offline): ``gateways_online`` on the platform dashboard
STATUS_FILTER = "kyojo/v1/+/status"

#: InfluxDB's answers that blame its own capacity, not the message: holding (not acknowledging) and retrying is
#: right, since the data is valid and the broker keeps it for us (acknowledging would lose it silently).
_CAPACITY_ERRORS = ("max-series-per-database", "max-values-per-tag", "cache-max-memory-size", "engine: cache maximum")


@dataclass(frozen=True, slots=True)
class _Consent:
    subject: str
    purpose: str
    categories: frozenset[str]
    status: str
    expires: float | None  # POSIX seconds
    epoch: int  # connection generation in which we last heard of it
    given_ms: int = 0  # data must not start before the consent was given
    end_ms: int | None = None  # ... nor end after it was withdrawn or expired
    min_window_s: int = 0  # the purpose's granularity: no finer window may be stored


#: MQTT message as the ingester handles it: (topic, payload, mid, qos, dup)
_Msg = tuple[str, bytes | bytearray | memoryview, int, int, bool]


def _due(p: _Parked, *, now: float) -> bool:
    return p.deadline <= now


#: at most this many messages of one gateway wait for their consent record at a time
_MAX_PARKED_PER_GATEWAY = 200


@dataclass(slots=True)
class _Parked:
    """A message that names a consent the ingester has not heard of yet.

    The consent record and the data travel on two connections, so a gateway's first batch can overtake its
    consent record. Rejecting it would acknowledge, and so lose, accepted data; it waits instead (unacknowledged,
    bounded per gateway) until the record arrives, or ``consent_wait`` seconds after the snapshot is complete.
    """

    deadline: float  # monotonic; counted only once the snapshot is complete
    gen: int
    key: tuple[str, str]  # (gateway, consent)
    msg: _Msg


@dataclass(slots=True)
class _Gateway:
    """What one gateway has claimed so far in this process: bounded, whatever it invents."""

    consents: set[str] = field(default_factory=set)
    subjects: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    trail: AuditTrail = field(default_factory=AuditTrail)
    anchor_at: float = 0.0  # monotonic time of the last anchor published
    anchor_sent: tuple[int, int] = (0, 0)  # (n, conflicts) last published


class _RateLimitedLog:
    """Logs the first event of each cause at once, then at most one summary per ``interval`` seconds."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: int, cause: str, message: str) -> None:
        now = time.monotonic()
        if now < self._next.get(cause, 0.0):
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return
        self._next[cause] = now + self._interval
        extra = self._suppressed.pop(cause, 0)
        suffix = f" (+{extra} more since last report)" if extra else ""
        log.log(level, "%s: %s%s", cause, message, suffix)


class _Window:
    """Last/avg/p99 over the last ``size`` samples."""

    def __init__(self, size: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.last = 0.0

    def add(self, value: float) -> None:
        self.last = value
        self._values.append(value)

    def summary(self) -> dict[str, float]:
        values = sorted(self._values)
        if not values:
            return {"last": 0.0, "avg": 0.0, "p99": 0.0}
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        return {"last": round(self.last, 3), "avg": round(sum(values) / len(values), 3), "p99": round(p99, 3)}


def make_writer(settings: IngestSettings) -> Writer:
    """The writer the settings ask for."""
    if settings.influx_api == "v2":
        assert settings.influx_org is not None
        assert settings.influx_bucket is not None
        assert settings.influx_token is not None
        return InfluxV2Writer(
            settings.influx_url,
            settings.influx_org,
            settings.influx_bucket,
            settings.influx_token.get_secret_value(),
            timeout=settings.influx_timeout,
        )
    return InfluxV1Writer(
        settings.influx_url,
        settings.influx_db,
        settings.influx_rp,
        username=settings.influx_username,
        password=settings.influx_password.get_secret_value() if settings.influx_password else None,
        ca=str(settings.influx_ca) if settings.influx_ca else None,
        timeout=settings.influx_timeout,
    )


class Ingester:
    """One ingester: an MQTT client (paho, network thread) feeding a writer thread.

    In-process use (tests)::

        ing = Ingester(settings); ing.start(); ...; ing.wait_idle(); ing.stats(); ing.stop()

    Threads: paho's network thread runs ``_on_message`` (decode, consent check, append to the open batch);
    the writer thread flushes a batch when it holds ``batch_points`` points or ``batch_interval`` passed since
    its first point, then acknowledges every message of the batch. One batch is written while the next fills.
    """

    def __init__(self, settings: IngestSettings, *, writer: Writer | None = None) -> None:
        self.settings = settings
        self._writer = writer if writer is not None else make_writer(settings)
        self._policy = RetryPolicy(initial=settings.retry_initial, maximum=settings.retry_max)
        self.scope = Scope(settings.scope_key_bytes())
        self._decoder = BatchDecoder(LineBuilder(scope=self.scope))
        self._rules: dict[str, PurposeRules] = load_purpose_rules(settings.catalog)
        self._keys = GatewayKeys.load(settings.gateway_keys) if settings.gateway_keys is not None else None
        self._areas = load_gateway_areas(settings.gateway_areas) if settings.gateway_areas is not None else None
        self._gateways: dict[str, _Gateway] = {}
        #: first sight of each subject/device pseudonym: the gateway that named it first owns it in this process
        self._owners: dict[str, str] = {}
        self._snapshot_done = False
        #: messages whose consent record has not arrived yet (see :meth:`_park`)
        self._parked: list[_Parked] = []
        self._parked_per_gw: Counter[str] = Counter()
        self._capacity_blocked = ""
        self._capacity_errors = 0
        self._audit_conflicts = 0
        self._anchors_sent = 0
        self._anchor_dirty: set[str] = set()  # gateways whose anchor may have moved since it was last published
        #: gateways whose retained status says online (a gateway speaks only for itself: topic and body must agree)
        self._online: set[str] = set()
        self._interval = settings.batch_interval.total_seconds()
        self._batch_points = settings.batch_points
        self._max_pending = settings.max_pending_points
        self._cond = threading.Condition()
        self._stop_evt = threading.Event()
        self._stopping = False
        # open batch: per message, its lines and its (mid, qos, generation) for the PUBACK
        self._chunks: list[str] = []
        self._sizes: list[int] = []  # points per chunk
        self._max_batch = max(settings.max_batch_points, settings.batch_points)
        self._acks: list[tuple[int, int, int]] = []
        self._points = 0
        self._first_at = 0.0
        self._pending = 0  # points accepted but not yet written (open batch + batch being written)
        self._inflight_batch = False
        # connection state (generation changes at each connect; acks of an older one are dropped, since
        # the broker resends those messages anyway)
        self._gen = 0
        self._ready = False
        self._connected = False
        self._ready_evt = threading.Event()
        self._consents_evt = threading.Event()  # the snapshot of retained consents is complete
        self._csub_evt = threading.Event()  # the consent subscription is acknowledged
        self._cgen = 0  # consent connection generation (snapshot epoch)
        # the consent connection's own id: the broker ACL lets each ingest identity use its own sync topic only
        self._consent_client_id = f"{settings.client_id[:55]}-consents"
        self._sync_topic = f"kyojo/v1/_ingest/sync/{self._consent_client_id}"
        self._sync_nonce = b""
        self._cclient: mqtt.Client | None = None
        self._fatal: str | None = None
        self._consents: dict[tuple[str, str], _Consent] = {}
        # counters
        self._received = 0
        self._accepted = 0
        self._written = 0
        self._batches = 0
        self._retries = 0
        self._write_errors = 0
        self._consent_updates = 0
        self._rejected: dict[str, int] = {}
        self._latency = _Window()
        self._lag_last = 0.0
        self._lag_max = 0.0
        self._last_activity = time.monotonic()
        self._rlog = _RateLimitedLog()
        self._client: mqtt.Client | None = None
        self._lean: LeanSubscriber | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _new_client(self, client_id: str, *, manual_ack: bool, consent: bool = False) -> mqtt.Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        cert, key = (
            (s.consent_tls_cert, s.consent_tls_key) if consent and s.consent_tls_cert else (s.tls_cert, s.tls_key)
        )
        if s.tls_ca is not None or cert is not None:
            client.tls_set(
                ca_certs=str(s.tls_ca) if s.tls_ca else None,
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        client.reconnect_delay_set(1, 30)
        return client

    def start(self, timeout: float = 15.0) -> None:
        """Connect, load the consent snapshot, subscribe to the data; return once data can flow.

        Two MQTT connections: consents travel on their own (clean session, automatic PUBACK), so their
        delivery never waits behind a backlog of unacknowledged data messages, which Receive Maximum would
        hold back on a shared connection. The data connection is opened only once the consent snapshot is
        complete (see ``_on_consent_message``).
        """
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        problems = s.trust_problems()
        if problems:
            raise TrustError(f"ingester {s.client_id} refuses to start: " + "; ".join(problems))
        if s.group is None:
            log.warning("no group configured: using %r (tests and the local demo only)", s.share_group)
        if self._keys is None:
            log.warning("no gateway_keys: consent record signatures are not checked")
        self._thread = threading.Thread(target=self._writer_loop, name="kyojo-ingest-writer", daemon=True)
        self._thread.start()
        threading.Thread(target=self._reap_parked, name="kyojo-ingest-parked", daemon=True).start()
        deadline = time.monotonic() + timeout

        cclient = self._new_client(self._consent_client_id, manual_ack=False, consent=True)
        cclient.on_connect = self._on_consent_connect
        cclient.on_subscribe = self._on_consent_subscribe
        cclient.on_message = self._on_consent_message
        self._cclient = cclient
        cclient.connect(s.broker_host, s.broker_port, keepalive=s.keepalive, clean_start=True)
        cclient.loop_start()
        # Only the subscription is awaited, not the whole snapshot: a gateway that floods retained consent records
        # must not keep every ingester from starting. Until the snapshot is complete, a message whose consent is
        # not known yet is parked (neither written nor acknowledged) and judged when the snapshot completes.
        if not self._csub_evt.wait(max(0.0, deadline - time.monotonic())) or self._fatal:
            reason = self._fatal or f"consent subscription not acknowledged within {timeout}s"
            self.stop()
            raise ConnectionError(f"ingester {s.client_id}: {reason}")
        # Usually the snapshot is complete within milliseconds; give it a moment so the first data is judged at
        # once, but never wait for a flood.
        self._consents_evt.wait(max(0.0, min(s.snapshot_wait, deadline - time.monotonic())))

        if s.mqtt_client == "lean":
            self._start_lean(deadline, timeout)
            return
        client = self._new_client(s.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        self._client = client
        client.connect(s.broker_host, s.broker_port, keepalive=s.keepalive, clean_start=False, properties=props)
        client.loop_start()
        if not self._ready_evt.wait(max(0.0, deadline - time.monotonic())) or self._fatal:
            reason = self._fatal or f"not subscribed within {timeout}s"
            self.stop()
            raise ConnectionError(f"ingester {s.client_id}: {reason}")
        log.info("ingester %s ready (%s + %s)", s.client_id, s.consent_filter, s.data_filter)

    def _start_lean(self, deadline: float, timeout: float) -> None:
        s = self.settings
        tls = s.tls_ca is not None or s.tls_cert is not None
        lean = LeanSubscriber(
            s.broker_host,
            s.broker_port,
            s.client_id,
            s.data_filters,
            keepalive=s.keepalive,
            session_expiry=s.session_expiry,
            receive_maximum=s.receive_maximum,
            on_messages=self._on_lean_messages,
            on_connect=self._on_lean_connect,
            on_subscribe=self._on_lean_subscribe,
            on_disconnect=self._on_lean_disconnect,
            ssl_context=make_ssl_context(s.tls_ca, s.tls_cert, s.tls_key) if tls else None,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
        )
        self._lean = lean
        lean.start()
        if not self._ready_evt.wait(max(0.0, deadline - time.monotonic())) or self._fatal:
            reason = self._fatal or f"not subscribed within {timeout}s"
            self.stop()
            raise ConnectionError(f"ingester {s.client_id}: {reason}")
        log.info("ingester %s ready, lean client (%s + %s)", s.client_id, s.consent_filter, s.data_filter)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking messages, flush and acknowledge what is open, disconnect (the session persists).

        Messages that arrive while stopping are neither written nor acknowledged: the broker keeps them in
        this client's session and sends them again when the same client id comes back.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # writer stuck retrying: give up without acking
                self._stop_evt.set()
                with self._cond:
                    self._cond.notify_all()
                thread.join(timeout)
        self._stop_evt.set()
        lean = self._lean
        if lean is not None:
            lean.stop()  # sends the queued PUBACKs, then DISCONNECT
            self._lean = None
        client = self._client
        if client is not None:
            client.disconnect()  # queued after the PUBACKs: the network thread sends them in order
            client.loop_stop()
            client.on_message = None
        cclient = self._cclient
        if cclient is not None:
            cclient.disconnect()
            cclient.loop_stop()
            self._cclient = None
        self._writer.close()
        self._thread = None
        self._client = None

    def __enter__(self) -> Ingester:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 15.0, quiet: float = 0.3) -> bool:
        """Wait until nothing is pending and no message arrived for ``quiet`` seconds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                idle = self._pending == 0 and not self._parked and time.monotonic() - self._last_activity >= quiet
            if idle:
                return True
            time.sleep(0.02)
        return False

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (JSON-serialisable)."""
        with self._cond:
            return {
                "client_id": self.settings.client_id,
                "connected": self._connected,
                "ready": self._ready,
                "received": self._received,
                "accepted": self._accepted,
                "written": self._written,
                "rejected": dict(sorted(self._rejected.items())),
                "rejected_total": sum(self._rejected.values()),
                "batches": self._batches,
                "retries": self._retries,
                "write_errors": self._write_errors,
                "write_latency_ms": self._latency.summary(),
                "lag_ms": {"last": round(self._lag_last, 1), "max": round(self._lag_max, 1)},
                "consents_known": len(self._consents),
                "consent_updates": self._consent_updates,
                "pending_points": self._pending,
                "consents_loading": not self._snapshot_done,
                "parked": len(self._parked),
                "capacity_errors": self._capacity_errors,
                "capacity_blocked": self._capacity_blocked,
                "audit_conflicts": self._audit_conflicts,
                "anchors_sent": self._anchors_sent,
                "gateways_seen": len(self._gateways),
                "gateways_online": len(self._online),
                "healthy": self._connected and self._ready and not self._capacity_blocked,
                "fast_path": self._decoder.fast_hits,
                "slow_path": self._decoder.slow_hits,
            }

    def consent_ids(self, gateway: str) -> list[str]:
        """The consent records of ``gateway`` this ingester holds (sorted): what it would accept data under."""
        with self._cond:
            return sorted(cid for gw, cid in self._consents if gw == gateway)

    # -- MQTT callbacks: consent connection (its own network thread) --------------------------------------
    def _refused(self, what: str, rc: Any) -> None:
        self._fatal = f"{what}: {rc}"
        log.error("ingester %s: %s", self.settings.client_id, self._fatal)
        self._consents_evt.set()
        self._ready_evt.set()

    def _on_consent_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            self._refused("broker refused the consent connection", rc)
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        with self._cond:
            self._cgen += 1
        options = SubscribeOptions(qos=1)
        client.subscribe(
            [
                (self.settings.consent_filter, options),
                (self._sync_topic, options),
                (ANCHOR_FILTER, options),
                (STATUS_FILTER, options),
            ]
        )

    def _on_consent_subscribe(self, client: mqtt.Client, _u: object, _m: int, codes: list[Any], _p: object) -> None:
        if any(code.is_failure for code in codes[:2]):
            self._refused("consent subscription refused", [str(c) for c in codes])
            return
        if len(codes) > 2 and codes[2].is_failure:  # anchors only seed the audit check; it works without them
            log.warning("ingester %s may not read audit anchors (%s)", self.settings.client_id, codes[2])
        if len(codes) > 3 and codes[3].is_failure:  # only the dashboard's gateways_online needs them
            log.warning("ingester %s may not read gateway status (%s)", self.settings.client_id, codes[3])
        # Barrier: the retained consents were queued for us when the broker handled SUBSCRIBE; a message we
        # publish now is queued after them, and one session's queue is delivered in order. When our marker
        # comes back, the snapshot is complete.
        with self._cond:
            self._snapshot_done = False
        self._sync_nonce = f"{self._cgen}-{time.time_ns()}".encode()
        client.publish(self._sync_topic, self._sync_nonce, qos=1)
        self._csub_evt.set()

    def _on_consent_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self._sync_topic:
            if bytes(msg.payload) == self._sync_nonce:
                with self._cond:
                    # Consents not (re)announced in this snapshot were cleared while we were away.
                    for key in [k for k, c in self._consents.items() if c.epoch < self._cgen]:
                        del self._consents[key]
                        gw = self._gateways.get(key[0])
                        if gw is not None:
                            gw.consents.discard(key[1])
                    self._snapshot_done = True
                    # what waited for the snapshot is judged now; what still lacks its record waits on
                    parked = self._take_parked(lambda _p: True)
                self._consents_evt.set()
                self._unpark(parked)
            return
        if topic.endswith("/anchor"):
            self._handle_anchor(topic, bytes(msg.payload))
            return
        if topic.endswith("/status"):
            self._handle_status(topic, bytes(msg.payload))
            return
        self._handle_consent(topic, bytes(msg.payload))

    # -- MQTT callbacks: data connection (paho network thread) --------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object = None) -> None:
        if rc.is_failure:
            self._refused("broker refused the data connection", rc)
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        with self._cond:
            self._gen += 1
            self._connected = True
        # A resumed session may resend unacknowledged messages before this SUBACK: the consent table is
        # already loaded, so they are handled like any other.
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.settings.data_filters])
        log.info(
            "ingester %s connected (session present: %s)",
            self.settings.client_id,
            getattr(_f, "session_present", "?"),
        )

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: Any, _p: object = None) -> None:
        with self._cond:
            self._connected = False
            self._ready = False
        if not self._stopping:
            log.warning("ingester %s disconnected: %s (paho reconnects)", self.settings.client_id, rc)

    def _on_subscribe(self, _c: object, _u: object, _mid: int, codes: list[Any], _p: object) -> None:
        if any(code.is_failure for code in codes):
            self._refused("data subscription refused", [str(c) for c in codes])
            return
        with self._cond:
            self._ready = True
        self._ready_evt.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self._stopping:
            return  # neither written nor acked: stays in our session for the next run
        self._handle_many(self._gen, [(msg.topic, msg.payload, msg.mid, msg.qos, msg.dup)])

    # -- lean client callbacks (its network thread) -------------------------------------------------------
    def _on_lean_connect(self, gen: int, connack: Connack) -> None:
        if connack.reason_code >= 0x80:
            self._refused("broker refused the data connection", f"reason 0x{connack.reason_code:02x}")
            return
        with self._cond:
            self._gen = gen
            self._connected = True
        log.info("ingester %s connected (session present: %s)", self.settings.client_id, connack.session_present)

    def _on_lean_subscribe(self, _gen: int, codes: tuple[int, ...]) -> None:
        if any(code >= 0x80 for code in codes):
            self._refused("data subscription refused", [f"0x{c:02x}" for c in codes])
            return
        with self._cond:
            self._ready = True
        self._ready_evt.set()

    def _on_lean_disconnect(self, reason: str) -> None:
        with self._cond:
            self._connected = False
            self._ready = False
        if not self._stopping:
            log.warning("ingester %s disconnected: %s (reconnecting)", self.settings.client_id, reason)

    def _on_lean_messages(self, gen: int, msgs: list[Message]) -> None:
        if self._stopping:
            return  # neither written nor acked: stays in our session for the next run
        self._handle_many(gen, msgs)

    def _ack_now(self, gen: int, mids: list[int]) -> None:
        """Acknowledge (QoS 1) messages of connection generation ``gen`` right away."""
        lean = self._lean
        if lean is not None:
            lean.ack(gen, mids)
            return
        client = self._client
        if client is not None and gen == self._gen:
            for mid in mids:
                client.ack(mid, 1)

    # -- data path ----------------------------------------------------------------------------------------
    def _handle_many(
        self,
        gen: int,
        msgs: Sequence[tuple[str, bytes | bytearray | memoryview, int, int, bool]],
        *,
        count_received: bool = True,
        final: bool = False,
    ) -> None:
        """Decode and check a list of messages (one socket read), then queue the good ones under one lock."""
        decode = self._decoder.decode
        check = self._check_consent
        now = time.time()
        good: list[tuple[Decoded, int, int]] = []
        bad_acks: list[int] = []
        for topic, payload, mid, qos, _dup in msgs:
            try:
                d = decode(topic, payload)
            except WireError as err:
                self._reject(err.cause, err.detail or str(err), mid, qos, bad_acks)
                continue
            cause = check(d, now)
            if cause is not None:
                if cause[0] == "unknown_consent" and not final:
                    if self._park(gen, d, (topic, payload, mid, qos, _dup)):
                        continue
                    cause = check(d, now)  # the record arrived meanwhile, or too many wait already
                if cause is not None:
                    self._reject(cause[0], cause[1], mid, qos, bad_acks)
                    continue
            good.append((d, mid, qos))
        with self._cond:
            if count_received:
                self._received += len(msgs)
            if good:
                while self._pending >= self._max_pending and not self._stop_evt.is_set():
                    # Last-resort bound (Receive Maximum normally keeps us far below it): holding the network
                    # thread here stops reading the socket until the writer has made room. One socket read's
                    # messages may overshoot the bound by that read's points.
                    self._cond.wait(0.5)
                chunks = self._chunks
                sizes = self._sizes
                acks = self._acks
                if not chunks:
                    self._first_at = time.monotonic()
                points = 0
                for d, mid, qos in good:
                    chunks.append(d.body)
                    sizes.append(d.points)
                    acks.append((mid, qos, gen))  # one per chunk, also for QoS 0 (split pairs them)
                    points += d.points
                    if d.audit_head is not None:
                        self._note_head(d)
                self._accepted += len(good)
                lag = now * 1000.0 - good[-1][0].sent
                self._lag_last = lag
                if lag > self._lag_max:
                    self._lag_max = lag
                self._points += points
                self._pending += points
                if self._points >= self._batch_points:
                    self._cond.notify_all()
            self._last_activity = time.monotonic()
        if bad_acks:
            self._ack_now(gen, bad_acks)

    def _check_consent(self, d: Decoded, now: float) -> tuple[str, str] | None:
        """Whether the consent the message names allows exactly this message; (cause, detail) when not.

        Nothing a gateway says about anyone but itself is taken on trust: the consent must be this gateway's
        (records are keyed by the topic's gateway, which the broker binds to the certificate), its terms (time,
        categories, the purpose's granularity) are enforced here as on the gateway, and the subjects and devices
        the gateway names are capped and must not have been named first by another gateway.
        """
        gw = d.gateway
        rec = self._consents.get((gw, d.consent))
        if rec is None:
            return "unknown_consent", f"{gw}/{d.consent}"
        if rec.status != ConsentStatus.ACTIVE.value:
            return f"consent_{rec.status}", f"{gw}/{d.consent} is {rec.status}"
        if rec.expires is not None and now >= rec.expires:
            return "consent_expired", f"{gw}/{d.consent} expired"
        if rec.purpose != d.purpose:
            return "consent_mismatch", f"{gw}/{d.consent}: purpose {d.purpose!r} != {rec.purpose!r}"
        if d.category not in rec.categories:
            return "consent_mismatch", f"{gw}/{d.consent}: category {d.category!r} not consented"
        if len(d.subjects) != 1 or rec.subject not in d.subjects:
            subjects = sorted(d.subjects)
            return "consent_mismatch", f"{gw}/{d.consent}: subjects {subjects} != {rec.subject!r}"
        if not d.metrics_in_category:
            return "metric_category", f"{gw}: a metric outside category {d.category!r}"
        rules = self._rules.get(d.purpose)
        if d.kinds and (rules is None or not rules.allows_events(d.kinds)):
            return "event_kind", f"{gw}/{d.consent}: events {sorted(d.kinds)} are not what {d.purpose!r} carries"
        if d.areas and self._areas is not None and d.areas != {self._areas.get(gw)}:
            return "area", f"{gw}: answers for {sorted(d.areas)}, enrolled in {self._areas.get(gw) or 'no area'}"
        if d.t_min < rec.given_ms:
            return "consent_time", f"{gw}/{d.consent}: data from {d.t_min} before the consent was given"
        if rec.end_ms is not None and d.t_max > rec.end_ms:
            return "consent_time", f"{gw}/{d.consent}: data until {d.t_max} after the consent ended"
        if d.min_window and d.min_window < rec.min_window_s:
            allowed = rec.min_window_s
            return "consent_granularity", f"{gw}/{d.consent}: {d.min_window}s windows, purpose allows >= {allowed}s"
        return self._claim(gw, d.subjects, d.devices)

    def _claim(self, gw: str, subjects: frozenset[str], devices: frozenset[str]) -> tuple[str, str] | None:
        """Cap the pseudonyms a gateway names, and hold each subject pseudonym to the gateway that named it first
        (in this process); (cause, detail) when over the cap or foreign.

        Subjects only: a subject pseudonym is what a dashboard shows and what a hostile gateway would borrow.
        Device names are only capped: the household tag already keeps every gateway's series apart, and device
        names may repeat across homes where a gateway does not pseudonymise them (refusing those would lose data).
        """
        s = self.settings
        with self._cond:
            state = self._gateways.get(gw)
            if state is None:
                state = self._gateways[gw] = _Gateway()
            owners = self._owners
            for kind, names, mine, cap in (
                ("subject", subjects, state.subjects, s.max_subjects_per_gateway),
                ("device", devices, state.devices, s.max_devices_per_gateway),
            ):
                new = [n for n in names if n not in mine]
                if not new:
                    continue
                if kind == "subject":
                    for name in new:
                        owner = owners.get(name)
                        if owner is not None and owner != gw:
                            return "foreign_subject", f"{gw} names subject {name} first seen from another gateway"
                if len(mine) + len(new) > cap:
                    return f"gateway_cap_{kind}s", f"{gw} would have {len(mine) + len(new)} {kind}s (cap {cap})"
                mine.update(new)
                if kind == "subject" and len(owners) < 2_000_000:  # bounded; the household tag separates anyway
                    for name in new:
                        owners[name] = gw
        return None

    def _reject(self, cause: str, detail: str, mid: int, qos: int, acks: list[int]) -> None:
        with self._cond:
            self._rejected[cause] = self._rejected.get(cause, 0) + 1
            self._last_activity = time.monotonic()
        self._rlog(logging.WARNING, cause, detail)
        if qos:
            acks.append(mid)  # a bad message will not get better: acknowledge it so it is not redelivered

    def _handle_consent(self, topic: str, payload: bytes) -> None:
        try:
            self._take_consent(topic, payload)
        finally:  # counted once handled, so a caller that sees the count move sees the record's effect
            with self._cond:
                self._consent_updates += 1

    def _take_consent(self, topic: str, payload: bytes) -> None:
        with self._cond:
            cgen = self._cgen
        try:
            gateway, _kind, consent_id = parse_topic(topic)
            if not payload:  # an empty retained message clears the record
                with self._cond:
                    self._consents.pop((gateway, consent_id), None)
                    state = self._gateways.get(gateway)
                    if state is not None:
                        state.consents.discard(consent_id)
                return
            rec = decode_consent(topic, payload)
        except WireError as err:
            self._count_consent_reject(f"consent_record_{err.cause}", str(err))
            return
        rules = self._rules.get(rec.purpose)
        if rules is None:
            self._count_consent_reject("consent_record_purpose", f"{rec.gateway}/{rec.id}: unknown purpose")
            return
        categories = frozenset(c.value for c in rec.categories)
        if not categories <= rules.categories:
            self._count_consent_reject(
                "consent_record_purpose", f"{rec.gateway}/{rec.id}: categories beyond purpose {rec.purpose!r}"
            )
            return
        if self._keys is not None and not self._keys.verify(rec):
            self._count_consent_reject("consent_record_signature", f"{rec.gateway}/{rec.id}: bad or missing signature")
            return
        expires = rec.expires_at.timestamp() if isinstance(rec.expires_at, datetime) else None
        ends = [t for t in (rec.withdrawn_at, rec.expires_at) if t is not None]
        entry = _Consent(
            subject=rec.subject,
            purpose=rec.purpose,
            categories=categories,
            status=rec.status.value,
            expires=expires,
            epoch=cgen,
            given_ms=int(rec.given_at.timestamp() * 1000),
            end_ms=int(min(ends).timestamp() * 1000) if ends else None,
            min_window_s=rules.min_window_s,
        )
        key = (rec.gateway, rec.id)
        with self._cond:
            state = self._gateways.get(rec.gateway)
            if state is None:
                state = self._gateways[rec.gateway] = _Gateway()
            waiting: list[_Parked] = []
            if rec.id not in state.consents and len(state.consents) >= self.settings.max_consents_per_gateway:
                over = True
            else:
                over = False
                state.consents.add(rec.id)
                self._consents[key] = entry
                if self._parked_per_gw[rec.gateway]:
                    waiting = self._take_parked(lambda p: p.key == key)
        if waiting:
            self._unpark(waiting)
        if over:
            self._count_consent_reject(
                "consent_record_cap", f"{rec.gateway} has {self.settings.max_consents_per_gateway} consent records"
            )

    def _note_head(self, d: Decoded) -> None:
        """Check a batch's audit head against the gateway's earlier ones (caller holds the lock)."""
        head = parse_audit_head(d.audit_head)
        if head is None:
            return
        state = self._gateways.get(d.gateway)
        if state is None:
            state = self._gateways[d.gateway] = _Gateway()
        reason = state.trail.add(d.seq, head[0], head[1])
        self._anchor_dirty.add(d.gateway)
        if reason is not None:
            self._audit_conflicts += 1
            self._rlog(logging.ERROR, "audit_conflict", f"{d.gateway}: {reason}")

    def _publish_anchors(self) -> None:
        """Send each gateway whose anchor moved the newest head the cloud holds (retained, throttled)."""
        client = self._cclient
        if client is None:
            return
        now = time.monotonic()
        due: list[tuple[str, AuditAnchor]] = []
        with self._cond:
            # only gateways whose batches brought a head since (not every gateway after every write)
            for gw in list(self._anchor_dirty):
                state = self._gateways[gw]
                head = state.trail.head
                mark = (head[0], state.trail.conflicts) if head is not None else state.anchor_sent
                if mark == state.anchor_sent:
                    self._anchor_dirty.discard(gw)
                    continue
                if now - state.anchor_at < self.settings.anchor_interval:
                    continue  # stays dirty: published at a later write
                self._anchor_dirty.discard(gw)
                assert head is not None
                state.anchor_sent, state.anchor_at = mark, now
                due.append(
                    (
                        gw,
                        AuditAnchor(
                            gateway=gw,
                            n=head[0],
                            hash=head[1],
                            seen_at=datetime.now(UTC),
                            conflicts=state.trail.conflicts,
                        ),
                    )
                )
        for gw, anchor in due:
            client.publish(anchor_topic(gw), anchor.model_dump_json(), qos=1, retain=True)
            with self._cond:
                self._anchors_sent += 1

    def _handle_anchor(self, topic: str, payload: bytes) -> None:
        """Seed a gateway's trail from the anchor the cloud published before (this or another process)."""
        try:
            gateway, _kind, _rest = parse_topic(topic)
            anchor = AuditAnchor.model_validate_json(payload)
        except (WireError, ValueError):
            return
        if anchor.gateway != gateway:
            return
        with self._cond:
            state = self._gateways.get(gateway)
            if state is None:
                state = self._gateways[gateway] = _Gateway()
            state.trail.seed(anchor.n, anchor.hash, anchor.seq)
            state.trail.conflicts = max(state.trail.conflicts, anchor.conflicts)
            state.anchor_sent = (anchor.n, anchor.conflicts)

    def _handle_status(self, topic: str, payload: bytes) -> None:
        """A gateway's retained status (or its will): online or not. An empty payload clears it."""
        try:
            gateway, kind, rest = parse_topic(topic)
            if kind != "status" or rest:
                raise WireError("bad_topic", topic[:200])
            status = GatewayStatus.model_validate_json(payload) if payload else None
            if status is not None and status.gateway != gateway:
                raise WireError("foreign_status", f"{topic}: the status names another gateway")
            online = status is not None and status.online
        except (WireError, ValueError) as err:
            self._count_consent_reject("bad_status", f"{topic[:200]}: {err}")
            return
        with self._cond:
            if online:
                self._online.add(gateway)
            else:
                self._online.discard(gateway)

    def _count_consent_reject(self, cause: str, detail: str) -> None:
        with self._cond:
            self._rejected[cause] = self._rejected.get(cause, 0) + 1
        self._rlog(logging.WARNING, cause, detail)

    def _park(self, gen: int, d: Decoded, msg: _Msg) -> bool:
        """Keep a message whose consent is not known yet; False when it cannot wait (record known now, or the
        gateway already has too many waiting)."""
        key = (d.gateway, d.consent)
        with self._cond:
            if key in self._consents or self._parked_per_gw[d.gateway] >= _MAX_PARKED_PER_GATEWAY:
                return False
            topic, payload, mid, qos, dup = msg
            deadline = time.monotonic() + self.settings.consent_wait
            # a copy of the payload: the lean client reuses its receive buffer
            self._parked.append(_Parked(deadline, gen, key, (topic, bytes(payload), mid, qos, dup)))
            self._parked_per_gw[d.gateway] += 1
            self._last_activity = time.monotonic()
            return True

    def _take_parked(self, pick: Callable[[_Parked], bool]) -> list[_Parked]:
        """Remove and return the parked messages ``pick`` selects (caller holds the lock)."""
        taken = [p for p in self._parked if pick(p)]
        if taken:
            self._parked = [p for p in self._parked if not pick(p)]
            for p in taken:
                self._parked_per_gw[p.key[0]] -= 1
        return taken

    def _unpark(self, parked: list[_Parked], *, final: bool = False) -> None:
        """Judge waiting messages again, per connection generation, in arrival order."""
        by_gen: dict[int, list[_Msg]] = {}
        for p in parked:
            by_gen.setdefault(p.gen, []).append(p.msg)
        for gen, msgs in by_gen.items():
            self._handle_many(gen, msgs, count_received=False, final=final)

    def _reap_parked(self) -> None:
        """Background: messages whose consent never came are rejected ``consent_wait`` s after the snapshot."""
        while not self._stop_evt.wait(0.2):
            now = time.monotonic()
            with self._cond:
                if not self._snapshot_done:
                    continue
                due = self._take_parked(partial(_due, now=now))
            if due:
                self._unpark(due, final=True)

    # -- writer thread ------------------------------------------------------------------------------------
    def _take_batch(self) -> tuple[list[str], list[tuple[int, int, int]], int] | None:
        """Block until a batch is due; None when stopping and nothing is left."""
        with self._cond:
            while True:
                if self._stop_evt.is_set():
                    return None
                if self._chunks:
                    due = self._first_at + self._interval
                    now = time.monotonic()
                    if self._points >= self._batch_points or now >= due or self._stopping:
                        return self._cut()
                    self._cond.wait(due - now)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait(0.5)

    def _cut(self) -> tuple[list[str], list[tuple[int, int, int]], int]:
        """Take the open batch, or its oldest ``max_batch_points`` worth of messages (caller holds the lock).

        The rest stays open and is due at once: a backlog goes out as a stream of bounded POSTs.
        """
        if self._points <= self._max_batch:
            chunks, acks, points = self._chunks, self._acks, self._points
            self._chunks, self._sizes, self._acks, self._points = [], [], [], 0
            return chunks, acks, points
        sizes = self._sizes
        limit = self._max_batch
        points = k = 0
        while points < limit:
            points += sizes[k]
            k += 1
        chunks, acks = self._chunks[:k], self._acks[:k]
        del self._chunks[:k], self._sizes[:k], self._acks[:k]
        self._points -= points
        return chunks, acks, points

    def _writer_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            chunks, acks, points = batch
            try:
                self._write_batch(chunks, acks)
            except WriteError:
                return  # only when stop was forced mid-retry: nothing acked, the broker keeps the messages
            except Exception:  # pragma: no cover - a bug; keep the process alive and loud
                log.exception("writer thread failed on a batch of %d points", points)
            finally:
                with self._cond:
                    self._pending -= points
                    self._last_activity = time.monotonic()
                    self._cond.notify_all()

    def _write_batch(self, chunks: list[str], acks: list[tuple[int, int, int]]) -> None:
        body = "\n".join(chunks).encode()
        blocked = 0
        while True:
            t0 = time.perf_counter()
            try:
                self._write(body)
            except WriteError as err:
                capacity = any(marker in str(err) for marker in _CAPACITY_ERRORS)
                if err.status in _CONTENT_STATUSES and not capacity:
                    self._split(chunks, acks, err)
                    return
                if capacity:
                    # InfluxDB is full (series cardinality, cache): the data is valid, so it is held, not acked,
                    # and the broker keeps it. Loud: counted, in the stats (``capacity_blocked``) and the log.
                    with self._cond:
                        self._capacity_errors += 1
                        self._capacity_blocked = str(err)[:300]
                    self._rlog(logging.ERROR, "influx_capacity", str(err))
                    if self._stop_evt.wait(self._policy.delay(blocked + 8)):
                        raise
                    blocked += 1
                    continue
                # 401/403/404...: configuration, not content. Never drop data for it: hold and retry slowly.
                with self._cond:
                    self._write_errors += 1
                self._rlog(logging.ERROR, "influx_blocked", str(err))
                if self._stop_evt.wait(self._policy.delay(blocked + 8)):
                    raise
                blocked += 1
                continue
            self._done(len(chunks), body.count(b"\n") + 1, acks, time.perf_counter() - t0)
            return

    def _write(self, body: bytes) -> None:
        """One write with retries on retriable errors (for ever, until a forced stop)."""
        attempt = 0
        while True:
            try:
                self._writer.write(body)
                return
            except WriteError as err:
                if not err.retriable:
                    raise
                with self._cond:
                    self._retries += 1
                    self._write_errors += 1
                self._rlog(logging.WARNING, "influx_retry", str(err))
                if self._stop_evt.wait(self._policy.delay(attempt)):
                    raise
                attempt += 1

    def _split(self, chunks: list[str], acks: list[tuple[int, int, int]], err: WriteError) -> None:
        """InfluxDB refused the batch's content: bisect by message to find the culprit(s).

        A message refused on its own is rejected (cause ``influx_rejected``) and acknowledged, so it does not
        loop for ever. InfluxDB 1.x stores the valid points of a "partial write" anyway; rewriting them while
        bisecting is harmless because points are idempotent.
        """
        if len(chunks) == 1:
            with self._cond:
                self._rejected["influx_rejected"] = self._rejected.get("influx_rejected", 0) + 1
            self._rlog(logging.WARNING, "influx_rejected", str(err))
            self._send_acks(acks)
            return
        half = len(chunks) // 2
        for part_chunks, part_acks in ((chunks[:half], acks[:half]), (chunks[half:], acks[half:])):
            self._write_batch(part_chunks, part_acks)

    def _done(self, n_msgs: int, points: int, acks: list[tuple[int, int, int]], seconds: float) -> None:
        self._send_acks(acks)
        with self._cond:
            self._written += points
            self._batches += 1
            self._latency.add(seconds * 1000.0)
            self._capacity_blocked = ""
        self._publish_anchors()

    def _send_acks(self, acks: list[tuple[int, int, int]]) -> None:
        lean = self._lean
        if lean is not None:
            # usually one generation per batch; the client drops those of an older connection itself
            by_gen: dict[int, list[int]] = {}
            for mid, qos, g in acks:
                if qos:
                    by_gen.setdefault(g, []).append(mid)
            for g, mids in by_gen.items():
                lean.ack(g, mids)
            return
        client = self._client
        if client is None:
            return
        gen = self._gen
        for mid, qos, g in acks:
            if qos and g == gen:
                client.ack(mid, qos)

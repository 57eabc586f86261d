"""The publisher: outbox rows -> MQTT v5 QoS 1, deleted only when the broker's PUBACK says success.

One thread owns the paho client and its own database connection. It runs paho's loop itself so that
reconnects use exponential backoff with full jitter (:mod:`kyojo.runtime.backoff`; paho's own reconnect loop has
no jitter, and a city's gateways reconnecting in lock-step after a broker restart is a thundering herd).

Facts this relies on (docs/ARCHITECTURE.md, "Pitfalls measured"):
- MQTT v5, QoS 1: a refused publish comes back as a PUBACK reason code >= 0x80 (e.g. 0x87 not authorised);
  those rows move to the ``refused`` table and are counted, never retried in a loop. A PUBACK 0x10 ("no matching
  subscribers": after a broker restart Mosquitto 2.0 has not restored the ingesters' shared subscriptions yet) is
  not a delivery: the row stays queued and is sent again after a backoff (``stats.unrouted``).
- paho's message ids are 16-bit and ``publish()`` reports a full queue only in ``rc``: in-flight messages are
  bounded by ``mqtt.max_inflight`` and every ``rc`` is checked.
- Persistent session (clean_start=False + session expiry): paho re-sends its unacknowledged messages after a
  reconnect itself. After a process restart the outbox is replayed from the start; the cloud's points are
  idempotent, so a message delivered twice is stored once.

The household's log hears from here too: each settle round deletes the acknowledged rows and appends, in the same
transaction, one ``release_acked`` entry per consent naming their sequence numbers (``release_refused`` for
refused ones), so "queued" and "sent" are different facts in the log. Downlink: erasure receipts (checked by
:meth:`ConsentStore.take_receipt`, never believed blindly) and the cloud's audit anchor (kept for
``kyojo audit verify``).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import audit
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.consent import ConsentStore, QueuedRow, ReceiptError, log_releases
from edge_agent.db import connect, meta_add, tx
from edge_agent.disaster import DeclarationError, Declarations
from kyojo.contract.wire import (
    AuditAnchor,
    ErasureReceipt,
    GatewayStatus,
    anchor_topic,
    disaster_topic,
    receipt_topic,
    status_topic,
)
from kyojo.keys import load_keys
from kyojo.runtime.backoff import Backoff

log = logging.getLogger(__name__)

#: PUBACK reason code 0x10 (MQTT 5): accepted, but no subscription matched, so nobody will get it
NO_MATCHING_SUBSCRIBERS = 0x10


@dataclass
class PublisherStats:
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    messages_sent: int = 0
    aggregates_sent: int = 0
    events_sent: int = 0
    refused: int = 0
    receipts: int = 0  # erasure receipts believed: confirmed, nothing remains
    receipts_incomplete: int = 0  # believed, but the cloud admits data remains (logged as erasure_incomplete)
    receipts_known: int = 0  # believed before (a retained receipt comes again on every reconnect)
    receipts_refused: dict[str, int] = field(default_factory=dict)  # by cause (ReceiptError.cause)
    anchors: int = 0  # newer audit anchors kept
    anchors_refused: dict[str, int] = field(default_factory=dict)
    anchor_problem: str = ""  # how the local log disagrees with the cloud's anchor ("" if it agrees)
    inflight: int = 0
    last_error: str = ""
    errors: int = 0  # rounds that failed other than by the network (database, bug): logged, retried
    unrouted: int = 0  # PUBACKs 0x10 (no matching subscribers): kept and sent again, never counted as sent


class Inflight(NamedTuple):
    """An outbox row handed to paho."""

    seq: int
    items: int
    topic: str
    consent: str | None  # None for consent records
    retained: bool = False  # a retained message is kept by the broker even with no subscriber


class Publisher(threading.Thread):
    """Drains the outbox to the broker until :meth:`stop` is called."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(name=f"publisher-{config.gateway.id}", daemon=True)
        self.config = config
        self.gateway = config.gateway.id
        self.stats = PublisherStats()
        self.wake = threading.Event()
        self._stop_evt = threading.Event()
        self._inflight: dict[int, Inflight] = {}  # paho mid -> the row
        self._acked: list[tuple[int, ReasonCode | int]] = []
        self._downlink: list[tuple[str, bytes]] = []  # receipts and anchors, handled on the publisher's thread
        self._warned: set[tuple[int, str]] = set()  # (counter, cause) already logged at warning level
        self._socket_open = False
        self._maybe_more = True
        self._next_seq = 0  # rows with seq >= this have not been handed to paho in this process
        self._ever_connected = False
        #: rows the broker routed to nobody (PUBACK 0x10), by seq, to send again at ``_unrouted_due`` (monotonic)
        self._unrouted: dict[int, Inflight] = {}
        self._unrouted_due = 0.0
        self._unrouted_backoff = Backoff(
            config.mqtt.reconnect_min.total_seconds(), config.mqtt.reconnect_max.total_seconds()
        )
        self._failed: set[str] = set()  # kinds of round failure already logged with a traceback
        #: time.monotonic() of the latest round (the agent's watchdog checks it moves)
        self.beat = time.monotonic()
        #: where the city's disaster declarations go (the agent sets it, with the clock they are judged on)
        self.declarations: Declarations | None = None
        self.now: Callable[[], float] = time.time
        self._client = self._make_client()

    # -- paho setup --------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls is not None:
            self._tls_set(client)
        will = GatewayStatus(gateway=self.gateway, online=False, at=0).model_dump_json()
        client.will_set(status_topic(self.gateway), will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _tls_set(self, client: mqtt.Client) -> None:
        tls = self.config.mqtt.tls
        assert tls is not None
        try:
            client.tls_set(
                ca_certs=str(tls.ca),
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
                keyfile_password=tls.key_password.get_secret_value() if tls.key_password else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(f"mqtt.tls: cannot load {tls.ca}, {tls.cert}, {tls.key}: {err}") from err

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f"CONNACK {reason}"
            log.warning("broker refused connection: %s", reason)
            return
        self.stats.connected = True
        self.stats.connects += 1
        status = GatewayStatus(gateway=self.gateway, online=True, at=int(time.time() * 1000))
        client.publish(status_topic(self.gateway), status.model_dump_json(), qos=1, retain=True)
        client.subscribe(
            [(receipt_topic(self.gateway, "+"), 1), (anchor_topic(self.gateway), 1), (disaster_topic(), 1)]
        )  # receipts, the audit anchor, the city's disaster declarations
        log.info("connected to %s:%d", self.config.mqtt.host, self.config.mqtt.port)
        self.wake.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if self.stats.connected:
            self.stats.disconnects += 1
            log.warning("disconnected from broker: %s", reason)
        self.stats.connected = False
        self._socket_open = False

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._acked.append((mid, reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:  # an empty retained payload clears the topic
            self._downlink.append((msg.topic, bytes(msg.payload)))

    def _refuse(self, counter: dict[str, int], cause: str, message: str, *args: object) -> None:
        """Count a refused downlink message by cause; log the first of each cause as a warning."""
        counter[cause] = counter.get(cause, 0) + 1
        key = (id(counter), cause)
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        log.log(level, message, *args)

    def _take_downlink(self, conn: Any) -> None:
        messages, self._downlink = self._downlink, []
        for topic, payload in messages:
            if topic == anchor_topic(self.gateway):
                self._take_anchor(conn, payload)
            elif topic == disaster_topic():
                if self.declarations is not None:
                    with contextlib.suppress(DeclarationError):  # counted and logged by the declarations
                        self.declarations.take(payload, self.now())
            else:
                self._take_receipt(conn, topic, payload)

    def _take_receipt(self, conn: Any, topic: str, payload: bytes) -> None:
        """Keep an erasure receipt only if it is about one of this gateway's withdrawn consents."""
        store = ConsentStore(conn, self.gateway, load_keys(self.config.gateway.data_dir))
        try:
            try:
                receipt = ErasureReceipt.model_validate_json(payload)
            except ValueError as err:
                raise ReceiptError("invalid", str(err).replace("\n", " ")[:200]) from err
            outcome = store.take_receipt(topic, receipt, int(time.time() * 1000))
        except ReceiptError as err:
            self._refuse(self.stats.receipts_refused, err.cause, "ignored an erasure receipt on %s: %s", topic, err)
            return
        if outcome == "confirmed":
            self.stats.receipts += 1
            log.info("cloud confirmed erasure for consent %s: %d points", receipt.consent, receipt.points_erased)
        elif outcome == "known":
            self.stats.receipts_known += 1
        elif outcome == "incomplete":
            self.stats.receipts_incomplete += 1
            self._refuse(
                self.stats.receipts_refused,
                "data_remains",
                "the cloud reports %d point(s) remaining after erasure for consent %s: logged as incomplete",
                receipt.remaining,
                receipt.consent,
            )

    def _take_anchor(self, conn: Any, payload: bytes) -> None:
        """Keep the cloud's newest audit anchor; say at once if the local log disagrees with it."""
        try:
            anchor = AuditAnchor.model_validate_json(payload)
        except ValueError as err:
            self._refuse(self.stats.anchors_refused, "invalid", "ignored an audit anchor: %s", err)
            return
        if anchor.gateway != self.gateway:
            self._refuse(self.stats.anchors_refused, "wrong_gateway", "ignored an anchor for %s", anchor.gateway)
            return
        with tx(conn):
            if not audit.store_anchor(conn, anchor, int(time.time() * 1000)):
                return
            stored = audit.load_anchor(conn)
            assert stored is not None
            _, problem = audit.anchor_problem(conn, stored)
        self.stats.anchors += 1
        if problem and problem != self.stats.anchor_problem:
            log.error("the household's audit log disagrees with the cloud's anchor: %s", problem)
        self.stats.anchor_problem = problem

    # -- thread ------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        self._stop_evt.set()
        self.wake.set()
        self.join(timeout)

    def run(self) -> None:
        """The thread: the publishing loop, guarded (:meth:`_round`). A failure of a round that is not the
        network's (the database full or locked, a bug) is logged with its traceback, counted in
        ``stats.errors`` and retried with backoff: it never ends the thread silently. :attr:`beat` moves on every
        round; the agent's systemd watchdog stops being fed when it stalls (:meth:`Agent.healthy`)."""
        conn = connect(self.config.db_path)
        cfg = self.config.mqtt
        backoff = Backoff(cfg.reconnect_min.total_seconds(), cfg.reconnect_max.total_seconds())
        failures = Backoff(0.5, 30.0)
        try:
            while not self._stop_evt.is_set():
                self.beat = time.monotonic()
                try:
                    self._round(conn, backoff)
                    failures.reset()
                except Exception as err:  # the guard: anything a round raises is reported, then retried
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(err).__name__}: {err}"[:300]
                    if type(err).__name__ not in self._failed:  # each kind of failure once with its traceback
                        self._failed.add(type(err).__name__)
                        log.error("publisher round failed; retrying with backoff", exc_info=err)
                    else:
                        log.debug("publisher round failed again: %s", err)
                    self._stop_evt.wait(failures.next())
            self._drain_before_stop(conn)
        finally:
            conn.close()

    def _round(self, conn: Any, backoff: Backoff) -> None:
        """One round: (re)connect when needed, run paho's loop, settle acknowledgements, take the downlink, fill."""
        cfg = self.config.mqtt
        if not self._socket_open:
            try:
                if self._ever_connected:
                    self._client.reconnect()
                else:
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = int(cfg.session_expiry.total_seconds())
                    self._client.connect(
                        cfg.host,
                        cfg.port,
                        keepalive=int(cfg.keepalive.total_seconds()),
                        clean_start=False,
                        properties=props,
                    )
                    self._ever_connected = True
                self._socket_open = True
            except (OSError, ssl.SSLError) as err:
                self.stats.last_error = str(err)
                self._stop_evt.wait(backoff.next())
                return
        rc = self._client.loop(timeout=0.05)
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self.stats.connected = False
            self._socket_open = False
            self._stop_evt.wait(backoff.next())
            return
        if self.stats.connected:
            backoff.reset()
        self._settle(conn)
        if self._downlink:
            self._take_downlink(conn)
        due = bool(self._unrouted) and time.monotonic() >= self._unrouted_due
        if self.stats.connected and (self.wake.is_set() or self._maybe_more or due):
            self.wake.clear()
            self._fill(conn)

    def _drain_before_stop(self, conn: Any) -> None:
        """On a clean stop, give in-flight messages a moment to be acknowledged, then disconnect."""
        deadline = time.monotonic() + 2.0
        while self._inflight and self.stats.connected and time.monotonic() < deadline:
            self._client.loop(timeout=0.05)
            self._settle(conn)
        if self._client.is_connected():
            status = GatewayStatus(gateway=self.gateway, online=False, at=int(time.time() * 1000))
            info = self._client.publish(status_topic(self.gateway), status.model_dump_json(), qos=1, retain=True)
            end = time.monotonic() + 1.0
            while not info.is_published() and time.monotonic() < end:
                self._client.loop(timeout=0.05)
            self._client.disconnect()
            self._client.loop(timeout=0.1)

    def _settle(self, conn: Any) -> None:
        """Delete acknowledged rows and log them as sent; move refused ones aside and log them as not sent."""
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        done: list[Inflight] = []
        refused: list[tuple[Inflight, str]] = []
        items = events = 0
        for mid, reason in acked:
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # status message, not an outbox row
            code = reason.value if isinstance(reason, ReasonCode) else int(reason)
            if code >= 0x80:
                refused.append((row, str(reason)))
            elif code == NO_MATCHING_SUBSCRIBERS and not row.retained:
                # nobody took it (Mosquitto 2.0 does not restore the ingesters' $share subscriptions after a
                # restart, docs/OPERATIONS.md): not delivered, so it stays queued and is sent again after a backoff
                self._unrouted[row.seq] = row
                self.stats.unrouted += 1
            else:
                done.append(row)
                if "/event/" in row.topic:
                    events += row.items
                else:
                    items += row.items
        if self._unrouted and not self._unrouted_due:
            delay = self._unrouted_backoff.next()
            self._unrouted_due = time.monotonic() + delay
            log.warning(
                "%d message(s) reached no subscriber (no ingester subscribed yet); sending them again in %.1f s",
                len(self._unrouted),
                delay,
            )
        if done:
            self._unrouted_backoff.reset()
        if not done and not refused:
            return
        now_ms = int(time.time() * 1000)
        with tx(conn):
            for row, why in refused:
                conn.execute(
                    "INSERT OR REPLACE INTO refused(seq, topic, payload, reason, at) "
                    "SELECT seq, topic, payload, ?, ? FROM outbox WHERE seq = ?",
                    (why, now_ms, row.seq),
                )
            gone = [(r.seq,) for r in done] + [(r.seq,) for r, _ in refused]
            conn.executemany("DELETE FROM outbox WHERE seq = ?", gone)
            # One entry per consent and round, not per message: a round settles what one fill sent.
            log_releases(conn, "release_acked", _releases(done), now_ms)
            for why in sorted({w for _, w in refused}):
                not_sent = _releases(r for r, w in refused if w == why)
                log_releases(conn, "release_refused", not_sent, now_ms, {"reason": why})
            if refused:
                meta_add(conn, "refused", len(refused))
            meta_add(conn, "messages_sent", len(done))
            meta_add(conn, "aggregates_sent", items)
            meta_add(conn, "events_sent", events)
        if refused:
            log.error("broker refused %d message(s), e.g. seq %d: %s", len(refused), refused[0][0].seq, refused[0][1])
        self.stats.refused += len(refused)
        self.stats.messages_sent += len(done)
        self.stats.aggregates_sent += items
        self.stats.events_sent += events
        self.stats.inflight = len(self._inflight)

    def _fill(self, conn: Any) -> None:
        """Hand the next outbox rows to paho, up to the in-flight bound. Runs only when the agent queued
        something (``wake``) or the last fill was cut short by the bound, not on every loop turn."""
        room = self.config.mqtt.max_inflight - len(self._inflight)
        if room <= 0:
            self._maybe_more = True
            return
        if self._unrouted and self._unrouted_due and time.monotonic() >= self._unrouted_due:
            again = sorted(self._unrouted)[:room]
            marks = ",".join("?" * len(again))
            rows = conn.execute(
                f"SELECT seq, topic, payload, retain, items, consent FROM outbox WHERE seq IN ({marks})",  # noqa: S608
                again,
            ).fetchall()
            for seq in again:
                del self._unrouted[seq]
            self._unrouted_due = 0.0
            for seq, topic, payload, retain, items, consent in rows:
                info = self._client.publish(topic, bytes(payload), qos=1, retain=bool(retain))
                if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    self._inflight[info.mid] = Inflight(seq, items, topic, consent, bool(retain))
                else:
                    self._unrouted[seq] = Inflight(seq, items, topic, consent, bool(retain))
            room = self.config.mqtt.max_inflight - len(self._inflight)
            self._maybe_more = True
            if room <= 0:
                return
        rows = conn.execute(
            "SELECT seq, topic, payload, retain, items, consent FROM outbox WHERE seq >= ? ORDER BY seq LIMIT ?",
            (self._next_seq, room),
        ).fetchall()
        self._maybe_more = len(rows) == room
        for seq, topic, payload, retain, items, consent in rows:
            info = self._client.publish(topic, bytes(payload), qos=1, retain=bool(retain))
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # paho keeps the message and sends it after reconnecting; track it like any other.
                self._inflight[info.mid] = Inflight(seq, items, topic, consent, bool(retain))
                self._next_seq = seq + 1
                break
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.stats.last_error = f"publish rc={info.rc}"
                log.warning("paho did not queue seq %d: %s", seq, mqtt.error_string(info.rc))
                break
            self._inflight[info.mid] = Inflight(seq, items, topic, consent, bool(retain))
            self._next_seq = seq + 1
        self.stats.inflight = len(self._inflight)


def _releases(rows: Iterable[Inflight]) -> list[QueuedRow]:
    """The releases among settled rows (consent records and status messages are not releases)."""
    return [(r.seq, r.topic, r.consent, r.items) for r in rows if r.consent is not None]


def decode_status(payload: bytes) -> dict[str, Any]:
    """Parse a retained status message (for the CLI)."""
    doc = orjson.loads(payload)
    assert isinstance(doc, dict)
    return doc

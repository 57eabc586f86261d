"""The ledger's intake over MQTT (``kyojo ledger serve``): gateways publish their signed trading messages on
``kyojo/v1/<gw>/trade/<enroll|order|meter>`` (QoS 1), and withdraw with their usual retained consent record.

Who sent a message is the topic's ``<gw>``: the broker lets only the client whose certificate (chained to the
city CA) names that gateway write there (``provisioning.broker.gateway_acls``), so the topic is the identity the
transport proved. The intake has the broker role ``ledger``: it reads those topics and writes nothing.

Nothing accepted is lost or doubled: the intake acknowledges a message (paho ``manual_ack``) only once the
ledger committed its entry or refused it for good (a refusal is typed, counted and logged, and the service goes
on); when the database fails, the message stays unacknowledged, the intake drops its connections and comes back
after a backoff, and the broker redelivers it from the intake's persistent session. A redelivered message that
had in fact been committed is refused as ``replayed``: never a second entry.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_ingest.ledger.service import LedgerService
from kyojo.contract.wire import TOPIC_ROOT, TRADING_PURPOSE, ConsentStatus, WireError, decode_consent, parse_topic
from kyojo.runtime.backoff import Backoff

__all__ = ["TRADE_FILTER", "LedgerIntake"]

log = logging.getLogger(__name__)

TRADE_FILTER = f"{TOPIC_ROOT}/+/trade/+"
CONSENT_FILTER = f"{TOPIC_ROOT}/+/consent/+"
#: how long the broker keeps the intake's session (and queues for it) while it is away
SESSION_EXPIRY_S = 7 * 86_400


class LedgerIntake:
    """Subscribe, hand every message to a :class:`LedgerService`, acknowledge after the database answered.

    ``make_service``: opens a fresh service (its own database connection), called at start and after every
    database failure. ``tls``: the intake's client context (its ledger identity); None only on a loopback test
    broker. Run :meth:`run` in a thread; :meth:`stop` ends it."""

    def __init__(
        self,
        make_service: Callable[[], LedgerService],
        *,
        host: str,
        port: int,
        client_id: str,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._make_service = make_service
        self.host, self.port, self.client_id, self._tls, self._clock = host, port, client_id, tls, clock
        self.counts: Counter[str] = Counter()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._broken = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self._broken.set()

    def run(self) -> None:
        """Until :meth:`stop`: open the service, connect, serve; after a database failure, back off and again."""
        backoff = Backoff(0.2, 30.0)
        while not self._stop.is_set():
            self._broken.clear()
            try:
                svc = self._make_service()
            except psycopg.Error as err:
                self.counts["db_unavailable"] += 1
                log.warning("ledger intake: database unavailable (%s); retrying", err)
                self._stop.wait(backoff.next())
                continue
            svc.counts = self.counts  # one set of counters across reconnects
            acked = self.counts["acked"]
            client = self._client(svc)
            try:
                self._broken.wait()
            finally:
                self.connected.clear()
                client.disconnect()
                client.loop_stop()
                svc.store.close()
            if self.counts["acked"] > acked:
                backoff.reset()  # it worked for a while: the next failure starts from a short delay again
            self._stop.wait(backoff.next())

    def _client(self, svc: LedgerService) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True
        )
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.reconnect_delay_set(1, 30)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                self.counts[f"connack:{rc}"] += 1
                log.warning("ledger intake: the broker refused the connection: %s", rc)
                return
            c.subscribe([(TRADE_FILTER, 1), (CONSENT_FILTER, 1)])
            self.connected.set()

        def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                self._dispatch(svc, msg.topic, bytes(msg.payload))
            except psycopg.Error as err:
                # not acknowledged: the broker redelivers it once we are back with a working database
                self.counts["db_errors"] += 1
                log.error("ledger intake: database failed on %s (%s); reconnecting", msg.topic, err)
                self._broken.set()
                return
            except Exception:  # a bug must not stop the intake, nor make a message come back for ever
                self.counts["internal_errors"] += 1
                log.exception("ledger intake: could not handle a message on %s", msg.topic)
            c.ack(msg.mid, msg.qos)
            self.counts["acked"] += 1

        client.on_connect = on_connect
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        return client

    def _dispatch(self, svc: LedgerService, topic: str, payload: bytes) -> None:
        try:
            gateway, kind, _rest = parse_topic(topic)
        except WireError as err:
            self.counts[f"refused:{err.cause}"] += 1
            return
        now = self._clock()
        if kind == "trade":
            svc.handle(gateway, payload, now=now)
        elif kind == "consent" and payload:
            try:
                record = decode_consent(topic, payload)
            except WireError as err:
                self.counts[f"refused:{err.cause}"] += 1
                return
            if record.purpose == TRADING_PURPOSE and record.status is not ConsentStatus.ACTIVE:
                svc.handle(gateway, payload, now=now, consent=True)

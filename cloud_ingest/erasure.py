"""Erasure: when a household withdraws a consent, the cloud deletes what it holds for that subject and
purpose, checks that nothing is left, and sends the gateway a receipt.

One small service beside the ingesters. It follows the retained consent records (unshared subscription, like
every ingester); on a record whose status is ``withdrawn`` it waits ``grace`` seconds, so points an ingester
accepted just before it learned of the withdrawal are written before the delete, then runs InfluxQL
``DELETE WHERE household = <the withdrawing gateway's tag> AND subject = <pseudonym> AND purpose = <purpose>``
over every measurement (:mod:`cloud_ingest.scope`: a gateway can only ever erase its own points), counts what
remains, logs the erasure in the database itself (measurement ``kyojo_erasure``: consent, household tag, purpose,
counts — no personal data) so a restart does not erase twice, and publishes a retained :class:`ErasureReceipt`
to ``kyojo/v1/<gw>/receipt/<consent>``. Same settings as the ingester (``IngestSettings``: mTLS to the broker,
InfluxDB URL and credentials, scope key), with the eraser's own certificate (role ``eraser``), the only identity
the broker lets write receipts. InfluxDB 1.x's HTTP API (tested here); a 2.x deployment would use
``/api/v2/delete`` with the same predicate (not wired yet).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_ingest.config import IngestSettings
from cloud_ingest.influx import InfluxError, InfluxV1Connection
from cloud_ingest.influx import ident as ident  # re-exported: rollup and the tests quote with erasure.ident
from cloud_ingest.scope import HOUSEHOLD_TAG, Scope
from cloud_ingest.trust import GatewayKeys
from kyojo.contract.wire import ConsentRecord, ConsentStatus, ErasureReceipt, WireError, decode_consent, receipt_topic

log = logging.getLogger(__name__)

LOG_MEASUREMENT = "kyojo_erasure"


class EraseError(InfluxError, RuntimeError):
    """InfluxDB refused or failed a query the erasure needs."""


class InfluxV1Admin:
    """The few InfluxQL statements erasure and rollups need, over the v1 HTTP API (one short connection per call,
    :class:`cloud_ingest.influx.InfluxV1Connection`).

    ``https://`` URLs use TLS (``ca`` to trust a private CA); ``username``/``password`` authenticate (InfluxDB
    ``auth-enabled``), sent as HTTP Basic.
    """

    def __init__(
        self,
        url: str,
        db: str,
        timeout: float = 30.0,
        *,
        username: str | None = None,
        password: str | None = None,
        ca: str | None = None,
    ) -> None:
        self._http = InfluxV1Connection(
            url,
            username=username,
            password=password,
            ca=ca,
            timeout=timeout,
            keep_alive=False,
            default_port=8086,
            error=EraseError,
        )
        self.https, self.host, self.port = self._http.https, self._http.host, self._http.port
        self.db, self.timeout = db, timeout

    @classmethod
    def from_settings(cls, settings: IngestSettings, timeout: float = 30.0) -> InfluxV1Admin:
        """The admin client a cloud service's settings describe (URL, database, credentials)."""
        password = settings.influx_password.get_secret_value() if settings.influx_password else None
        ca = str(settings.influx_ca) if settings.influx_ca else None
        return cls(
            settings.influx_url,
            settings.influx_db,
            timeout,
            username=settings.influx_username,
            password=password,
            ca=ca,
        )

    def query(self, q: str) -> list[dict[str, Any]]:
        return self._query({"db": self.db, "q": q})

    def query_epoch_ms(self, q: str) -> list[dict[str, Any]]:
        """Like :meth:`query`, with times as epoch milliseconds."""
        return self._query({"db": self.db, "q": q, "epoch": "ms"})

    def _query(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return self._http.query(params)

    def retention_policies(self) -> list[str]:
        names: list[str] = []
        for r in self.query(f"SHOW RETENTION POLICIES ON {ident(self.db)}"):
            for series in r.get("series", []):
                names += [str(row[0]) for row in series.get("values", [])]
        return names or ["autogen"]

    def count(self, where: str) -> int:
        """Points matching ``where`` in every retention policy (raw aggregates, hourly rollups, ...)."""
        total = 0
        for rp in self.retention_policies():
            # count(*) counts each field; a point has at least one, so the largest field count per series is
            # its number of points (rollup measurements have other fields than the raw aggregates)
            q = f"SELECT count(*) FROM {ident(self.db)}.{ident(rp)}./.*/ WHERE {where}"  # noqa: S608 - quoted
            for r in self.query(q):
                for series in r.get("series", []):
                    if series.get("name") == LOG_MEASUREMENT:
                        continue
                    for row in series.get("values", []):
                        total += max((int(v or 0) for v in row[1:]), default=0)
        return total

    def write(self, line: str) -> None:
        self._http.post("/write", {"db": self.db, "precision": "ms"}, line.encode())


def _lit(value: str) -> str:
    """An InfluxQL string literal (single quotes, backslash-escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Eraser:
    """Follows consent records and erases on withdrawal. ``start()``/``stop()``; ``stats()``.

    It trusts a withdrawal only about the gateway that sent it: the record arrives on that gateway's own topic
    (the broker binds the topic to the certificate), the delete is restricted to that gateway's ``household`` tag,
    the erasure log is keyed by that tag and the consent id, and the receipt goes to that gateway's downlink only.
    With ``gateway_keys`` configured, a record must also carry its gateway's signature.
    """

    def __init__(
        self,
        settings: IngestSettings,
        *,
        client_id: str = "kyojo-eraser",
        grace_s: float = 5.0,
        retry_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.admin = InfluxV1Admin.from_settings(settings)
        self.db = settings.influx_db
        self.grace_s = grace_s
        self.retry_s = retry_s
        self.scope = Scope(settings.scope_key_bytes())
        self.keys = GatewayKeys.load(settings.gateway_keys) if settings.gateway_keys is not None else None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        if settings.tls:
            self.client.tls_set(
                ca_certs=str(settings.tls_ca) if settings.tls_ca else None,
                certfile=str(settings.tls_cert) if settings.tls_cert else None,
                keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
        if settings.username is not None:
            secret = settings.password.get_secret_value() if settings.password else None
            self.client.username_pw_set(settings.username, secret)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)
        self._queue: list[tuple[float, ConsentRecord]] = []
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._work, name="kyojo-eraser", daemon=True)
        self.erased: dict[tuple[str, str], ErasureReceipt] = {}
        self.errors = 0
        self.rejected = 0
        self.connected = False
        self.refused: str | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Connect and subscribe; raise ConnectionError when the broker refuses or does not answer in time."""
        from cloud_ingest.config import TrustError

        problems = [p for p in self.settings.trust_problems() if not p.startswith(("no group", "group "))]
        if problems:
            raise TrustError("eraser refuses to start: " + "; ".join(problems))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 7 * 86_400
        self._thread.start()
        try:
            self.client.connect(
                self.settings.broker_host,
                self.settings.broker_port,
                keepalive=self.settings.keepalive,
                clean_start=False,
                properties=props,
            )
        except (OSError, ssl.SSLError) as err:
            self.stop()
            raise ConnectionError(f"eraser: cannot reach the broker: {err}") from err
        self.client.loop_start()
        if not self._ready.wait(timeout) or self.refused:
            reason = self.refused or f"not subscribed within {timeout}s"
            self.stop()
            raise ConnectionError(f"eraser: {reason}")

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            pending = len(self._queue)
        return {
            "connected": self.connected,
            "healthy": self.connected and self._ready.is_set(),
            "erased": len(self.erased),
            "pending": pending,
            "errors": self.errors,
            "rejected": self.rejected,
        }

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if reason.is_failure:
            self.refused = f"broker refused the connection: {reason}"
            log.error("eraser: %s", self.refused)
            self._ready.set()
            return
        self.connected = True
        client.subscribe("kyojo/v1/+/consent/+", qos=1)

    def _on_subscribe(self, _c: object, _u: object, _mid: int, codes: list[Any], _p: object) -> None:
        if any(code.is_failure for code in codes):
            self.refused = f"consent subscription refused: {[str(c) for c in codes]}"
            log.error("eraser: %s", self.refused)
        self._ready.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.connected = False
        if not self._stop.is_set():
            log.warning("eraser disconnected: %s (reconnecting)", reason)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            record = decode_consent(msg.topic, bytes(msg.payload))
        except WireError as err:
            self.rejected += 1
            log.warning("eraser: refused consent message on %s: %s", msg.topic, err.cause)
            return
        if record.status is not ConsentStatus.WITHDRAWN:
            return
        if self.keys is not None and not self.keys.verify(record):
            self.rejected += 1
            log.warning("eraser: withdrawal %s/%s is not signed by its gateway: ignored", record.gateway, record.id)
            return
        with self._cv:
            self._queue.append((time.monotonic() + self.grace_s, record))
            self._cv.notify_all()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                now = time.monotonic()
                due = [r for t, r in self._queue if t <= now]
                self._queue = [(t, r) for t, r in self._queue if t > now]
                if not due:
                    wait = min((t for t, _ in self._queue), default=now + 0.5) - now
                    self._cv.wait(max(0.01, min(wait, 0.5)))
                    continue
            for record in due:
                try:
                    self.erase(record)
                except EraseError as err:
                    self.errors += 1
                    log.error("eraser: %s for consent %s; retrying in %.0f s", err, record.id, self.retry_s)
                    with self._cv:
                        self._queue.append((time.monotonic() + self.retry_s, record))

    def where(self, record: ConsentRecord) -> str:
        """The points this withdrawal covers: its gateway's household tag, its subject, its purpose."""
        household = self.scope.household(record.gateway, record.purpose)
        return (
            f'"{HOUSEHOLD_TAG}" = {_lit(household)} AND "subject" = {_lit(record.subject)} '
            f'AND "purpose" = {_lit(record.purpose)}'
        )

    def erase(self, record: ConsentRecord) -> ErasureReceipt:
        """Delete, verify, log, and publish the receipt. Idempotent: a logged erasure is only re-announced."""
        household = self.scope.household(record.gateway, record.purpose)
        done = self.admin.query(
            f'SELECT * FROM "{LOG_MEASUREMENT}" WHERE "consent" = {_lit(record.id)} '  # noqa: S608 - quoted literals
            f'AND "{HOUSEHOLD_TAG}" = {_lit(household)}'
        )
        rows = [s for r in done for s in r.get("series", [])]
        where = self.where(record)
        if rows:
            cols, values = rows[0]["columns"], rows[0]["values"][0]
            prior = dict(zip(cols, values, strict=True))
            receipt = ErasureReceipt(
                gateway=record.gateway,
                consent=record.id,
                subject=record.subject,
                purpose=record.purpose,
                points_erased=int(prior["points_erased"]),
                remaining=self.admin.count(where),
                erased_at=datetime.fromisoformat(str(prior["time"]).replace("Z", "+00:00")),
                store=f"influxdb:{self.db}",
            )
        else:
            before = self.admin.count(where)
            self.admin.query(f"DELETE WHERE {where}")
            remaining = self.admin.count(where)
            now = datetime.now(UTC)
            receipt = ErasureReceipt(
                gateway=record.gateway,
                consent=record.id,
                subject=record.subject,
                purpose=record.purpose,
                points_erased=before - remaining,
                remaining=remaining,
                erased_at=now,
                store=f"influxdb:{self.db}",
            )
            # the log names no gateway: the household tag and the consent id identify the erasure
            self.admin.write(
                f"{LOG_MEASUREMENT},consent={record.id},{HOUSEHOLD_TAG}={household},purpose={record.purpose} "
                f"points_erased={receipt.points_erased}i,remaining={remaining}i {int(now.timestamp() * 1000)}"
            )
            log.info("erased %d points for consent %s (%s)", receipt.points_erased, record.id, record.purpose)
        info = self.client.publish(
            receipt_topic(record.gateway, record.id), receipt.model_dump_json(), qos=1, retain=True
        )
        info.wait_for_publish(10)
        self.erased[(record.gateway, record.id)] = receipt
        return receipt

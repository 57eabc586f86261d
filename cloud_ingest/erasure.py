"""Erasure: when a household withdraws a consent, the cloud deletes what it holds for that subject and
purpose, checks that nothing is left, and sends the gateway a receipt.

One small service beside the ingesters. It follows the retained consent records (unshared subscription, like
every ingester); on a record whose status is ``withdrawn`` it waits ``grace`` seconds, so points an ingester
accepted just before it learned of the withdrawal are written before the delete, then runs InfluxQL
``DELETE WHERE subject = <pseudonym> AND purpose = <purpose>`` over every measurement, counts what remains, logs
the erasure in the database itself (measurement ``kyojo_erasure``: consent, pseudonym, purpose, counts — no
personal data) so a restart does not erase twice, and publishes a retained :class:`ErasureReceipt` to
``kyojo/v1/<gw>/receipt/<consent>``. InfluxDB 1.x's HTTP API (tested here); a 2.x deployment would use
``/api/v2/delete`` with the same predicate (not wired yet).
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.base import KyojoError
from edge_agent.wire import ConsentRecord, ConsentStatus, ErasureReceipt, WireError, decode_consent, receipt_topic

log = logging.getLogger(__name__)

LOG_MEASUREMENT = "kyojo_erasure"


class EraseError(KyojoError, RuntimeError):
    """InfluxDB refused or failed a query the erasure needs."""


class InfluxV1Admin:
    """The few InfluxQL statements erasure needs, over the v1 HTTP API (one short connection per call)."""

    def __init__(self, url: str, db: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 8086
        self.db, self.timeout = db, timeout

    def _post(self, path: str, params: dict[str, str], body: bytes = b"") -> bytes:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", f"{path}?{urllib.parse.urlencode(params)}", body=body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as err:
            raise EraseError(f"InfluxDB unreachable: {err}") from err
        finally:
            conn.close()
        if resp.status >= 300:
            raise EraseError(f"InfluxDB {resp.status}: {data[:300]!r}")
        return data

    def query(self, q: str) -> list[dict[str, Any]]:
        return self._query({"db": self.db, "q": q})

    def query_epoch_ms(self, q: str) -> list[dict[str, Any]]:
        """Like :meth:`query`, with times as epoch milliseconds."""
        return self._query({"db": self.db, "q": q, "epoch": "ms"})

    def _query(self, params: dict[str, str]) -> list[dict[str, Any]]:
        doc = json.loads(self._post("/query", params))
        results: list[dict[str, Any]] = doc.get("results", [])
        for r in results:
            if "error" in r:
                raise EraseError(f"InfluxQL error: {r['error']}")
        return results

    def retention_policies(self) -> list[str]:
        names: list[str] = []
        for r in self.query(f'SHOW RETENTION POLICIES ON "{self.db}"'):
            for series in r.get("series", []):
                names += [str(row[0]) for row in series.get("values", [])]
        return names or ["autogen"]

    def count(self, where: str) -> int:
        """Points matching ``where`` in every retention policy (raw aggregates, hourly rollups, ...)."""
        total = 0
        for rp in self.retention_policies():
            # count(*) counts each field; a point has at least one, so the largest field count per series is
            # its number of points (rollup measurements have other fields than the raw aggregates)
            q = f'SELECT count(*) FROM "{self.db}"."{rp}"./.*/ WHERE {where}'  # noqa: S608 - quoted literals
            for r in self.query(q):
                for series in r.get("series", []):
                    if series.get("name") == LOG_MEASUREMENT:
                        continue
                    for row in series.get("values", []):
                        total += max((int(v or 0) for v in row[1:]), default=0)
        return total

    def write(self, line: str) -> None:
        self._post("/write", {"db": self.db, "precision": "ms"}, line.encode())


def _lit(value: str) -> str:
    """An InfluxQL string literal (single quotes, backslash-escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Eraser:
    """Follows consent records and erases on withdrawal. ``start()``/``stop()``; ``stats()``."""

    def __init__(
        self,
        broker_host: str,
        broker_port: int,
        influx_url: str,
        db: str,
        *,
        client_id: str = "kyojo-eraser",
        grace_s: float = 5.0,
    ) -> None:
        self.admin = InfluxV1Admin(influx_url, db)
        self.db = db
        self.grace_s = grace_s
        self.broker = (broker_host, broker_port)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)
        self._queue: list[tuple[float, ConsentRecord]] = []
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="kyojo-eraser", daemon=True)
        self.erased: dict[str, ErasureReceipt] = {}
        self.errors = 0
        self.rejected = 0

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 7 * 86_400
        self._thread.start()
        self.client.connect(*self.broker, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()

    def stats(self) -> dict[str, Any]:
        return {
            "erased": len(self.erased),
            "pending": len(self._queue),
            "errors": self.errors,
            "rejected": self.rejected,
        }

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if not reason.is_failure:
            client.subscribe("kyojo/v1/+/consent/+", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            record = decode_consent(msg.topic, bytes(msg.payload))
        except WireError as err:
            self.rejected += 1
            log.warning("eraser: refused consent message on %s: %s", msg.topic, err.cause)
            return
        if record.status is ConsentStatus.WITHDRAWN:
            with self._cv:
                self._queue.append((time.monotonic() + self.grace_s, record))
                self._cv.notify_all()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                due = [r for t, r in self._queue if t <= time.monotonic()]
                self._queue = [(t, r) for t, r in self._queue if t > time.monotonic()]
                if not due:
                    self._cv.wait(0.2)
                    continue
            for record in due:
                try:
                    self.erase(record)
                except EraseError as err:
                    self.errors += 1
                    log.error("eraser: %s for consent %s; retrying in 30 s", err, record.id)
                    with self._cv:
                        self._queue.append((time.monotonic() + 30, record))

    def erase(self, record: ConsentRecord) -> ErasureReceipt:
        """Delete, verify, log, and publish the receipt. Idempotent: a logged erasure is only re-announced."""
        done = self.admin.query(
            f'SELECT * FROM "{LOG_MEASUREMENT}" WHERE "consent" = {_lit(record.id)}'  # noqa: S608
        )
        rows = [s for r in done for s in r.get("series", [])]
        where = f'"subject" = {_lit(record.subject)} AND "purpose" = {_lit(record.purpose)}'
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
            self.admin.write(
                f"{LOG_MEASUREMENT},consent={record.id},purpose={record.purpose} "
                f"points_erased={receipt.points_erased}i,remaining={remaining}i {int(now.timestamp() * 1000)}"
            )
            log.info("erased %d points for consent %s (%s)", receipt.points_erased, record.id, record.purpose)
        info = self.client.publish(
            receipt_topic(record.gateway, record.id), receipt.model_dump_json(), qos=1, retain=True
        )
        info.wait_for_publish(10)
        self.erased[record.id] = receipt
        return receipt

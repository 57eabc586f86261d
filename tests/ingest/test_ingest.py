"""The cloud ingester against a real Mosquitto and a real InfluxDB 1.6.7 (no mocks of either).

In-process ingesters for the validation table, consents and idempotency; ``python -m cloud_ingest run``
subprocesses for kill -9 and scale-out, so a process can really die between receive and write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_ingest.config import IngestSettings
from cloud_ingest.ingester import Ingester
from cloud_ingest.scope import Scope
from kyojo.contract.wire import MAX_PAYLOAD_BYTES, ConsentRecord, ConsentStatus, agg_topic, consent_topic
from provisioning.local import InfluxDB, Mosquitto
from tests.kit import ROOT, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx]

T0 = 1_700_000_000_000


class Publisher:
    """A plain MQTT v5 publisher (what a gateway's outbox does on the wire)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        info.wait_for_publish(10)

    def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in messages]
        assert all(i.rc == mqtt.MQTT_ERR_SUCCESS for i in infos)
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(mosquitto)
    yield p
    p.close()


def consent(
    gw: str,
    cid: str = "c1",
    *,
    subject: str = "hh-1",
    purpose: str = "community-energy",
    categories: tuple[str, ...] = ("energy",),
    status: ConsentStatus = ConsentStatus.ACTIVE,
    expires_at: datetime | None = None,
) -> tuple[str, bytes]:
    rec = ConsentRecord(
        gateway=gw,
        id=cid,
        subject=subject,
        purpose=purpose,
        categories=list(categories),  # type: ignore[arg-type]
        status=status,
        given_at=datetime(2023, 1, 1, tzinfo=UTC),
        expires_at=expires_at,
    )
    return consent_topic(gw, cid), rec.model_dump_json().encode()


def batch_doc(
    gw: str,
    seq: int = 0,
    *,
    n: int = 3,
    consent_id: str = "c1",
    subject: str = "hh-1",
    start: int = T0,
    metric: str = "power",
    **kw: Any,
) -> dict[str, Any]:
    items = [
        {
            "metric": metric,
            "subject": subject,
            "device": f"plug-{i}",
            "start": start + seq * 1000,
            "window_s": 60,
            "count": 60,
            "mean": 100.0 + i,
            "min": 1.0,
            "max": 250.5,
            "last": 99.0,
        }
        for i in range(n)
    ]
    doc: dict[str, Any] = {
        "v": 1,
        "gateway": gw,
        "seq": seq,
        "sent": int(time.time() * 1000),
        "consent": consent_id,
        "purpose": "community-energy",
        "category": "energy",
        "items": items,
    }
    doc.update(kw)
    return doc


def settings(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    db: str,
    *,
    client_id: str | None = None,
    group: str | None = None,
    **kw: Any,
) -> IngestSettings:
    return IngestSettings(
        broker_host=mosquitto.host,
        broker_port=mosquitto.port,
        client_id=client_id or f"ing-{uuid.uuid4().hex[:8]}",
        group=group or f"g{uuid.uuid4().hex[:8]}",
        influx_url=influxdb.url,
        influx_db=db,
        session_expiry=kw.pop("session_expiry", 60),
        batch_interval=kw.pop("batch_interval", timedelta(milliseconds=50)),
        consent_wait=kw.pop("consent_wait", 0.5),  # unknown consents are refused after half a second here
        **kw,
    )


def new_gw() -> str:
    return f"gw-{uuid.uuid4().hex[:10]}"


def count_power(influxdb: InfluxDB, db: str, gw: str | None = None) -> int:
    """Points of ``power`` in the test's own database (points carry no gateway tag: ``gw`` is not a filter)."""
    rows = influxdb.query_rows('SELECT count("last") FROM "power"', db=db)
    return sum(int(r["count"]) for r in rows)


# ------------------------------------------------------------------------------------------------------------
# in-process ingester
# ------------------------------------------------------------------------------------------------------------


def test_good_message_is_written_with_tags_and_fields(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    with Ingester(settings(mosquitto, influxdb, influx_db)) as ing:
        assert ing.stats()["consents_known"] >= 1
        pub.publish(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, n=3)))
        assert ing.wait_idle()
        st = ing.stats()
    assert st["received"] == 1
    assert st["written"] == 3
    assert st["rejected"] == {}
    assert st["connected"] is False or st["connected"] is True
    rows = influxdb.query_rows('SELECT * FROM "power" ORDER BY time', db=influx_db)
    assert len(rows) == 3
    row = sorted(rows, key=lambda r: r["device"])[1]
    assert row == {
        "_measurement": "power",
        "time": T0,
        "category": "energy",
        "device": "plug-1",
        "household": Scope().household(gw, "community-energy"),  # the cloud's tag of the sending gateway
        "purpose": "community-energy",
        "subject": "hh-1",
        "count": 60,
        "window_s": 60,
        "mean": 101.0,
        "min": 1.0,
        "max": 250.5,
        "last": 99.0,
    }
    assert st["write_latency_ms"]["last"] > 0
    assert st["batches"] >= 1


def _bad_messages(gw: str) -> list[tuple[str, str, bytes]]:
    """(expected cause, topic, payload) for every kind of bad message."""
    topic = agg_topic(gw, "energy")

    def dump(**kw: Any) -> bytes:
        return orjson.dumps(batch_doc(gw, **kw))

    ok = batch_doc(gw)
    unknown_metric = batch_doc(gw)
    unknown_metric["items"][0]["metric"] = "horsepower"
    health_in_energy = batch_doc(gw)
    health_in_energy["items"][0]["metric"] = "heart_rate"
    two_subjects = batch_doc(gw)
    two_subjects["items"][1]["subject"] = "hh-2"
    spike = batch_doc(gw, metric="energy")
    spike["items"][0]["delta"] = 1e9  # the demo's 1 GWh "roll-over" in one minute: no supply delivers that
    fine = batch_doc(gw)
    fine["items"][0]["window_s"] = 10
    big = batch_doc(gw, audit_head="x" * 10)
    oversize = orjson.dumps(big) + b" " * MAX_PAYLOAD_BYTES
    return [
        ("bad_json", topic, b"{not json"),
        ("invalid", topic, b"[1, 2, 3]"),
        ("schema_version", topic, dump(v=2)),
        ("schema_version", topic, orjson.dumps({k: v for k, v in ok.items() if k != "v"})),
        ("gateway_mismatch", agg_topic("gw-other", "energy"), dump()),
        ("category_mismatch", agg_topic(gw, "ev"), dump()),
        ("oversize", topic, oversize),
        ("unknown_consent", topic, dump(consent_id="nope")),
        ("consent_withdrawn", topic, dump(consent_id="cw")),
        ("consent_expired", topic, dump(consent_id="cx")),
        ("consent_expired", topic, dump(consent_id="cxs")),
        ("consent_mismatch", topic, dump(subject="hh-9")),
        ("consent_mismatch", topic, orjson.dumps(two_subjects)),
        # a consent for a purpose the city's catalog does not have is refused as a record: unknown here
        ("unknown_consent", topic, dump(consent_id="cp")),
        # the consent's terms, enforced by the cloud too: nothing from before it was given, nothing finer than
        # the purpose's minute windows
        ("consent_time", topic, orjson.dumps(batch_doc(gw, start=1_600_000_000_000))),
        ("consent_granularity", topic, orjson.dumps(fine)),
        ("invalid", topic, orjson.dumps(spike)),
        ("invalid", topic, orjson.dumps(unknown_metric)),
        ("metric_category", topic, orjson.dumps(health_in_energy)),
        ("invalid", topic, dump(items=[])),
        ("invalid", topic, dump(extra_field=1)),
        ("invalid", topic, dump(seq=-1)),
    ]


def test_malformed_messages_are_rejected_by_cause_and_ingestion_goes_on(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    gw = new_gw()
    past = datetime.now(UTC) - timedelta(hours=1)
    for record in (
        consent(gw),
        consent(gw, "cw", status=ConsentStatus.WITHDRAWN),
        consent(gw, "cx", expires_at=past),
        consent(gw, "cxs", status=ConsentStatus.EXPIRED),
        consent(gw, "cp", purpose="marketing"),
    ):
        pub.publish(*record, retain=True)
    bad = _bad_messages(gw)
    expected: dict[str, int] = {}
    for cause, _, _ in bad:
        expected[cause] = expected.get(cause, 0) + 1
    expected["consent_record_purpose"] = 1  # the "marketing" record itself
    try:
        with Ingester(settings(mosquitto, influxdb, influx_db)) as ing:
            for _cause, topic, payload in bad:
                pub.publish(topic, payload)
            pub.publish(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=1, n=4)))
            assert ing.wait_idle()
            st = ing.stats()
    finally:  # the broker is shared: later tests' ingesters must not meet the refused record
        pub.publish(consent_topic(gw, "cp"), b"", retain=True)
    assert st["rejected"] == expected
    assert st["received"] == sum(expected.values()) - 1 + 1  # the record is not a data message; the good one is
    assert st["written"] == 4
    assert count_power(influxdb, influx_db, gw) == 4


def test_consent_withdrawal_and_clearing_take_effect(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    gw = new_gw()
    topic = agg_topic(gw, "energy")
    pub.publish(*consent(gw), retain=True)
    # consent records and data travel on two connections with no order between them: each step waits for the
    # ingester to have taken the previous one
    with Ingester(settings(mosquitto, influxdb, influx_db)) as ing:
        pub.publish(topic, orjson.dumps(batch_doc(gw, seq=0)))
        assert wait_for(lambda: ing.stats()["written"] == 3)
        updates = ing.stats()["consent_updates"]
        pub.publish(*consent(gw, status=ConsentStatus.WITHDRAWN), retain=True)
        assert wait_for(lambda: ing.stats()["consent_updates"] > updates)
        pub.publish(topic, orjson.dumps(batch_doc(gw, seq=1)))
        assert wait_for(lambda: ing.stats()["received"] == 2)
        updates = ing.stats()["consent_updates"]
        pub.publish(consent_topic(gw, "c1"), b"", retain=True)  # empty retained payload: record cleared
        assert wait_for(lambda: ing.stats()["consent_updates"] > updates)
        pub.publish(topic, orjson.dumps(batch_doc(gw, seq=2)))
        assert wait_for(lambda: ing.stats()["received"] == 3)
        assert ing.wait_idle()
        st = ing.stats()
    assert st["written"] == 3
    assert st["rejected"] == {"consent_withdrawn": 1, "unknown_consent": 1}
    assert count_power(influxdb, influx_db, gw) == 3


@pytest.mark.parametrize("client", ["lean", "paho"])
def test_redelivered_message_does_not_double_points(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher, client: str
) -> None:
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    payload = orjson.dumps(batch_doc(gw, n=5))
    with Ingester(settings(mosquitto, influxdb, influx_db, mqtt_client=client)) as ing:
        pub.publish(agg_topic(gw, "energy"), payload)
        pub.publish(agg_topic(gw, "energy"), payload)
        assert ing.wait_idle()
        st = ing.stats()
    assert st["written"] == 10  # two writes ...
    assert count_power(influxdb, influx_db, gw) == 5  # ... one point per item


@pytest.mark.parametrize("client", ["lean", "paho"])
def test_many_messages_in_many_batches_exactly_once(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher, client: str
) -> None:
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    n_msgs = 2000
    cfg = settings(mosquitto, influxdb, influx_db, batch_points=500, max_batch_points=2000, mqtt_client=client)
    with Ingester(cfg) as ing:
        pub.publish_many([(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=s, n=10))) for s in range(n_msgs)])
        assert ing.wait_idle(30)
        st = ing.stats()
    assert st["written"] == n_msgs * 10
    assert st["batches"] >= 10  # batches close at >= 500 points, and none exceeds 2,000 (max_batch_points)
    assert st["fast_path"] == n_msgs
    assert count_power(influxdb, influx_db, gw) == n_msgs * 10


def test_field_type_conflict_rejects_only_the_culprit(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    """InfluxDB answers 400 (partial write) for a field type conflict: the batch is bisected by message."""
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    # Field types are fixed per measurement and shard: make "count" a string in "voltage" for the shard of
    # T0, so any voltage point we write there conflicts (our count is an integer).
    influxdb.write_lines(f'voltage,gateway=other count="x" {T0}', db=influx_db)
    topic = agg_topic(gw, "energy")
    msgs = [(topic, orjson.dumps(batch_doc(gw, seq=s, n=2, metric="voltage" if s == 3 else "power"))) for s in range(8)]
    with Ingester(settings(mosquitto, influxdb, influx_db, batch_interval=timedelta(seconds=1))) as ing:
        pub.publish_many(msgs)  # all 8 land in one batch (1 s interval): 400, then bisection
        assert ing.wait_idle(20)
        st = ing.stats()
    assert st["rejected"] == {"influx_rejected": 1}
    assert st["written"] == 14
    assert count_power(influxdb, influx_db, gw) == 14


def test_influx_down_holds_messages_until_it_is_back(fresh_mosquitto: Mosquitto, tmp_path: Path) -> None:
    """InfluxDB unreachable: nothing is acked or lost; retries with backoff; catches up when it's back."""
    from provisioning.local import InfluxDB as Influx

    server = Influx(tmp_path / "influx")
    server.start()
    try:
        server.create_database("db")
        gw = new_gw()
        p = Publisher(fresh_mosquitto)
        p.publish(*consent(gw), retain=True)
        cfg = settings(fresh_mosquitto, server, "db", retry_initial=0.05, retry_max=0.2)
        with Ingester(cfg) as ing:
            server.stop()
            p.publish_many([(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=s))) for s in range(20)])
            assert wait_for(lambda: ing.stats()["retries"] >= 3)
            assert ing.stats()["written"] == 0
            server.start()
            assert ing.wait_idle(20)
            st = ing.stats()
        p.close()
        assert st["written"] == 60
        assert count_power(server, "db", gw) == 60
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------------------
# ingester processes (python -m cloud_ingest run)
# ------------------------------------------------------------------------------------------------------------


class Proc:
    """An ingester subprocess; reads its JSON stats lines in a thread."""

    def __init__(self, broker: Mosquitto, influx: InfluxDB, db: str, client_id: str, group: str, *extra: str):
        cmd = [
            sys.executable, "-m", "cloud_ingest", "run",
            "--broker-host", broker.host, "--broker-port", str(broker.port),
            "--influx-url", influx.url, "--influx-db", db,
            "--client-id", client_id, "--group", group,
            "--session-expiry", "120", "--stats-interval", "0.2", *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        self.last: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert wait_for(lambda: self.last.get("event") == "started" or self.proc.poll() is not None, 20)
        assert self.proc.poll() is None, self.stderr()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.last = json.loads(raw)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.last)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def terminate(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.close()
        final = self.stats()
        assert final.get("final") is True
        return final

    def close(self) -> None:
        self.proc.wait(20)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_kill_9_between_receive_and_write_loses_nothing(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    client_id, group = f"ing-{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    n_msgs = 300
    # receives everything, writes nothing: batches are flushed only at 10^9 points or after an hour
    first = Proc(
        mosquitto,
        influxdb,
        influx_db,
        client_id,
        group,
        "--batch-points",
        "1000000000",
        "--max-pending-points",
        "1000000000",
        "--batch-interval",
        "3600",
    )
    msgs = [(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=s, n=10))) for s in range(n_msgs)]
    pub.publish_many(msgs)
    assert wait_for(lambda: first.stats().get("accepted") == n_msgs), first.stats()
    assert first.stats()["written"] == 0
    first.kill9()
    assert count_power(influxdb, influx_db, gw) == 0
    # same client id, normal settings: the broker resends the unacknowledged messages of the session
    second = Proc(mosquitto, influxdb, influx_db, client_id, group)
    assert wait_for(lambda: count_power(influxdb, influx_db, gw) == n_msgs * 10, 30)
    final = second.terminate()
    assert final["written"] == n_msgs * 10
    assert final["rejected"] == {}
    assert count_power(influxdb, influx_db, gw) == n_msgs * 10


@pytest.mark.slow
def test_two_ingesters_share_the_load_without_loss_or_doubles(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    gw = new_gw()
    pub.publish(*consent(gw), retain=True)
    group = f"g{uuid.uuid4().hex[:8]}"
    procs = [Proc(mosquitto, influxdb, influx_db, f"ing-{uuid.uuid4().hex[:8]}", group) for _ in range(2)]
    n_msgs = 3000
    pub.publish_many([(agg_topic(gw, "energy"), orjson.dumps(batch_doc(gw, seq=s, n=10))) for s in range(n_msgs)])
    assert wait_for(lambda: count_power(influxdb, influx_db, gw) == n_msgs * 10, 40)
    finals = [p.terminate() for p in procs]
    received = [f["received"] for f in finals]
    assert all(r > 0 for r in received), received
    assert sum(received) == n_msgs  # each message went to exactly one member of the group
    assert sum(f["written"] for f in finals) == n_msgs * 10
    assert count_power(influxdb, influx_db, gw) == n_msgs * 10


def test_gateways_online_follows_each_gateways_own_retained_status(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, pub: Publisher
) -> None:
    """Issue 22 item 17: ``platform.gateways_online`` was never filled. Every ingester reads every gateway's retained
    status (and will); a status naming another gateway than its topic is refused and counted."""
    from kyojo.contract.wire import GatewayStatus, status_topic

    a, b, c = new_gw(), new_gw(), new_gw()

    def status(gw: str, online: bool) -> bytes:
        return GatewayStatus(gateway=gw, online=online, at=T0).model_dump_json().encode()

    with Ingester(settings(mosquitto, influxdb, influx_db)) as ing:
        assert wait_for(lambda: ing.stats()["consents_loading"] is False)
        base = ing.stats()["gateways_online"]  # retained statuses of earlier tests on this broker
        pub.publish(status_topic(a), status(a, True), retain=True)
        pub.publish(status_topic(b), status(b, True), retain=True)
        pub.publish(status_topic(c), status(a, True), retain=True)  # c speaking for a
        assert wait_for(lambda: ing.stats()["rejected"].get("bad_status", 0) == 1)
        assert wait_for(lambda: ing.stats()["gateways_online"] == base + 2)
        pub.publish(status_topic(a), status(a, False), retain=True)  # what a's will says
        assert wait_for(lambda: ing.stats()["gateways_online"] == base + 1)
        pub.publish(status_topic(b), b"", retain=True)  # retained status cleared
        pub.publish(status_topic(c), b"", retain=True)
        assert wait_for(lambda: ing.stats()["gateways_online"] == base)
    for gw in (a, b):
        pub.publish(status_topic(gw), b"", retain=True)

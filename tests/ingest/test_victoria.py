"""The ingester against a real VictoriaMetrics (Debian's ``victoria-metrics``) through its InfluxDB line-protocol
endpoint, with the ingester's own v1 writer (issue 20, section 2; docs/SCALING.md).

The same guarantees as against InfluxDB: every acknowledged point is stored (also across a store outage), and a
redelivered batch does not double. InfluxDB gets the second from its data model (measurement + tags + timestamp
identify a point); VictoriaMetrics keeps every sample it is sent, so it needs ``-dedup.minScrapeInterval=1ms``,
which the harness sets and the first test shows is needed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_ingest.config import IngestSettings
from cloud_ingest.ingester import Ingester
from cloud_ingest.scope import Scope
from cloud_ingest.writer import InfluxV1Writer
from kyojo.contract.wire import ConsentRecord, ConsentStatus, agg_topic, consent_topic
from provisioning.local import Mosquitto, VictoriaMetrics
from tests.kit import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.victoria]

T0 = 1_700_000_000_000
LINES = (
    b"power,category=energy,device=plug-1,household=h-1,purpose=community-energy,subject=hh-1 "
    b"count=60i,window_s=60i,mean=101.0,last=99.0 1700000000000\n"
    b"power,category=energy,device=plug-2,household=h-1,purpose=community-energy,subject=hh-1 "
    b"count=60i,window_s=60i,mean=102.0,last=98.0 1700000000000\n"
)


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path / "vm") as vm:
        yield vm


def test_a_rewritten_point_is_one_sample_only_with_dedup(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    """The same lines written twice (what a redelivered MQTT message makes the ingester do)."""
    with VictoriaMetrics(tmp_path / "vm-nodedup", dedup="") as plain:
        for vm in (victoria, plain):
            writer = InfluxV1Writer(vm.url, "kyojo")
            writer.write(LINES)
            writer.write(LINES)
            writer.close()
            vm.force_flush()
        assert plain.samples("power_last") == 4  # VictoriaMetrics keeps every sample it is sent ...
    assert victoria.samples("power_last") == 2  # ... unless it deduplicates per series and millisecond
    series = {s["metric"]["device"]: s for s in victoria.export("power_mean")}
    assert series["plug-1"]["metric"] == {
        "__name__": "power_mean",  # <measurement>_<field>
        "db": "kyojo",  # the v1 API's ?db= becomes a label
        "category": "energy",
        "device": "plug-1",
        "household": "h-1",
        "purpose": "community-energy",
        "subject": "hh-1",
    }
    assert (series["plug-1"]["timestamps"], series["plug-1"]["values"]) == ([T0], [101.0])


class _Publisher:
    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        assert all(i.rc == mqtt.MQTT_ERR_SUCCESS for i in infos)
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _batch(gw: str, seq: int) -> bytes:
    items = [
        {"metric": "power", "subject": "hh-1", "device": f"plug-{i}", "start": T0 + seq * 60_000, "window_s": 60,
         "count": 60, "mean": 100.0 + i, "min": 1.0, "max": 250.5, "last": float(seq)}
        for i in range(10)
    ]  # fmt: skip
    doc = {"v": 1, "gateway": gw, "seq": seq, "sent": int(time.time() * 1000), "consent": "c1",
           "purpose": "community-energy", "category": "energy", "items": items}  # fmt: skip
    return orjson.dumps(doc)


def test_ingester_writes_every_point_once_across_a_store_outage(
    mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    """Through the broker and the real ingester: 200 batches, 50 of them delivered twice, VictoriaMetrics stopped
    and started again in the middle. Every point is there once, with its value."""
    gw = f"gw-{uuid.uuid4().hex[:10]}"
    pub = _Publisher(mosquitto)
    rec = ConsentRecord(gateway=gw, id="c1", subject="hh-1", purpose="community-energy", categories=["energy"],  # type: ignore[list-item]
                        status=ConsentStatus.ACTIVE, given_at=datetime(2023, 1, 1, tzinfo=UTC))  # fmt: skip
    pub.publish([(consent_topic(gw, "c1"), rec.model_dump_json().encode())], retain=True)
    settings = IngestSettings(
        broker_host=mosquitto.host,
        broker_port=mosquitto.port,
        client_id=f"ing-{uuid.uuid4().hex[:8]}",
        group=f"g{uuid.uuid4().hex[:8]}",
        influx_url=victoria.url,
        influx_db="kyojo",
        session_expiry=60,
        batch_interval=timedelta(milliseconds=50),
        retry_max=0.5,
    )
    topic = agg_topic(gw, "energy")
    try:
        with Ingester(settings) as ing:
            pub.publish([(topic, _batch(gw, s)) for s in range(100)])
            pub.publish([(topic, _batch(gw, s)) for s in range(50)])  # a redelivery of the first 50
            assert wait_for(lambda: ing.stats()["written"] >= 1500, 20, "first half written")
            victoria.stop()
            pub.publish([(topic, _batch(gw, s)) for s in range(100, 200)])  # held, not acknowledged, while down
            assert wait_for(lambda: ing.stats()["retries"] > 0, 10, "a failed write")
            assert ing.stats()["written"] == 1500
            victoria.start()
            assert wait_for(lambda: ing.stats()["written"] == 2500, 20, "the rest written after the outage")
            assert ing.wait_idle()
    finally:
        pub.close()
    victoria.force_flush()
    assert victoria.samples("power_last") == 2000  # 200 batches x 10 items: nothing lost, nothing doubled
    household = Scope().household(gw, "community-energy")
    per_series = victoria.export(f'power_last{{household="{household}",device="plug-3"}}')
    assert len(per_series) == 1
    assert per_series[0]["timestamps"] == [T0 + s * 60_000 for s in range(200)]
    assert per_series[0]["values"] == [float(s) for s in range(200)]

"""Benchmark (not a test): cloud ingestion rates, all measured in the same run on the same machine.

It starts its own Mosquitto and InfluxDB 1.x, pre-fills the broker with gateway messages of 10 aggregate items
each (the shape of a window flush), then measures, each phase into its own database:

(a) ``bulk``  InfluxDB's own bulk /write rate from one writer (pre-built lines, 5,000 points per POST);
(b) ``naive`` paho -> json.loads -> f-string line protocol -> POST 5,000-point batches inside on_message;
(c) ``kyojo`` one ``python -m cloud_ingest run`` process;
(d) ``two``   two kyojo processes on one shared subscription.

Pre-fill: every consumer's client id first registers a persistent session (clean_start=False, session expiry)
subscribed to its filter and disconnects; then N messages are published once (QoS 1, a few publisher
connections), so the broker queues them for every session at once. Each consumer is then started and timed
until a count query shows all its points in InfluxDB (the time includes process start-up). The last line
printed is one JSON object with the figures.

    .venv/bin/python bench/ingest.py [--messages N] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

from edge_agent.wire import ConsentRecord, ConsentStatus, agg_topic, consent_topic  # noqa: E402
from provisioning.local import InfluxDB, Mosquitto  # noqa: E402

ITEMS = 10
GATEWAYS = 20
T0 = 1_700_000_000_000
BATCH = 5000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_messages(n: int) -> list[tuple[str, bytes]]:
    out = []
    for k in range(n):
        gw, seq = f"gw-{k % GATEWAYS:03d}", k // GATEWAYS
        items = [
            {"metric": "power", "subject": f"hh-{gw}", "device": f"plug-{i}", "start": T0 + seq * 60_000,
             "window_s": 60, "count": 60, "mean": 100.0 + i + seq % 7, "min": 3.5, "max": 250.25, "last": 99.5}
            for i in range(ITEMS)
        ]  # fmt: skip
        doc = {"v": 1, "gateway": gw, "seq": seq, "sent": int(time.time() * 1000), "consent": "c1",
               "purpose": "energy-research", "category": "energy", "items": items}  # fmt: skip
        out.append((agg_topic(gw, "energy"), orjson.dumps(doc)))
    return out


def client(client_id: str, **kw: Any) -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **kw
    )


def register_session(broker: Mosquitto, client_id: str, topic_filter: str) -> None:
    """Create a persistent session subscribed to ``topic_filter``, then leave (the broker queues for it)."""
    c = client(client_id)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe(topic_filter, options=SubscribeOptions(qos=1))
    assert done.wait(10), f"no SUBACK for {client_id}"
    c.disconnect()
    c.loop_stop()


def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]], publishers: int = 3) -> float:
    def worker(part: list[tuple[str, bytes]], idx: int) -> None:
        c = client(f"bench-pub-{idx}")
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect(broker.host, broker.port)
        c.loop_start()
        infos = []
        for topic, payload in part:
            info = c.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # e.g. MQTT_ERR_QUEUE_SIZE: never ignore (DESIGN.md)
                raise RuntimeError(f"publish rc={info.rc}")
            infos.append(info)
            if len(infos) >= 20_000:  # stay far below paho's 65,535 message ids in flight
                for i in infos:
                    i.wait_for_publish(60)
                infos.clear()
        for i in infos:
            i.wait_for_publish(60)
        c.disconnect()
        c.loop_stop()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(messages[i::publishers], i)) for i in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def count(influx: InfluxDB, db: str) -> int:
    return influx.count("power", db)


STEADY: dict[str, float] = {}


def wait_count(influx: InfluxDB, db: str, expected: int, t0: float, timeout: float) -> tuple[float, int]:
    """Seconds from t0 until ``expected`` points are counted (or timeout), and the last count.

    Also records in STEADY[db] the rate from the first poll that saw points to the end (start-up excluded).
    """
    deadline = time.perf_counter() + timeout
    n = 0
    first: tuple[float, int] | None = None
    while time.perf_counter() < deadline:
        n = count(influx, db)
        now = time.perf_counter()
        if n and first is None:
            first = (now, n)
        if n >= expected:
            if first is not None and now > first[0]:
                STEADY[db] = (n - first[1]) / (now - first[0])
            return now - t0, n
        time.sleep(0.1)
    return time.perf_counter() - t0, n


def post(conn: http.client.HTTPConnection, db: str, body: bytes) -> None:
    conn.request("POST", "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"}), body=body)
    resp = conn.getresponse()
    text = resp.read()
    if resp.status != 204:
        raise RuntimeError(f"write failed: {resp.status} {text[:200]!r}")


def phase_bulk(influx: InfluxDB, messages: list[tuple[str, bytes]]) -> float:
    """(a) one writer POSTing pre-built lines (what InfluxDB can take at best)."""
    influx.create_database("bulk")
    lines = []
    for _topic, payload in messages:
        doc = orjson.loads(payload)
        for it in doc["items"]:
            lines.append(
                f"power,category=energy,device={it['device']},gateway={doc['gateway']},purpose={doc['purpose']},"
                f"subject={it['subject']} count={it['count']}i,window_s={it['window_s']}i,mean={it['mean']},"
                f"min={it['min']},max={it['max']},last={it['last']} {it['start']}"
            )
    bodies = ["\n".join(lines[i : i + BATCH]).encode() for i in range(0, len(lines), BATCH)]
    conn = http.client.HTTPConnection(influx.host, influx.port, timeout=60)
    t0 = time.perf_counter()
    for body in bodies:
        post(conn, "bulk", body)
    elapsed = time.perf_counter() - t0
    conn.close()
    assert count(influx, "bulk") == len(lines)
    return len(lines) / elapsed


def phase_naive(broker: Mosquitto, influx: InfluxDB, expected: int, timeout: float) -> tuple[float, int]:
    """(b) the naive loop: parse, format and POST inside the callback, auto-ack."""
    influx.create_database("naive")
    conn = http.client.HTTPConnection(influx.host, influx.port, timeout=60)
    buf: list[str] = []
    state = {"n": 0}
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        for it in doc["items"]:
            buf.append(
                f"{it['metric']},category={doc['category']},device={it['device']},gateway={doc['gateway']},"
                f"purpose={doc['purpose']},subject={it['subject']} count={it['count']}i,"
                f"window_s={it['window_s']}i,mean={it['mean']},min={it['min']},max={it['max']},"
                f"last={it['last']} {it['start']}"
            )
        state["n"] += len(doc["items"])
        if len(buf) >= BATCH or state["n"] >= expected:
            post(conn, "naive", "\n".join(buf).encode())
            buf.clear()
        if state["n"] >= expected:
            done.set()

    c = client("bench-naive")
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    t0 = time.perf_counter()
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    done.wait(timeout)
    elapsed, n = wait_count(influx, "naive", expected, t0, 30)
    c.disconnect()
    c.loop_stop()
    conn.close()
    return elapsed, n


def spawn_ingester(broker: Mosquitto, influx: InfluxDB, db: str, client_id: str, group: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "cloud_ingest", "run",
        "--broker-host", broker.host, "--broker-port", str(broker.port),
        "--influx-url", influx.url, "--influx-db", db, "--client-id", client_id, "--group", group,
        "--stats-interval", "3600",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)


def stop_ingester(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    lines = [ln for ln in out.decode().splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        log(f"ingester exited {proc.returncode}: {err.decode()[-2000:]}")
        return {}
    final: dict[str, Any] = json.loads(lines[-1])
    return final


def phase_kyojo(
    broker: Mosquitto, influx: InfluxDB, db: str, ids: list[str], group: str, expected: int, timeout: float
) -> tuple[float, int, list[dict[str, Any]]]:
    influx.create_database(db)
    t0 = time.perf_counter()
    procs = [spawn_ingester(broker, influx, db, cid, group) for cid in ids]
    elapsed, n = wait_count(influx, db, expected, t0, timeout)
    finals = [stop_ingester(p) for p in procs]
    return elapsed, n, finals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=30_000, help="messages of 10 items (default 30,000)")
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run (2,000 messages)")
    args = ap.parse_args()
    n_msgs = 2_000 if args.quick else args.messages
    n_msgs -= n_msgs % (BATCH // ITEMS)  # the naive loop flushes only full batches (and at the very end)
    expected = n_msgs * ITEMS
    timeout = 60 + expected / 5_000

    with tempfile.TemporaryDirectory(prefix="kyojo-bench-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto", persistence=False)
        influx = InfluxDB(Path(tmp) / "influx")
        broker.start()
        influx.start()
        try:
            log(f"{n_msgs} messages x {ITEMS} items = {expected} points per phase")
            messages = make_messages(n_msgs)
            bulk = phase_bulk(influx, messages)
            log(f"(a) bulk /write: {bulk:,.0f} points/s")

            data = "kyojo/v1/+/agg/+"
            register_session(broker, "bench-naive", data)
            register_session(broker, "bench-kyojo-1", f"$share/one/{data}")
            register_session(broker, "bench-kyojo-2a", f"$share/two/{data}")
            register_session(broker, "bench-kyojo-2b", f"$share/two/{data}")
            pub = client("bench-consents")
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            for g in range(GATEWAYS):
                gw = f"gw-{g:03d}"
                rec = ConsentRecord(gateway=gw, id="c1", subject=f"hh-{gw}", purpose="energy-research",
                                    categories=["energy"], status=ConsentStatus.ACTIVE,  # type: ignore[list-item]
                                    given_at=datetime.now(UTC))  # fmt: skip
                pub.publish(consent_topic(gw, "c1"), rec.model_dump_json(), qos=1, retain=True).wait_for_publish(10)
            pub.disconnect()
            pub.loop_stop()
            secs = publish_all(broker, messages)
            log(f"pre-filled {n_msgs} messages into 4 sessions in {secs:.1f}s ({n_msgs / secs:,.0f} msg/s)")

            t_naive, n_naive = phase_naive(broker, influx, expected, timeout)
            naive = n_naive / t_naive
            log(f"(b) naive: {naive:,.0f} points/s ({n_naive}/{expected} in {t_naive:.1f}s)")

            t_one, n_one, f_one = phase_kyojo(broker, influx, "kyojo1", ["bench-kyojo-1"], "one", expected, timeout)
            one = n_one / t_one
            log(f"(c) kyojo x1: {one:,.0f} points/s ({n_one}/{expected} in {t_one:.1f}s) final={f_one}")

            t_two, n_two, f_two = phase_kyojo(
                broker, influx, "kyojo2", ["bench-kyojo-2a", "bench-kyojo-2b"], "two", expected, timeout
            )
            two = n_two / t_two
            split = [f.get("received", 0) for f in f_two]
            log(f"(d) kyojo x2: {two:,.0f} points/s ({n_two}/{expected} in {t_two:.1f}s) split={split}")
            lost = (expected - n_one) + (expected - n_two)
            dropped = broker.dropped_messages()
        finally:
            broker.stop()
            influx.stop()

    result = {
        "messages": n_msgs,
        "points_per_phase": expected,
        "bulk_write_points_per_s": round(bulk),
        "naive_points_per_s": round(naive),
        "naive_lost": expected - n_naive,
        "ingester_points_per_s": round(one),
        "two_ingesters_points_per_s": round(two),
        "two_ingesters_split": split,
        "naive_steady_points_per_s": round(STEADY.get("naive", 0)),
        "ingester_steady_points_per_s": round(STEADY.get("kyojo1", 0)),
        "two_ingesters_steady_points_per_s": round(STEADY.get("kyojo2", 0)),
        "ingester_vs_bulk": round(one / bulk, 3),
        "ingester_steady_vs_bulk": round(STEADY.get("kyojo1", 0) / bulk, 3),
        "ingester_vs_naive": round(one / naive, 3) if naive else None,
        "two_vs_one": round(two / one, 3) if one else None,
        "lost": lost,
        "broker_drop_episodes": dropped,
        "fast_path": sum(f.get("fast_path", 0) for f in f_one),
        "ingester_rejected": f_one[0].get("rejected") if f_one else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Benchmark (not a test): cloud ingestion rates, all measured in the same run on the same machine.

It starts its own Mosquitto and InfluxDB 1.x, pre-fills the broker with gateway messages of 10 aggregate items
each (the shape of a window flush), then measures, each phase into its own database:

(a) ``bulk``  InfluxDB's own bulk /write rate from one writer (pre-built lines, 5,000 points per POST);
(b) ``naive`` paho -> json.loads -> f-string line protocol -> POST 5,000-point batches inside on_message;
(c) ``kyojo`` one ``python -m cloud_ingest run`` process (default MQTT client: lean);
(c') ``paho`` the same with ``--mqtt-client paho`` (the fallback), unless ``--no-paho``;
(d) ``two``   two kyojo processes on one shared subscription.

Pre-fill: every consumer's client id first registers a persistent session (clean_start=False, session expiry)
subscribed to its filter and disconnects; then N messages are published once (QoS 1, a few publisher
connections), so the broker queues them for every session at once.

How each phase is timed (the same rules for every consumer phase):

- Progress comes from the consumer itself, never from polling InfluxDB: a ``SELECT count()`` over a few
  hundred thousand points costs InfluxDB ~0.1 s of CPU, and polling it 10x/s during a phase stole most of a
  core from the system under test on a 2-core machine. The naive loop records each POST that got its 204; an
  ingester process prints its ``written`` counter (points InfluxDB answered 204 for) every 0.05 s.
- ``*_points_per_s`` (the headline figures) are steady-state rates: points between the first report at or
  past 10 % of the phase's points and the first at or past 90 %, over the time between them. Start-up
  (process spawn, imports, connecting, the first batch) and the final drain are excluded alike for every
  consumer, and a pipelined consumer has its buffers full at both ends of the window, so buffering does not
  inflate the figure. ``*_wall_points_per_s`` include everything from spawn/connect to completion.
- After each phase ONE exact count query gives what InfluxDB holds: ``lost`` = expected - counted, summed
  over the MQTT phases (idempotent points: a redelivery cannot count twice).
- CPU seconds of influxd, mosquitto and the consumer are read from /proc for each phase, so the ratio can be
  explained: ``*_cpu_us_per_point``. The naive loop runs inside this process (its CPU is this process's).

The last line printed is one JSON object with the figures.

    .venv/bin/python bench/ingest.py [--messages N] [--quick] [--no-paho]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
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

from kyojo.contract.wire import ConsentRecord, ConsentStatus, agg_topic, consent_topic  # noqa: E402
from provisioning.local import InfluxDB, Mosquitto  # noqa: E402

ITEMS = 10
GATEWAYS = 20
T0 = 1_700_000_000_000
BATCH = 5000
ERRLOG = Path(tempfile.gettempdir()) / f"kyojo-bench-ingest-{os.getpid()}.stderr"


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
               "purpose": "community-energy", "category": "energy", "items": items}  # fmt: skip
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
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # e.g. MQTT_ERR_QUEUE_SIZE: never ignore (docs/ARCHITECTURE.md)
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


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process (all its threads) from /proc; 0.0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Progress:
    """(time, points written so far) reports of one phase; see the module docstring for the rates."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.t0 = time.perf_counter()
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def report(self, written: int) -> None:
        with self._lock:
            self.samples.append((time.perf_counter(), written))
        if written >= self.expected:
            self.done.set()

    def rates(self) -> dict[str, float]:
        """wall: all points over spawn -> completion; steady: 10 % -> 90 % of the points (module docstring)."""
        with self._lock:
            samples = list(self.samples)
        last = samples[-1] if samples else (self.t0, 0)
        end = next(((t, n) for t, n in samples if n >= self.expected), last)
        lo = next(((t, n) for t, n in samples if n >= 0.1 * self.expected), end)
        hi = next(((t, n) for t, n in samples if n >= 0.9 * self.expected), end)
        wall = end[1] / (end[0] - self.t0) if end[0] > self.t0 else 0.0
        steady = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else 0.0
        return {
            "wall": wall,
            "steady": steady,
            "seconds": end[0] - self.t0,
            "steady_seconds": hi[0] - lo[0],
            "reports": len(samples),
        }


def post(conn: http.client.HTTPConnection, db: str, body: bytes) -> None:
    conn.request("POST", "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"}), body=body)
    resp = conn.getresponse()
    text = resp.read()
    if resp.status != 204:
        raise RuntimeError(f"write failed: {resp.status} {text[:200]!r}")


def phase_bulk(influx: InfluxDB, messages: list[tuple[str, bytes]]) -> dict[str, float]:
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
    c0 = cpu_seconds(influx.pid)
    t0 = time.perf_counter()
    for body in bodies:
        post(conn, "bulk", body)
    elapsed = time.perf_counter() - t0
    influx_cpu = cpu_seconds(influx.pid) - c0
    conn.close()
    assert count(influx, "bulk") == len(lines)
    return {"rate": len(lines) / elapsed, "influx_cpu": influx_cpu, "seconds": elapsed}


class Cpu:
    """CPU seconds of the services (and optionally this process) over one phase."""

    def __init__(self, broker: Mosquitto, influx: InfluxDB, with_self: bool = False) -> None:
        self.broker, self.influx, self.with_self = broker, influx, with_self
        self.b0, self.i0 = cpu_seconds(broker.pid), cpu_seconds(influx.pid)
        self.s0 = self_cpu()

    def stop(self) -> dict[str, float]:
        out = {
            "broker_cpu": cpu_seconds(self.broker.pid) - self.b0,
            "influx_cpu": cpu_seconds(self.influx.pid) - self.i0,
        }
        if self.with_self:
            out["consumer_cpu"] = self_cpu() - self.s0
        return out


def phase_naive(broker: Mosquitto, influx: InfluxDB, expected: int, timeout: float) -> dict[str, Any]:
    """(b) the naive loop: parse, format and POST inside the callback, auto-ack."""
    influx.create_database("naive")
    conn = http.client.HTTPConnection(influx.host, influx.port, timeout=60)
    buf: list[str] = []
    state = {"n": 0}
    progress = Progress(expected)

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
            progress.report(state["n"])

    c = client("bench-naive")
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    cpu = Cpu(broker, influx, with_self=True)
    progress.t0 = time.perf_counter()
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    progress.done.wait(timeout)
    used = cpu.stop()
    c.disconnect()
    c.loop_stop()
    conn.close()
    return {**progress.rates(), **used, "counted": count(influx, "naive")}


def spawn_ingester(
    broker: Mosquitto, influx: InfluxDB, db: str, client_id: str, group: str, *extra: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "cloud_ingest", "run",
        "--broker-host", broker.host, "--broker-port", str(broker.port),
        "--influx-url", influx.url, "--influx-db", db, "--client-id", client_id, "--group", group,
        "--stats-interval", "0.05", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # stderr to a file, not a pipe: nobody reads it while the phase runs
    with ERRLOG.open("ab") as errors:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=ROOT)


def phase_kyojo(
    broker: Mosquitto,
    influx: InfluxDB,
    db: str,
    ids: list[str],
    group: str,
    expected: int,
    timeout: float,
    *extra: str,
) -> dict[str, Any]:
    """(c)/(d) ingester processes; progress from their ``written`` stats lines."""
    influx.create_database(db)
    progress = Progress(expected)
    written = [0] * len(ids)
    finals: list[dict[str, Any]] = [{} for _ in ids]
    lock = threading.Lock()

    def reader(k: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            st = json.loads(raw)
            if st.get("final"):
                finals[k] = st
            with lock:
                written[k] = st.get("written", 0)
                total = sum(written)
            progress.report(total)

    cpu = Cpu(broker, influx)
    progress.t0 = time.perf_counter()
    procs = [spawn_ingester(broker, influx, db, cid, group, *extra) for cid in ids]
    readers = [threading.Thread(target=reader, args=(k, p), daemon=True) for k, p in enumerate(procs)]
    for t in readers:
        t.start()
    progress.done.wait(timeout)
    used = cpu.stop()
    used["consumer_cpu"] = sum(cpu_seconds(p.pid) for p in procs)
    for p in procs:
        p.terminate()
    for k, p in enumerate(procs):
        p.wait(30)
        readers[k].join(5)  # the reader owns stdout and sees the final stats line
        if p.returncode != 0:
            log(f"ingester exited {p.returncode}: {ERRLOG.read_text(errors='replace')[-2000:]}")
    return {**progress.rates(), **used, "counted": count(influx, db), "finals": finals}


def us_per_point(cpu: float, points: int) -> float:
    return round(cpu / points * 1e6, 2) if points else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=60_000, help="messages of 10 items (default 60,000)")
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run (3,000 messages)")
    ap.add_argument("--no-paho", action="store_true", help="skip the phase with --mqtt-client paho")
    args = ap.parse_args()
    n_msgs = 3_000 if args.quick else args.messages
    n_msgs -= n_msgs % (BATCH // ITEMS)  # the naive loop flushes only full batches (and at the very end)
    expected = n_msgs * ITEMS
    timeout = 60 + expected / 5_000
    load = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="kyojo-bench-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto", persistence=False)
        influx = InfluxDB(Path(tmp) / "influx")
        broker.start()
        influx.start()
        try:
            log(f"{n_msgs} messages x {ITEMS} items = {expected} points per phase; load average {load}")
            messages = make_messages(n_msgs)
            bulk = phase_bulk(influx, messages)
            log(f"(a) bulk /write: {bulk['rate']:,.0f} points/s, influxd {bulk['influx_cpu']:.2f} CPU s")

            data = "kyojo/v1/+/agg/+"
            sessions = [("bench-naive", data), ("bench-kyojo-1", f"$share/one/{data}")]
            sessions += [("bench-kyojo-2a", f"$share/two/{data}"), ("bench-kyojo-2b", f"$share/two/{data}")]
            if not args.no_paho:
                sessions.append(("bench-kyojo-paho", f"$share/paho/{data}"))
            for cid, filt in sessions:
                register_session(broker, cid, filt)
            pub = client("bench-consents")
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            for g in range(GATEWAYS):
                gw = f"gw-{g:03d}"
                rec = ConsentRecord(
                    gateway=gw,
                    id="c1",
                    subject=f"hh-{gw}",
                    purpose="community-energy",
                    categories=["energy"],
                    status=ConsentStatus.ACTIVE,  # type: ignore[list-item]
                    given_at=datetime(2023, 1, 1, tzinfo=UTC),
                )  # fmt: skip  (before T0)
                pub.publish(consent_topic(gw, "c1"), rec.model_dump_json(), qos=1, retain=True).wait_for_publish(10)
            pub.disconnect()
            pub.loop_stop()
            secs = publish_all(broker, messages)
            log(f"pre-filled {n_msgs} messages into {len(sessions)} sessions in {secs:.1f}s")

            naive = phase_naive(broker, influx, expected, timeout)
            log(f"(b) naive: {naive['steady']:,.0f} points/s steady, {naive['wall']:,.0f} wall; {naive}")
            one = phase_kyojo(broker, influx, "kyojo1", ["bench-kyojo-1"], "one", expected, timeout)
            log(f"(c) kyojo x1: {one['steady']:,.0f} points/s steady, {one['wall']:,.0f} wall; {one}")
            paho: dict[str, Any] | None = None
            if not args.no_paho:
                paho = phase_kyojo(
                    broker, influx, "kyojop", ["bench-kyojo-paho"], "paho", expected, timeout, "--mqtt-client", "paho"
                )
                log(f"(c') kyojo x1 paho: {paho['steady']:,.0f} points/s steady, {paho['wall']:,.0f} wall")
            two = phase_kyojo(broker, influx, "kyojo2", ["bench-kyojo-2a", "bench-kyojo-2b"], "two", expected, timeout)
            split = [f.get("received", 0) for f in two["finals"]]
            log(f"(d) kyojo x2: {two['steady']:,.0f} points/s steady, {two['wall']:,.0f} wall; split={split}")
            phases = [naive, one, two] + ([paho] if paho else [])
            lost = sum(expected - p["counted"] for p in phases)
            dropped = broker.dropped_messages()
        finally:
            broker.stop()
            influx.stop()
            ERRLOG.unlink(missing_ok=True)

    b, o = bulk["rate"], one["steady"]
    result: dict[str, Any] = {
        "messages": n_msgs,
        "points_per_phase": expected,
        "load_avg_at_start": [round(x, 2) for x in load],
        "bulk_write_points_per_s": round(b),
        "naive_points_per_s": round(naive["steady"]),
        "ingester_points_per_s": round(o),
        "two_ingesters_points_per_s": round(two["steady"]),
        "ingester_paho_points_per_s": round(paho["steady"]) if paho else None,
        "naive_wall_points_per_s": round(naive["wall"]),
        "ingester_wall_points_per_s": round(one["wall"]),
        "two_ingesters_wall_points_per_s": round(two["wall"]),
        "ingester_vs_bulk": round(o / b, 3),
        "ingester_wall_vs_bulk": round(one["wall"] / b, 3),
        "ingester_vs_naive": round(o / naive["steady"], 3) if naive["steady"] else None,
        "two_vs_one": round(two["steady"] / o, 3) if o else None,
        "two_ingesters_split": split,
        "lost": lost,
        "lost_by_phase": {
            "naive": expected - naive["counted"],
            "ingester": expected - one["counted"],
            "two": expected - two["counted"],
            **({"paho": expected - paho["counted"]} if paho else {}),
        },
        "broker_drop_episodes": dropped,
        "cpu_us_per_point": {
            "influxd_bulk": us_per_point(bulk["influx_cpu"], expected),
            **{
                name: {
                    "consumer": us_per_point(p["consumer_cpu"], expected),
                    "influxd": us_per_point(p["influx_cpu"], expected),
                    "mosquitto": us_per_point(p["broker_cpu"], expected),
                }
                for name, p in (("naive", naive), ("ingester", one), ("two", two), ("paho", paho))
                if p is not None
            },
        },
        "fast_path": sum(f.get("fast_path", 0) for f in one["finals"]),
        "ingester_rejected": one["finals"][0].get("rejected") if one["finals"] else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

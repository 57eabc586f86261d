"""Benchmark (not a test): a city's gateways against ONE Mosquitto, two ingesters and one InfluxDB.

Everything is real and configured the production way:

- a test CA (:mod:`provisioning.pki`) issues one certificate per gateway (``gw-00000`` ...), one per ingester
  data and consent connection;
- Mosquitto serves the ``kyojo.conf`` and ``dynamic-security.json`` that ``kyojo provision broker-config``
  renders (:func:`provisioning.broker.render_mosquitto_conf`, one dynsec role per gateway), mTLS only,
  persistence on (a restart must keep the ingesters' shared-subscription sessions and their queues);
- two (``--ingesters``) ``cloud_ingest`` ingesters in the secret ``$share`` group, each its own process;
- InfluxDB 1.x through the ingester's v1 writer.

The gateways are a lean simulator: asyncio, one real TLS connection per gateway with its own certificate,
MQTT v5 framed by the sans-IO codec of :mod:`cloud_ingest.mqtt5` (plus a PUBLISH encoder here), spread over
``--workers`` processes. Each gateway behaves like the agent's publisher on the wire: persistent session
(clean_start=False, 7 days), QoS 1, an outbox that forgets a message only on its PUBACK and resends the rest
(DUP) after a reconnect, reconnects with the agent's backoff (:class:`kyojo.runtime.backoff.Backoff`, full
jitter, 0.5 s .. 30 s unless ``--reconnect-min/--reconnect-max``). It publishes its two retained consent
records, then every ``--period`` seconds (60: a minute window; the first one at a random phase, as gateways
boot at random times) one energy batch (10 plugs + the meter's power and energy = 12 points) and one health
batch (3 points), an event batch now and then (``--event-rate``), and, with ``--acl-probes``, a batch for
ANOTHER gateway's topic, which the broker must refuse (PUBACK 0x87; counted, never written).

Figures (the last stdout line is one JSON object; a table goes to stderr; progress lines on stderr):

- ``connect``: time for all N to connect (TLS handshake + CONNACK, staggered at ``--connect-rate`` per second),
  broker CPU meanwhile.
- ``steady``: broker RSS and CPU (% of one core, from /proc), end-to-end lag p50/p99/max from window close (the
  moment the gateway queues the batch) to the 2xx of the InfluxDB write that holds its points (measured inside
  the ingester processes, from each written line's timestamp), ingest CPU per point (both ingester processes'
  CPU over the points they wrote; the lag bookkeeping's own CPU is measured and subtracted).
- ``storm`` (``--storm``): the broker is restarted (SIGTERM, which saves its persistence file, then start, as
  ``systemctl restart`` does) with every gateway connected and publishing; time until every gateway is back,
  peak broker CPU (0.5 s samples), lag of the windows that closed around it.
- ``loss``: every point a gateway got a PUBACK for must be in InfluxDB exactly once: counted per household tag
  after the drain (``lost`` and ``duplicates`` must be 0; a redelivery overwrites, so ``rewrites`` may not be 0).
  ``puback_0x10_no_subscribers`` counts batches the broker accepted and delivered to nobody: Mosquitto 2.0.11 does
  not restore ``$share`` subscriptions from its persistence file, so right after a restart, until the ingesters
  have subscribed again, that is what a gateway hears. The agent treats 0x10 as delivered (they are then lost);
  ``--retry-no-subscribers`` makes the simulated gateways keep such a batch and send it again after a backoff,
  the behaviour docs/OPERATIONS.md recommends.

Simulator limits, not the broker's: one Python process does the client side of every handshake of its slice, so
``--handshake-concurrency`` (32) bounds the handshakes in flight per process (thousands at once in one asyncio
loop all crawl and time out together), and ``--workers`` (default one per 5,000 gateways) spreads them.
InfluxDB runs with ``max-values-per-tag`` 1,000,000 (``--influx-max-values-per-tag``): its default, 100,000,
stops ingestion at ~9,100 gateways (the ``device`` tag of ``power``; docs/SCALING.md).

    .venv/bin/python bench/city.py --gateways 1000 [--minutes 3] [--storm] [--retry-no-subscribers] [--json out.json]

Run it on an otherwise idle machine if you can; it prints the load average at start next to the figures.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import re
import resource
import secrets
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from cloud_ingest.mqtt5 import (  # noqa: E402
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    Connack,
    Disconnect,
    MQTTProtocolError,
    Parser,
    Puback,
    encode_connect,
    encode_varint,
)
from kyojo.contract.wire import ConsentRecord, ConsentStatus, agg_topic, consent_topic, event_topic  # noqa: E402
from kyojo.runtime.backoff import Backoff, jittered  # noqa: E402

HOST = "127.0.0.1"
WINDOW_MS = 60_000
AGG_MEASUREMENTS = ("power", "energy", "heart_rate", "spo2", "body_temperature")
ENERGY, HEALTH = "community-energy", "preventive-care"
#: the timestamp at the end of a line of line protocol (milliseconds)
_TS = re.compile(rb" (\d{13})$", re.MULTILINE)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def gw_name(i: int) -> str:
    return f"gw-{i:05d}"


# ==============================================================================================================
# Identities: a real CA, certificates issued by its own code path
# ==============================================================================================================


def make_identities(base: Path, n: int, ingesters: int) -> dict[str, Any]:
    """CA, broker server pair, ingest identities (enrolled the installer's way) and N gateway certificates.

    Gateways are issued through the CA's own ``_issue`` (same profile as ``kyojo provision sign``) with the
    index kept in memory and saved once: the CLI path rewrites ``index.json`` per certificate, which is O(N^2)
    for 10,000 gateways and not what is measured here.
    """
    from provisioning import broker as brokerlib
    from provisioning import pki

    ca = pki.init_ca(base / "ca")
    group = brokerlib.load_share_group(ca.ca_dir, create=True)
    ca.issue_server("broker", base / "server", ips=[HOST], dns=["localhost"])
    tls: dict[str, str] = {}
    names = [f"ingest-{k + 1}" for k in range(ingesters)]
    for name in [*names, *(f"{x}-consents" for x in names)]:
        code = ca.enroll(name, pki.Role.INGEST)
        csr = pki.create_request(base / "ids" / name, name, code, pki.Role.INGEST)
        pem = ca.sign_csr(csr.read_bytes(), expected_id=name)
        tls[name] = str(pki.install_certificate(base / "ids" / name, pem, ca.cert_path.read_bytes()).parent)
    records = ca.records()
    ca.records = lambda: records  # type: ignore[method-assign]  # _issue appends to this list
    ca._save = lambda _r: None  # type: ignore[method-assign]
    gw_dir = base / "gw"
    gw_dir.mkdir()
    now = dt.datetime.now(dt.UTC)
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca._issue(gw_name(i), pki.Role.GATEWAY, key.public_key(), now)
        (gw_dir / f"{gw_name(i)}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (gw_dir / f"{gw_name(i)}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    del ca.records, ca._save
    pki.CertificateAuthority._save(ca, records)
    return {"ca": ca, "group": group, "ingest_tls": tls, "ingesters": names}


# ==============================================================================================================
# The broker, rendered as `kyojo provision broker-config` renders it
# ==============================================================================================================


def start_broker(base: Path, ids: dict[str, Any], args: argparse.Namespace) -> Any:
    from provisioning import broker as brokerlib
    from provisioning import pki
    from provisioning.local import CustomMosquitto, free_port

    ca = ids["ca"]
    workdir = base / "mosquitto"
    settings = brokerlib.BrokerSettings(
        cafile=ca.cert_path,
        certfile=base / "server" / "broker.crt",
        keyfile=base / "server" / "broker.key",
        crlfile=ca.crl_path,
        dynsec_file=workdir / "dynamic-security.json",
        port=free_port(),
        bind=HOST,
    )
    identities = brokerlib.ca_identities(ca)
    state = brokerlib.desired_state(identities, ids["group"])
    files = brokerlib.broker_files(settings, state, ca_cert=ca.cert_path.read_bytes(), crl=ca.crl_path.read_bytes())
    wanted = {"kyojo.conf", settings.dynsec_file.name}
    brokerlib.write_broker_files(workdir, [f for f in files if f.name in wanted], owner=None)
    conf = (workdir / "kyojo.conf").read_text()
    assert len(identities[pki.Role.GATEWAY]) == args.gateways

    class BenchBroker(CustomMosquitto):
        """The rendered config decides persistence timing: drop the harness's ``autosave_interval 1``."""

        def render_config(self) -> str:
            text = super().render_config()
            if "autosave_interval" in conf:
                text = text.replace("autosave_interval 1\n", "")
            # connection/subscribe lines for 10,000 clients are noise here; errors and warnings stay
            return text.replace("log_type information\n", "").replace("log_type subscribe\n", "")

    broker = BenchBroker(workdir, settings.port, conf, persistence=True)
    t0 = time.perf_counter()
    broker.start(timeout=120)
    return broker, time.perf_counter() - t0, conf


# ==============================================================================================================
# /proc sampling
# ==============================================================================================================

_CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK


def proc_rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Every 0.5 s: (time, broker CPU s, broker RSS MiB) plus the CPU of the other processes."""

    def __init__(self, pids: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.pids = pids  # name -> callable returning the current pid(s)
        self.samples: list[tuple[float, dict[str, float], float]] = []
        self.broker_cpu_base = 0.0  # CPU of broker processes that have exited (restart)
        self._stop_evt = threading.Event()

    def cpu_now(self) -> dict[str, float]:
        return {name: sum(proc_cpu(p) for p in get()) for name, get in self.pids.items()}

    def run(self) -> None:
        while not self._stop_evt.wait(0.5):
            cpu = self.cpu_now()
            cpu["broker"] += self.broker_cpu_base
            rss = sum(proc_rss_mib(p) for p in self.pids["broker"]())
            self.samples.append((time.time(), cpu, rss))

    def stop(self) -> None:
        self._stop_evt.set()

    def window(self, t0: float, t1: float) -> list[tuple[float, dict[str, float], float]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]


def cpu_between(sampler: Sampler, name: str, t0: float, t1: float) -> tuple[float, float]:
    """(CPU seconds of ``name`` between t0 and t1, mean % of one core)."""
    w = sampler.window(t0, t1)
    if len(w) < 2:
        return 0.0, 0.0
    used = w[-1][1][name] - w[0][1][name]
    return used, 100.0 * used / (w[-1][0] - w[0][0])


def peak_cpu(sampler: Sampler, name: str, t0: float, t1: float) -> float:
    w = sampler.window(t0, t1)
    peaks = [100.0 * (b[1][name] - a[1][name]) / (b[0] - a[0]) for a, b in itertools.pairwise(w) if b[0] > a[0]]
    return max(peaks, default=0.0)


# ==============================================================================================================
# Ingester processes (this file, --_ingest): the real Ingester, its writer wrapped to time each write
# ==============================================================================================================


class LagWriter:
    """The ingester's own writer; after each 2xx, every line's timestamp (window start) -> lag to now."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closes = array.array("q")  # window close (ms)
        self.lags = array.array("i")  # ms from window close to the 2xx
        self.own_cpu = 0.0

    def write(self, body: bytes) -> None:
        self.inner.write(body)
        now = time.time() * 1000.0
        c0 = time.thread_time()
        for m in _TS.finditer(body):
            close = int(m.group(1)) + WINDOW_MS
            self.closes.append(close)
            self.lags.append(int(now - close))
        self.own_cpu += time.thread_time() - c0

    def close(self) -> None:
        self.inner.close()


def ingest_main(spec: dict[str, Any]) -> None:
    import logging

    from cloud_ingest.config import IngestSettings
    from cloud_ingest.ingester import Ingester, make_writer

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = IngestSettings(**spec["settings"])
    writer = LagWriter(make_writer(settings))
    ing = Ingester(settings, writer=writer)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ing.start(timeout=120)

    def emit(**extra: Any) -> None:
        st = ing.stats()
        st["lag_cpu_s"] = round(writer.own_cpu, 3)
        print(json.dumps({"ts": time.time(), **st, **extra}, default=str), flush=True)

    emit(event="started")
    while not stop.wait(0.5):
        emit()
    ing.stop()
    out = Path(spec["lag_file"])
    with out.open("wb") as f:
        f.write(struct.pack("<q", len(writer.lags)))
        writer.closes.tofile(f)
        writer.lags.tofile(f)
    emit(final=True)


def read_lags(path: Path) -> tuple[array.array[int], array.array[int]]:
    closes, lags = array.array("q"), array.array("i")
    with path.open("rb") as f:
        (n,) = struct.unpack("<q", f.read(8))
        closes.fromfile(f, n)
        lags.fromfile(f, n)
    return closes, lags


class IngestProc:
    def __init__(self, name: str, spec: dict[str, Any], errlog: Path) -> None:
        self.name = name
        self.spec = spec
        self.last: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        self.started = threading.Event()
        with errlog.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--_ingest", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
            )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            st = json.loads(raw)
            self.last = st
            if st.get("event") == "started":
                self.started.set()
            if st.get("final"):
                self.final = st

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.thread.join(10)


# ==============================================================================================================
# Gateway simulator processes (this file, --_sim)
# ==============================================================================================================


def encode_publish(topic: str, payload: bytes, packet_id: int, *, retain: bool = False, dup: bool = False) -> bytes:
    """PUBLISH QoS 1 (MQTT v5 §3.3), no properties."""
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + struct.pack(">HB", packet_id, 0) + payload
    first = 0x32 | (0x01 if retain else 0) | (0x08 if dup else 0)
    return bytes((first,)) + encode_varint(len(body)) + body


@dataclass
class Out:
    """One unacknowledged message of a gateway's outbox."""

    topic: str
    payload: bytes
    kind: str  # consent | agg | event | probe
    points: int
    retain: bool = False
    sent_once: bool = False
    tries: int = 0


@dataclass
class Gw:
    idx: int
    name: str
    ctx: ssl.SSLContext
    victim: str
    phase: float
    outbox: dict[int, Out] = field(default_factory=dict)
    next_pid: int = 1
    writer: asyncio.StreamWriter | None = None
    last_sent: float = 0.0
    seq: int = 0
    consents_sent: bool = False
    acked_points: int = 0
    acked_energy: int = 0
    acked_health: int = 0
    acked_events: int = 0
    connected_once: float = 0.0
    done: bool = False
    limbo: int = 0  # messages waiting to be sent again after a PUBACK 0x10


class Sim:
    """One worker process: a slice of the gateways on one asyncio loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.port = spec["port"]
        self.period = spec["period"]
        self.rng = random.Random(spec["seed"])
        self.stopping = False
        self.c: Counter[str] = Counter()
        self.connected = 0
        self.connect_times: list[float] = []
        base = Path(spec["base"])
        ca = str(base / "ca" / "ca.crt")
        self.gws: list[Gw] = []
        n = spec["n_total"]
        for i in range(spec["first"], spec["last"]):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(ca)
            ctx.load_cert_chain(str(base / "gw" / f"{gw_name(i)}.crt"), str(base / "gw" / f"{gw_name(i)}.key"))
            victim = gw_name((i + 1 + self.rng.randrange(max(1, n - 1))) % n) if n > 1 else gw_name(i)
            self.gws.append(Gw(i, gw_name(i), ctx, victim, self.rng.random() * self.period))
        self.rmin, self.rmax = spec["reconnect_min"], spec["reconnect_max"]

    # -- messages ----------------------------------------------------------------------------------------------
    def consent_records(self, gw: Gw) -> list[Out]:
        out = []
        for cid, subject, purpose, cat in (
            ("c-energy", f"hh-{gw.name}", ENERGY, "energy"),
            ("c-health", f"{gw.name}-p1", HEALTH, "health"),
        ):
            rec = ConsentRecord(
                gateway=gw.name,
                id=cid,
                subject=subject,
                purpose=purpose,
                categories=[cat],  # type: ignore[list-item]
                status=ConsentStatus.ACTIVE,
                given_at=dt.datetime(2023, 1, 1, tzinfo=dt.UTC),
            )
            out.append(Out(consent_topic(gw.name, cid), rec.model_dump_json().encode(), "consent", 0, retain=True))
        return out

    def flush(self, gw: Gw, now_ms: int) -> list[Out]:
        """One window's release: energy (12 points), health (3 points), sometimes an event, sometimes a probe."""
        start = now_ms - WINDOW_MS
        seq = gw.seq
        gw.seq += 1
        r = self.rng
        hh = f"hh-{gw.name}"
        g = gw.name
        energy_items: list[dict[str, Any]] = [
            {"metric": "power", "subject": hh, "device": f"{g}-plug-{k}", "start": start, "window_s": 60,
             "count": 60, "mean": round(r.uniform(0, 1500), 2), "min": 0.0, "max": 1800.0,
             "last": round(r.uniform(0, 1500), 2)}
            for k in range(10)
        ]  # fmt: skip
        energy_items.append(
            {"metric": "power", "subject": hh, "device": f"{gw.name}-meter", "start": start, "window_s": 60, "count": 6,
             "mean": 850.0, "min": 300.0, "max": 2500.0, "last": 900.0}
        )  # fmt: skip
        energy_items.append(
            {"metric": "energy", "subject": hh, "device": f"{g}-meter", "start": start, "window_s": 60, "count": 6,
             "last": 1_000_000.0 + seq * 15.0, "delta": 15.0}
        )  # fmt: skip
        health_items = [
            {"metric": m, "subject": f"{g}-p1", "device": f"{g}-{d}", "start": start, "window_s": 60, "count": 60,
             "mean": v, "min": v - 1, "max": v + 1, "last": v}
            for m, d, v in (("heart_rate", "p1-hr", 72.0), ("spo2", "p1-ox", 97.0), ("body_temperature", "p1-th", 36.5))
        ]  # fmt: skip
        sent = int(time.time() * 1000)

        def doc(purpose: str, cat: str, consent: str, items: list[dict[str, Any]], gateway: str = gw.name) -> bytes:
            return orjson.dumps({"v": 1, "gateway": gateway, "seq": seq, "sent": sent, "consent": consent,
                                 "purpose": purpose, "category": cat, "items": items})  # fmt: skip

        out = [
            Out(agg_topic(gw.name, "energy"), doc(ENERGY, "energy", "c-energy", energy_items), "agg", 12),
            Out(agg_topic(gw.name, "health"), doc(HEALTH, "health", "c-health", health_items), "agg", 3),
        ]
        if r.random() < self.spec["event_rate"]:
            ev = {"v": 1, "gateway": gw.name, "seq": seq, "sent": sent, "consent": "c-health", "purpose": HEALTH,
                  "category": "health",
                  "events": [{"id": f"ev-{seq}", "kind": "alert.blood_pressure", "subject": f"{g}-p1",
                              "device": f"{g}-p1-bp", "at": start, "severity": "warning",
                              "attrs": {"systolic": 162}}]}  # fmt: skip
            out.append(Out(event_topic(gw.name, "health"), orjson.dumps(ev), "event", 1))
        if r.random() < self.spec["acl_probe_rate"]:
            # another gateway's topic, a payload that names it: the broker must refuse (dynsec, PUBACK 0x87)
            out.append(
                Out(
                    agg_topic(gw.victim, "energy"),
                    doc(ENERGY, "energy", "c-energy", energy_items, gw.victim),
                    "probe",
                    0,
                )
            )
        return out

    def queue(self, gw: Gw, msgs: list[Out]) -> None:
        for m in msgs:
            while gw.next_pid in gw.outbox:
                gw.next_pid = gw.next_pid % 65535 + 1
            pid = gw.next_pid
            gw.next_pid = gw.next_pid % 65535 + 1
            gw.outbox[pid] = m
            self.c[f"queued_{m.kind}"] += 1
            if gw.writer is not None:
                self.send(gw, pid, m)

    def send(self, gw: Gw, pid: int, m: Out) -> None:
        assert gw.writer is not None
        gw.writer.write(encode_publish(m.topic, m.payload, pid, retain=m.retain, dup=m.sent_once))
        if m.sent_once:
            self.c["resent"] += 1
        m.sent_once = True
        gw.last_sent = time.monotonic()

    def on_puback(self, gw: Gw, ack: Puback) -> None:
        m = gw.outbox.pop(ack.packet_id, None)
        if m is None:
            self.c["stray_puback"] += 1
            return
        if m.kind == "probe":
            self.c["probe_refused" if ack.reason_code == 0x87 else "probe_ACCEPTED"] += 1
            return
        if ack.reason_code >= 0x80:
            self.c[f"refused_{m.kind}_0x{ack.reason_code:02x}"] += 1
            return
        if ack.reason_code == 0x10 and not m.retain:
            # "No matching subscribers": the broker accepted it and delivered it to nobody. Mosquitto 2.0.11 does
            # not restore $share subscriptions from its persistence file, so after a restart this is what a
            # gateway hears until the ingesters have subscribed again (bench docstring, docs/OPERATIONS.md).
            self.c[f"acked_no_subscribers_{m.kind}"] += 1
            if self.spec["retry_no_subscribers"]:  # keep it, send it again later as a new message
                m.sent_once = False
                m.tries += 1
                gw.limbo += 1
                self.c["requeued_no_subscribers"] += 1

                def again(gw: Gw = gw, m: Out = m) -> None:
                    gw.limbo -= 1
                    self.queue(gw, [m])

                asyncio.get_running_loop().call_later(jittered(m.tries - 1, 1.0, 30.0), again)
                return
        self.c[f"acked_{m.kind}"] += 1
        if m.kind == "agg":
            gw.acked_points += m.points
            if m.points == 12:
                gw.acked_energy += m.points
            else:
                gw.acked_health += m.points
        elif m.kind == "event":
            gw.acked_events += 1

    # -- connection ---------------------------------------------------------------------------------------------
    async def connection(self, gw: Gw, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        backoff = Backoff(self.rmin, self.rmax)
        packet = encode_connect(gw.name, keepalive=30, clean_start=False, session_expiry=7 * 86400,
                                receive_maximum=100)  # fmt: skip
        while True:
            t0 = time.monotonic()
            writer: asyncio.StreamWriter | None = None
            try:
                # One Python process stands in for thousands of gateways, each with its own CPU in real life: a few
                # handshakes at a time keep this loop responsive (thousands at once all crawl and time out together)
                async with self.handshakes:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(HOST, self.port, ssl=gw.ctx, server_hostname=HOST), 30
                    )
                    writer.write(packet)
                    parser = Parser()
                    connack: Connack | None = None
                    while connack is None:
                        data = await asyncio.wait_for(reader.read(65536), 30)
                        if not data:
                            raise ConnectionError("closed before CONNACK")
                        _msgs, ctls = parser.feed(data)
                        for ctl in ctls:
                            if isinstance(ctl, Connack):
                                connack = ctl
                if connack.reason_code >= 0x80:
                    raise ConnectionError(f"CONNACK 0x{connack.reason_code:02x}")
                backoff.reset()
                self.connect_times.append(time.monotonic() - t0)
                self.c["connects"] += 1
                if not gw.connected_once:
                    gw.connected_once = time.monotonic()
                    self.schedule.append(gw)
                gw.writer = writer
                self.connected += 1
                try:
                    for pid, m in list(gw.outbox.items()):  # the outbox after a reconnect: resend (DUP)
                        self.send(gw, pid, m)
                    if not gw.consents_sent:
                        gw.consents_sent = True
                        self.queue(gw, self.consent_records(gw))
                    while True:
                        if gw.done and not gw.outbox and not gw.limbo:
                            writer.write(DISCONNECT_PACKET)
                            await writer.drain()
                            return
                        data = await reader.read(65536)
                        if not data:
                            self.c["dropped_by_broker"] += 1
                            break
                        _msgs, ctls = parser.feed(data)
                        for ctl in ctls:
                            if isinstance(ctl, Puback):
                                self.on_puback(gw, ctl)
                            elif isinstance(ctl, Disconnect):
                                self.c[f"disconnect_0x{ctl.reason_code:02x}"] += 1
                finally:
                    gw.writer = None
                    self.connected -= 1
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError, MQTTProtocolError, EOFError) as err:
                self.c[f"connect_error_{type(err).__name__}"] += 1
            finally:
                if writer is not None:
                    writer.close()
            if gw.done and not gw.outbox and not gw.limbo:
                return
            await asyncio.sleep(backoff.next())

    async def scheduler(self) -> None:
        """Flushes each connected gateway every period at its own phase; pings idle connections."""
        next_at: dict[int, float] = {}
        while True:
            now = time.monotonic()
            for gw in self.schedule:
                if gw.idx not in next_at:
                    next_at[gw.idx] = gw.connected_once + gw.phase
            self.schedule.clear()
            now_ms = int(time.time() * 1000)
            for gw in self.gws:
                at = next_at.get(gw.idx)
                if at is None or gw.done:
                    continue
                if self.stopping:
                    gw.done = True
                    continue
                if now >= at:
                    next_at[gw.idx] = at + self.period
                    self.c["flushes"] += 1
                    self.queue(gw, self.flush(gw, now_ms))
                if gw.writer is not None and now - gw.last_sent > 20:
                    gw.writer.write(PINGREQ_PACKET)
                    gw.last_sent = now
            await asyncio.sleep(0.05)

    async def main(self) -> None:
        self.schedule: list[Gw] = []
        self.handshakes = asyncio.Semaphore(self.spec["handshake_concurrency"])
        loop = asyncio.get_running_loop()
        stop_evt = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), lambda: (sys.stdin.readline(), stop_evt.set()))
        rate = self.spec["connect_rate"]
        tasks = [
            asyncio.create_task(self.connection(gw, k / rate + self.spec["offset"] / rate))
            for k, gw in enumerate(self.gws)
        ]
        sched = asyncio.create_task(self.scheduler())

        async def report() -> None:
            while True:
                self.emit()
                await asyncio.sleep(0.5)

        rep = asyncio.create_task(report())
        await stop_evt.wait()
        self.stopping = True
        # each gateway stops flushing, waits for its outbox to empty, sends DISCONNECT
        for gw in self.gws:
            gw.done = True
        # readers blocked in read(): wake them by pinging (the PINGRESP returns to the loop)
        while any(gw.outbox or gw.limbo for gw in self.gws):
            for gw in self.gws:
                if gw.writer is not None:
                    gw.writer.write(PINGREQ_PACKET)
            await asyncio.sleep(1.0)
        for gw in self.gws:
            if gw.writer is not None:
                gw.writer.write(PINGREQ_PACKET)
        await asyncio.wait(tasks, timeout=30)
        sched.cancel()
        rep.cancel()
        self.emit(final=True)

    def emit(self, final: bool = False) -> None:
        doc: dict[str, Any] = {
            "connected": self.connected,
            "outbox": sum(len(g.outbox) for g in self.gws),
            "counters": dict(self.c),
            "cpu": proc_cpu(os.getpid()),
        }
        if final:
            doc["final"] = True
            doc["acked_by_gw"] = {g.name: [g.acked_energy, g.acked_health, g.acked_events] for g in self.gws}
            ct = sorted(self.connect_times)
            doc["connect_s"] = {
                "p50": ct[len(ct) // 2] if ct else 0.0,
                "p99": ct[int(len(ct) * 0.99)] if ct else 0.0,
                "max": ct[-1] if ct else 0.0,
            }
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()


def sim_main(spec: dict[str, Any]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(Sim(spec).main())


class SimProc:
    def __init__(self, spec: dict[str, Any], errlog: Path) -> None:
        self.last: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        with errlog.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--_sim", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
            )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            st = json.loads(raw)
            self.last = st
            if st.get("final"):
                self.final = st

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()


# ==============================================================================================================
# The run
# ==============================================================================================================


def pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, int(len(values) * q))])


def lag_summary(closes: array.array[int], lags: array.array[int], t0_ms: float, t1_ms: float) -> dict[str, Any]:
    sel = sorted(lag for c, lag in zip(closes, lags, strict=True) if t0_ms <= c <= t1_ms)
    return {
        "points": len(sel),
        "p50_ms": pct(sel, 0.5),
        "p99_ms": pct(sel, 0.99),
        "max_ms": float(sel[-1]) if sel else 0.0,
    }


def wait_until(pred: Any, timeout: float, what: str, every: float = 0.5, progress: Any = None) -> float:
    t0 = time.monotonic()
    last = 0.0
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        if progress is not None and time.monotonic() - last >= 5:
            progress()
            last = time.monotonic()
        time.sleep(every)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--ingesters", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="simulator processes (default: 1 per 5,000 gateways)")
    ap.add_argument("--period", type=float, default=60.0, help="seconds between a gateway's flushes (the window)")
    ap.add_argument("--minutes", type=float, default=3.0, help="steady phase, in periods after all connected")
    ap.add_argument("--connect-rate", type=float, default=400.0, help="first connects per second (staggered)")
    ap.add_argument("--event-rate", type=float, default=0.05, help="probability of an event batch per flush")
    ap.add_argument("--acl-probes", type=float, default=0.01, help="probability of a foreign-topic publish per flush")
    ap.add_argument("--storm", action="store_true", help="restart the broker under load and measure the reconnects")
    ap.add_argument("--storm-periods", type=float, default=2.0, help="periods of load after the restart")
    ap.add_argument("--reconnect-min", type=float, default=0.5, help="gateway backoff base (agent: 0.5 s)")
    ap.add_argument("--reconnect-max", type=float, default=30.0, help="gateway backoff cap (agent: 30 s)")
    ap.add_argument(
        "--retry-no-subscribers",
        action="store_true",
        help="gateways keep a message the broker answered with PUBACK 0x10 (no matching subscribers) and send it "
        "again later (the agent today treats 0x10 as delivered)",
    )
    ap.add_argument(
        "--influx-max-values-per-tag",
        type=int,
        default=1_000_000,
        help="InfluxDB [data] max-values-per-tag (its default 100,000 stops a city at ~9,100 gateways; 0: default)",
    )
    ap.add_argument("--handshake-concurrency", type=int, default=32, help="TLS handshakes at once per simulator")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--_ingest", help=argparse.SUPPRESS)
    ap.add_argument("--_sim", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._ingest:
        ingest_main(json.loads(args._ingest))
        return
    if args._sim:
        sim_main(json.loads(args._sim))
        return

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by Mosquitto and the workers
    n = args.gateways
    workers = args.workers or max(1, -(-n // 5000))
    load = os.getloadavg()
    result: dict[str, Any] = {
        "gateways": n,
        "ingesters": args.ingesters,
        "sim_workers": workers,
        "period_s": args.period,
        "gateway_backoff_s": [args.reconnect_min, args.reconnect_max],
        "retry_no_subscribers": args.retry_no_subscribers,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in load], "nofile": hard,
                    "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
    }  # fmt: skip
    log(f"{n} gateways, {args.ingesters} ingesters, {workers} simulator process(es); load average {load}")

    from cloud_ingest.scope import Scope
    from provisioning.local import InfluxDB

    with tempfile.TemporaryDirectory(prefix="kyojo-city-") as tmp:
        base = Path(tmp)
        errlog = base / "children.stderr"
        t0 = time.perf_counter()
        ids = make_identities(base, n, args.ingesters)
        result["identities_s"] = round(time.perf_counter() - t0, 1)
        log(f"CA + {n} gateway certificates in {result['identities_s']}s")
        broker, broker_start_s, conf = start_broker(base, ids, args)
        result["broker_first_start_s"] = round(broker_start_s, 2)
        result["broker_conf"] = [
            ln for ln in conf.splitlines() if ln.startswith(("max_", "persist", "autosave", "set_tcp"))
        ]
        # InfluxDB 1.x refuses new tag values beyond max-values-per-tag (default 100,000): with 11 power devices per
        # gateway the `device` tag of `power` passes it at ~9,100 gateways, and every write is refused from then on
        # (the ingesters hold and retry, the broker queues). Measured: docs/SCALING.md. 0 = the default.
        influx_data = {"max-values-per-tag": args.influx_max_values_per_tag} if args.influx_max_values_per_tag else {}
        result["influx_data_settings"] = influx_data
        influx = InfluxDB(base / "influx", data_settings=influx_data)
        influx.start()
        influx.create_database("kyojo")
        scope_key = secrets.token_hex(32)
        ingesters: list[IngestProc] = []
        sims: list[SimProc] = []
        sampler = Sampler(
            {
                "broker": lambda: [broker.pid],
                "influxd": lambda: [influx.pid],
                "ingest": lambda: [p.proc.pid for p in ingesters if p.proc.poll() is None],
                "sim": lambda: [s.proc.pid for s in sims if s.proc.poll() is None],
            }
        )
        try:
            for k, name in enumerate(ids["ingesters"]):
                tls = Path(ids["ingest_tls"][name])
                ctls = Path(ids["ingest_tls"][f"{name}-consents"])
                spec = {
                    "settings": {
                        "broker_host": HOST, "broker_port": broker.port, "tls_ca": str(tls / "ca.crt"),
                        "tls_cert": str(tls / "identity.crt"), "tls_key": str(tls / "identity.key"),
                        "consent_tls_cert": str(ctls / "identity.crt"), "consent_tls_key": str(ctls / "identity.key"),
                        "client_id": name, "group": ids["group"], "influx_url": influx.url, "influx_db": "kyojo",
                        "scope_key": scope_key,
                    },
                    "lag_file": str(base / f"lags-{k}.bin"),
                }  # fmt: skip
                ingesters.append(IngestProc(name, spec, errlog))
            for p in ingesters:
                if not p.started.wait(120):
                    raise RuntimeError(f"ingester {p.name} did not start: {errlog.read_text()[-3000:]}")
            log("ingesters subscribed in the secret share group")
            sampler.start()
            per = -(-n // workers)
            t_connect = time.time()
            for w in range(workers):
                first, last = w * per, min(n, (w + 1) * per)
                spec = {
                    "base": str(base), "port": broker.port, "first": first, "last": last, "n_total": n,
                    "period": args.period, "seed": 1000 + w, "connect_rate": args.connect_rate / workers,
                    "offset": w / workers, "event_rate": args.event_rate, "acl_probe_rate": args.acl_probes,
                    "reconnect_min": args.reconnect_min, "reconnect_max": args.reconnect_max,
                    "retry_no_subscribers": args.retry_no_subscribers,
                    "handshake_concurrency": args.handshake_concurrency,
                }  # fmt: skip
                sims.append(SimProc(spec, errlog))

            def connected() -> int:
                return sum(s.last.get("connected", 0) for s in sims)

            def counters() -> Counter[str]:
                c: Counter[str] = Counter()
                for s in sims:
                    c.update(s.last.get("counters", {}))
                return c

            def written() -> int:
                return sum(p.last.get("written", 0) for p in ingesters)

            def progress() -> None:
                c = counters()
                s = sampler.samples[-1] if sampler.samples else (0, {"broker": 0.0}, 0.0)
                blocked = [p.last.get("capacity_blocked") for p in ingesters if p.last.get("capacity_blocked")]
                log(
                    f"connected {connected()}/{n}, flushes {c['flushes']}, acked agg {c['acked_agg']}, "
                    f"probes refused {c['probe_refused']}, written {written()}, broker RSS {s[2]:.0f} MiB"
                    + (f"; INGEST BLOCKED BY THE STORE: {blocked[0]}" if blocked else "")
                )

            connect_s = wait_until(
                lambda: connected() >= n, 60 + 4 * n / args.connect_rate, "connect", progress=progress
            )
            t_all = time.time()
            c_cpu, c_pct = cpu_between(sampler, "broker", t_connect, t_all)
            sim_cpu, _ = cpu_between(sampler, "sim", t_connect, t_all)
            result["connect"] = {
                "all_connected_s": round(time.time() - t_connect, 1),
                "waited_s": round(connect_s, 1),
                "broker_cpu_s": round(c_cpu, 1),
                "broker_cpu_pct": round(c_pct, 1),
                "broker_cpu_ms_per_connect": round(1000 * c_cpu / n, 2),
                "sim_cpu_s": round(sim_cpu, 1),
            }
            log(f"all {n} connected in {result['connect']['all_connected_s']}s; broker {c_pct:.0f}% CPU meanwhile")
            # steady: from one period after the last connect (every gateway flushing) for --minutes periods
            t_steady0 = t_all + args.period
            t_steady1 = t_steady0 + args.minutes * args.period
            w0: dict[str, Any] = {}

            def mark() -> None:
                if not w0 and time.time() >= t_steady0:
                    w0.update(written=written(), ingest_cpu=sampler.cpu_now()["ingest"],
                              lag_cpu=sum(p.last.get("lag_cpu_s", 0.0) for p in ingesters))  # fmt: skip

            while time.time() < t_steady1:
                time.sleep(0.5)
                mark()
                if int(time.time()) % 15 == 0:
                    progress()
                    time.sleep(0.5)
            w1 = {"written": written(), "ingest_cpu": sampler.cpu_now()["ingest"],
                  "lag_cpu": sum(p.last.get("lag_cpu_s", 0.0) for p in ingesters)}  # fmt: skip
            b_cpu, b_pct = cpu_between(sampler, "broker", t_steady0, t_steady1)
            _i_cpu, i_pct = cpu_between(sampler, "ingest", t_steady0, t_steady1)
            _f_cpu, f_pct = cpu_between(sampler, "influxd", t_steady0, t_steady1)
            _s_cpu, s_pct = cpu_between(sampler, "sim", t_steady0, t_steady1)
            steady_rss = [r for _, _, r in sampler.window(t_steady0, t_steady1)]
            pts = w1["written"] - w0.get("written", 0)
            ing_cpu = (w1["ingest_cpu"] - w0.get("ingest_cpu", 0.0)) - (w1["lag_cpu"] - w0.get("lag_cpu", 0.0))
            result["steady"] = {
                "seconds": round(t_steady1 - t_steady0, 1),
                "points_written": pts,
                "points_per_s": round(pts / (t_steady1 - t_steady0), 1),
                "broker_rss_mib": round(max(steady_rss, default=0.0), 1),
                "broker_cpu_pct": round(b_pct, 1),
                "ingest_cpu_pct_total": round(i_pct, 1),
                "influxd_cpu_pct": round(f_pct, 1),
                "sim_cpu_pct": round(s_pct, 1),
                "ingest_cpu_us_per_point": round(1e6 * ing_cpu / pts, 1) if pts else None,
                "broker_cpu_us_per_point": round(1e6 * b_cpu / pts, 1) if pts else None,
            }
            log(f"steady: {result['steady']}")
            t_storm0 = t_back = 0.0
            if args.storm:
                log("storm: restarting the broker under load (SIGTERM + start, as systemctl restart)")
                t_storm0 = time.time()
                before = proc_cpu(broker.pid)
                broker.stop(timeout=60)
                t_stopped = time.time()
                sampler.broker_cpu_base += before
                broker.start(timeout=120)
                t_up = time.time()
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: connected() < n, 10, "disconnect seen", every=0.1)
                back_s = wait_until(lambda: connected() >= n, 600, "reconnect", every=0.25, progress=progress)
                t_back = time.time()
                result["storm"] = {
                    "broker_stop_s": round(t_stopped - t_storm0, 2),
                    "broker_start_s": round(t_up - t_stopped, 2),
                    "all_back_after_restart_s": round(t_back - t_storm0, 1),
                    "all_back_after_broker_up_s": round(t_back - t_up, 1),
                    "peak_broker_cpu_pct": round(peak_cpu(sampler, "broker", t_up, t_back + 5), 1),
                    "broker_cpu_s_until_back": round(cpu_between(sampler, "broker", t_up, t_back)[0], 1),
                    "waited_s": round(back_s, 1),
                }
                log(f"storm: {result['storm']}")
                t_end = t_back + args.storm_periods * args.period
                while time.time() < t_end:
                    time.sleep(1)
                    if int(time.time()) % 15 == 0:
                        progress()
            # drain: gateways stop flushing, empty their outboxes, disconnect
            log("draining: gateways stop, wait for every PUBACK, ingesters write the rest")
            for s in sims:
                s.stop()
            wait_until(lambda: all(s.final for s in sims), 300, "simulators final", progress=progress)
            acked: dict[str, list[int]] = {}
            c = Counter[str]()
            for s in sims:
                acked.update(s.final["acked_by_gw"])
                c.update(s.final["counters"])
            expected = sum(a + b + e for a, b, e in acked.values())
            wait_until(lambda: written() >= expected, 300, f"ingesters write {expected}", progress=progress)
            quiet = [written(), time.monotonic()]

            def settled() -> bool:
                if written() != quiet[0]:
                    quiet[:] = [written(), time.monotonic()]
                return time.monotonic() - quiet[1] > 2.0

            wait_until(settled, 120, "ingesters quiet", every=0.2)
            for p in ingesters:
                p.stop()
            sampler.stop()
            # what InfluxDB holds, per household tag (a gateway's tag per purpose)
            scope = Scope(bytes.fromhex(scope_key))
            want: Counter[str] = Counter()
            for gw, (e, h, ev) in acked.items():
                want[scope.household(gw, ENERGY)] += e
                want[scope.household(gw, HEALTH)] += h + ev
            got: Counter[str] = Counter()
            meas = "|".join(AGG_MEASUREMENTS)
            q = f'SELECT count("last") FROM /^({meas})$/ GROUP BY household'  # noqa: S608 constants only
            for row in influx.query_rows(q, db="kyojo"):
                got[row["household"]] += int(row["count"])
            for row in influx.query_rows('SELECT count("event_id") FROM "events" GROUP BY household', db="kyojo"):
                got[row["household"]] += int(row["count"])
            lost = sum(max(0, want[h] - got[h]) for h in want)
            dups = sum(max(0, got[h] - want[h]) for h in got)
            finals = [p.final for p in ingesters]
            closes, lags = array.array("q"), array.array("i")
            for k in range(len(ingesters)):
                cl, lg = read_lags(base / f"lags-{k}.bin")
                closes.extend(cl)
                lags.extend(lg)
            result["steady"]["lag"] = lag_summary(closes, lags, t_steady0 * 1000, t_steady1 * 1000)
            if args.storm:
                result["storm"]["lag_windows_closed_during"] = lag_summary(
                    closes, lags, t_storm0 * 1000 - 1000, t_back * 1000
                )
            result["loss"] = {
                "points_acked_by_broker": expected,
                "points_stored": sum(got.values()),
                "lost": lost,
                "duplicates": dups,
                "rewrites": sum(f.get("written", 0) for f in finals) - expected,
                "unacked_at_end": sum(s.final.get("outbox", 0) for s in sims),
                "events_acked": c["acked_event"],
                "acl_probes_refused": c["probe_refused"],
                "acl_probes_ACCEPTED": c["probe_ACCEPTED"],
                "other_refusals": {k: v for k, v in c.items() if k.startswith("refused_")},
                "puback_0x10_no_subscribers": {k: v for k, v in c.items() if k.startswith("acked_no_subscribers")},
                "ingester_rejected": [f.get("rejected") for f in finals],
                "split": [f.get("received") for f in finals],
                "broker_drop_episodes": broker.dropped_messages(),
            }
            result["gateway_side"] = {
                "connects": c["connects"],
                "resent_dup": c["resent"],
                "connect_errors": {k: v for k, v in c.items() if k.startswith("connect_error")},
                "connect_s_worker0": sims[0].final.get("connect_s"),
            }
        finally:
            for s in sims:
                if s.proc.poll() is None:
                    s.stop()
                    try:
                        s.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        s.proc.kill()
            for p in ingesters:
                if p.proc.poll() is None:
                    p.proc.kill()
            sampler.stop()
            broker.stop(timeout=60)
            influx.stop()
            if errlog.exists() and errlog.stat().st_size:
                tail = errlog.read_text(errors="replace")[-1500:]
                log(f"children's stderr (tail):\n{tail}")
    table(result)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


def table(r: dict[str, Any]) -> None:
    s, lo = r.get("steady", {}), r.get("loss", {})
    rows = [
        ("gateways", r["gateways"]),
        ("all connected after (s)", r.get("connect", {}).get("all_connected_s")),
        ("broker CPU ms per connect", r.get("connect", {}).get("broker_cpu_ms_per_connect")),
        ("steady points/s", s.get("points_per_s")),
        ("broker RSS MiB", s.get("broker_rss_mib")),
        ("broker CPU % (1 core)", s.get("broker_cpu_pct")),
        ("lag p50 / p99 ms", f"{s.get('lag', {}).get('p50_ms')} / {s.get('lag', {}).get('p99_ms')}"),
        ("ingest CPU us/point", s.get("ingest_cpu_us_per_point")),
        ("lost / duplicates", f"{lo.get('lost')} / {lo.get('duplicates')}"),
        ("ACL probes refused / accepted", f"{lo.get('acl_probes_refused')} / {lo.get('acl_probes_ACCEPTED')}"),
    ]
    if "storm" in r:
        st = r["storm"]
        rows += [
            ("storm: all back after restart (s)", st["all_back_after_restart_s"]),
            ("storm: peak broker CPU %", st["peak_broker_cpu_pct"]),
            ("storm: lag p50 / p99 ms", f"{st['lag_windows_closed_during']['p50_ms']} / "
                                        f"{st['lag_windows_closed_during']['p99_ms']}"),
        ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=sys.stderr)


if __name__ == "__main__":
    main()

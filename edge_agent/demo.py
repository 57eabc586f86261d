"""``kyojo demo``: the whole platform on one machine, with simulated homes and a garbage truck.

Starts Mosquitto and InfluxDB on free loopback ports with data under ``workdir``, one household gateway
(wearables, plugs, meter, EV charger) and one garbage-truck gateway as agent processes, and one ingester
process; grants a sample set of consents (person p2 gives none, so their data never leaves); prints progress
every second; stops everything it started on Ctrl-C or after ``duration``; returns a summary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from edge_agent import consent
from edge_agent.config import load_config
from edge_agent.db import connect
from provisioning.local import LocalStack, ensure_installed

DB = "kyojo"
ANALYST_QUERY = (
    'SELECT mean("mean") AS heart_rate FROM "heart_rate" WHERE time > now() - 1d GROUP BY time(10m), "subject"'
)

GATEWAYS = {
    "home-001": {"profile": "home", "sim": "household", "persons": ["p1", "p2"]},
    "truck-07": {"profile": "truck", "sim": "truck", "persons": []},
}
# (gateway, purpose, subject): p2 consents to nothing, so p2's health data stays on the gateway.
CONSENTS = [
    ("home-001", "preventive-care", "p1"),
    ("home-001", "community-energy", "home-001"),
    ("home-001", "ev-energy-sharing", "home-001"),
    ("truck-07", "waste-collection", "truck-07"),
]


def _morning_jst(now: float) -> float:
    """07:55 JST of the latest day whose 07:55 is past: the truck's shift and the morning cuff come soon."""
    day = 86_400
    t = (now + 9 * 3600) // day * day - 9 * 3600 + 7 * 3600 + 55 * 60
    return t if t <= now else t - day


def _gateway_toml(gw: str, spec: dict[str, Any], port: int, speed: float, start: float) -> str:
    persons = ", ".join(f'"{p}"' for p in spec["persons"])
    return f"""[gateway]
id = "{gw}"
profile = "{spec["profile"]}"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {port}

[clock]
speed = {speed}
start = {start}

[[devices]]
kind = "sim"
profile = "{spec["sim"]}"
id = "{gw}"
seed = 7
persons = [{persons}]
"""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    last: dict[str, Any] = field(default_factory=dict)


def _follow_json(proc: _Proc, stream: IO[bytes]) -> None:
    for line in stream:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            proc.last = doc


def _spawn(name: str, args: list[str], log: Path, *, capture: bool = False) -> _Proc:
    logf = log.open("ab")
    popen = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE if capture else logf,
        stderr=logf,
        start_new_session=True,
    )
    proc = _Proc(name, popen)
    if capture and popen.stdout is not None:
        threading.Thread(target=_follow_json, args=(proc, popen.stdout), daemon=True).start()
    return proc


def _stop(proc: _Proc, timeout: float = 20.0) -> None:
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


def _agent_status(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def run_demo(*, workdir: Path, duration: float | None, speed: float, out: IO[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary whose JSON is the last line ``kyojo demo`` prints."""
    out = out or sys.stdout
    ensure_installed(install=os.geteuid() == 0 and shutil.which("apt-get") is not None)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    procs: list[_Proc] = []
    stack = LocalStack(workdir / "services")
    stack.start()
    try:
        stack.influxdb.create_database(DB)
        port = stack.mosquitto.port
        start = _morning_jst(time.time())
        configs = {}
        for gw, spec in GATEWAYS.items():
            path = workdir / gw / "agent.toml"
            path.parent.mkdir(parents=True)
            path.write_text(_gateway_toml(gw, spec, port, speed, start), encoding="utf-8")
            configs[gw] = load_config(path)
        for gw, purpose, subject in CONSENTS:
            conn = connect(configs[gw].db_path)
            try:
                consent.open_store(configs[gw], conn).grant(purpose, subject, now=datetime.fromtimestamp(start, tz=UTC))
            finally:
                conn.close()
        ingester = _spawn(
            "ingester",
            [
                "-m",
                "cloud_ingest",
                "run",
                "--broker-port",
                str(port),
                "--influx-url",
                stack.influxdb.url,
                "--influx-db",
                DB,
                "--client-id",
                "demo-ingest-1",
                "--stats-interval",
                "1",
            ],
            workdir / "ingester.log",
            capture=True,
        )
        procs.append(ingester)
        for gw in GATEWAYS:
            cfg_path = workdir / gw / "agent.toml"
            procs.append(
                _spawn(gw, ["-m", "edge_agent", "agent", "run", "--config", str(cfg_path)], workdir / gw / "agent.log")
            )
        print(
            f"kyojo demo: broker 127.0.0.1:{port}, InfluxDB {stack.influxdb.url} (db {DB}), "
            f"simulated clock x{speed:g}; Ctrl-C stops everything.",
            file=out,
            flush=True,
        )
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(1.0)
                for p in procs:
                    if p.popen.poll() is not None:
                        raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; see its log in {workdir}")
                print(_progress(configs, ingester), file=out, flush=True)
        except KeyboardInterrupt:
            print("stopping ...", file=out, flush=True)
        for p in procs[1:]:
            _stop(p)
        _settle(configs, ingester)
        _stop(ingester)
        summary = _summary(configs, ingester)
        points = stack.influxdb.query_rows('SELECT count("last") FROM /.*/', DB)
        summary["points_in_influxdb"] = int(sum(int(r.get("count", 0) or 0) for r in points))
        print("analyst query (InfluxQL):", file=out)
        print(
            f"  influx -host 127.0.0.1 -port {stack.influxdb.http_port} -database {DB} -execute '{ANALYST_QUERY}'",
            file=out,
            flush=True,
        )
        return summary
    finally:
        for p in procs:
            _stop(p, timeout=5)
        stack.stop()


def _analyst_hint(url: str) -> str:
    from urllib.parse import quote

    return (
        f"analyst query (InfluxQL, while the demo runs):\n  {ANALYST_QUERY}\n"
        f"  curl -s '{url}/query?db={DB}&q={quote(ANALYST_QUERY)}'"
    )


def _settle(configs: dict[str, Any], ingester: _Proc, timeout: float = 15.0) -> None:
    """After the agents stopped, wait until the ingester has written all they sent (or timeout)."""
    end = time.monotonic() + timeout
    last, same = -1, 0
    while time.monotonic() < end:
        written = int(ingester.last.get("written", 0))
        same = same + 1 if written == last else 0
        if same >= 3:
            return
        last = written
        time.sleep(0.5)


def _totals(configs: dict[str, Any]) -> dict[str, int]:
    tot = {"readings": 0, "aggregates_queued": 0, "aggregates_sent": 0, "outbox_depth": 0, "denied": 0}
    for cfg in configs.values():
        st = _agent_status(cfg.status_path)
        for key in tot:
            tot[key] += int(st.get(key, 0) or 0)
    return tot


def _progress(configs: dict[str, Any], ingester: _Proc) -> str:
    t = _totals(configs)
    ing = ingester.last
    rejected = sum((ing.get("rejected") or {}).values()) if isinstance(ing.get("rejected"), dict) else 0
    return (
        f"readings {t['readings']:>8} | aggregates queued {t['aggregates_queued']:>6} sent {t['aggregates_sent']:>6}"
        f" (outbox {t['outbox_depth']}) withheld {t['denied']:>5} | points written {ing.get('written', 0):>6}"
        f" rejected {rejected}"
    )


def _summary(configs: dict[str, Any], ingester: _Proc) -> dict[str, Any]:
    t = _totals(configs)
    ing = ingester.last
    rejected = ing.get("rejected") or {}
    return {
        "readings": t["readings"],
        "aggregates_queued": t["aggregates_queued"],
        "aggregates_sent": t["aggregates_sent"],
        "aggregates_withheld_no_consent": t["denied"],
        "points_written": int(ing.get("written", 0)),
        "rejected": int(sum(rejected.values())) if isinstance(rejected, dict) else 0,
        "rejected_by_cause": rejected,
    }

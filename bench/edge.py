"""Edge benchmark: the whole agent for a typical home, in real time, CPU share of one core and peak RSS.

Typical home (docs/ARCHITECTURE.md, "Pitfalls measured"): 4 wearables at 1 Hz (heart-rate straps with RR intervals),
10 smart plugs, 1 whole-home meter, 1 EV charger, all simulated on the wall clock, with every consent granted so the
whole path runs (raw store, windows, gate, outbox, MQTT publish to a real Mosquitto started here).

Baseline, in the same process tree: a process that imports the same modules and keeps an idle MQTT v5
connection to the same broker, so the ratio shows what the agent's own work costs on top of the interpreter.

    .venv/bin/python bench/edge.py [--seconds 60]

The last line is one JSON object: agent_cpu_pct_of_core, agent_rss_mb, baseline_cpu_pct_of_core,
baseline_rss_mb, cpu_ratio, rss_ratio, readings_per_s, aggregates_sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set
            return int(line.split()[1]) / 1024
    return 0.0


def child(port: int, data_dir: Path, baseline: bool) -> None:
    import drivers.sim as sim
    from drivers.clock import SystemClock
    from edge_agent import consent
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from edge_agent.db import connect

    cfg = AgentConfig.model_validate(
        {"gateway": {"id": "bench-home", "data_dir": str(data_dir)}, "mqtt": {"port": port}}
    )
    if baseline:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="baseline", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.connect("127.0.0.1", port)
        client.loop_start()
        print("ready", flush=True)
        signal.pause()  # idle with the connection open until the parent kills us
        return
    home = "bench-home"
    sims: list[sim.Simulator] = [sim.HeartRateStrap(f"{home}-p{i}-hr", f"p{i}", i) for i in range(4)]
    appliances = ["fridge", "kettle", "washing_machine", "tv"] * 3
    plugs = [sim.Plug(f"{home}-plug{i}", home, i, appliance=a) for i, a in enumerate(appliances[:10])]  # type: ignore[arg-type]
    sims += plugs
    sims.append(sim.Meter(f"{home}-meter", home, 1, plugs))
    sims.append(sim.EVCharger(f"{home}-ev", home, 1))
    conn = connect(cfg.db_path)
    now = time.time()
    from datetime import UTC, datetime

    for i in range(4):
        consent.open_store(cfg, conn).grant("preventive-care", f"p{i}", now=datetime.fromtimestamp(now - 120, tz=UTC))
    for purpose in ("community-energy", "ev-energy-sharing"):
        consent.open_store(cfg, conn).grant(purpose, home, now=datetime.fromtimestamp(now - 120, tz=UTC))
    conn.close()
    clock = SystemClock()
    agent = Agent(cfg, clock=clock, drivers=[sim.SimDriver(s, clock, tick_s=1.0) for s in sims])
    print("ready", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(3600, stop.set)
        await agent.run(stop)

    asyncio.run(main())


def measure(cmd: list[str], seconds: float, warmup: float = 5.0) -> tuple[int, float, float, subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(warmup)
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    return proc.pid, 100 * (c1 - c0) / (t1 - t0), rss_mb(proc.pid), proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--child", choices=["agent", "baseline"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--data-dir", type=Path)
    args = ap.parse_args()
    if args.child:
        child(args.port, args.data_dir, args.child == "baseline")
        return

    from provisioning.local import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mqtt") as broker:
        me = [sys.executable, __file__, "--port", str(broker.port)]
        _, base_cpu, base_rss, base = measure([*me, "--child", "baseline", "--data-dir", f"{tmp}/b"], args.seconds)
        base.kill()
        base.wait()
        _, cpu, rss, agent = measure([*me, "--child", "agent", "--data-dir", f"{tmp}/a"], args.seconds)
        status = json.loads((Path(tmp) / "a" / "status.json").read_text())
        agent.kill()
        agent.wait()
    result = {
        "seconds": args.seconds,
        "agent_cpu_pct_of_core": round(cpu, 2),
        "agent_rss_mb": round(rss, 1),
        "baseline_cpu_pct_of_core": round(base_cpu, 2),
        "baseline_rss_mb": round(base_rss, 1),
        "cpu_ratio": round(cpu / base_cpu, 1) if base_cpu > 0 else None,
        "rss_ratio": round(rss / base_rss, 2),
        "readings_per_s": round(status["readings"] / max(status["uptime_s"], 1e-9), 1),
        "aggregates_sent": status["aggregates_sent"],
        "targets": {"cpu_pct_of_core": 5.0, "rss_mb": 100.0},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

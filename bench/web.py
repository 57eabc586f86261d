"""Benchmark of the household web app: p95 page time per page, and the web process's RSS and CPU while idle.

Setup, all real: a Mosquitto on a free loopback port; a household gateway config (tests/webkit.py's home: straps,
plugs, meter, health and NILM processors) whose database gets a household's month (tests/household.py: the
simulated devices through the agent's pipeline, processors, consent store and publisher, the outbox sent to the
broker; raw rows older than the 14-day retention pruned as the agent does); then ``kyojo web serve`` as its own
process on a free loopback port, signed in over HTTP with a code from ``kyojo web pair-code``.

Measured: for each page, ``--warmup`` requests then ``--requests`` sequential GETs on one keep-alive connection,
the wall time from sending the request to the last byte of the page (server-rendered HTML; static assets are
separate, cacheable files); p50/p95/max in ms. Then the process is left alone for ``--idle`` seconds: RSS (VmRSS)
at the end, peak RSS (VmHWM), and CPU (utime+stime from /proc) over the idle period, as % of one core.

Targets (issue 16): p95 < 300 ms per page, idle RSS < 60 MB. Prints one JSON object (and a table on stderr).

    .venv/bin/python bench/web.py                 # a 30-day month, ~6 min of seeding on 2 shared cores
    .venv/bin/python bench/web.py --days 3 --requests 30 --idle 10   # quick look
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provisioning.local import Mosquitto  # noqa: E402
from tests.household import seed_household  # noqa: E402
from tests.webkit import free_port, home_toml, pair_code  # noqa: E402

PAGES = ["/", "/energy", "/energy?range=week", "/alerts", "/released", "/consent", "/devices", "/settings"]
TARGET_P95_MS = 300.0
TARGET_RSS_MB = 60.0


class Client:
    """One keep-alive HTTP/1.1 connection with a cookie jar (enough for the app's session and CSRF cookies)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        t0 = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
        for value in resp.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            for key, morsel in jar.items():
                self.cookies[key] = morsel.value
        return resp.status, data, elapsed


def _csrf(html: bytes) -> str:
    m = re.search(rb'name="csrf" value="([^"]*)"', html) or re.search(rb'name="csrf-token" content="([^"]*)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1).decode()


def sign_in(client: Client, config: Path) -> None:
    status, html, _ = client.request("GET", "/signin")
    assert status == 200, status
    status, _, _ = client.request("POST", "/signin", {"csrf": _csrf(html), "code": pair_code(config), "next": "/"})
    assert status == 303, f"sign-in answered {status}"


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds user+system) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, hwm, (int(fields[11]) + int(fields[12])) / ticks


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q * (len(s) - 1))))
    return s[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--idle", type=float, default=30.0)
    args = ap.parse_args()
    # a SIGTERM (timeout, Ctrl-C's cousin) unwinds the with-blocks too: the broker and the web server are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="kyojo-bench-web-") as tmp:
        root = Path(tmp)
        with Mosquitto(root / "mosquitto") as broker:
            config = root / "home" / "agent.toml"
            config.parent.mkdir()
            config.write_text(
                home_toml(
                    data_dir=root / "home" / "data",
                    broker_port=broker.port,
                    lan_port=free_port(),
                    meter_port=str(root / "home" / "meter-pty"),
                    speed=1.0,
                    start=time.time(),
                    simulated=False,  # a real home's config: no simulated device, BLE through BlueZ
                ),
                encoding="utf-8",
            )
            print(f"seeding {args.days:g} days ...", file=sys.stderr, flush=True)
            seeded = seed_household(
                config,
                days=args.days,
                publish=True,
                progress=lambda day: print(f"  day {day:g} of {args.days:g}", file=sys.stderr, flush=True),
            )
            db = root / "home" / "data" / "gateway.sqlite3"
            seeded_doc = seeded.as_dict() | {"db_mb": round(db.stat().st_size / 1e6, 1)}
            print(json.dumps(seeded_doc), file=sys.stderr, flush=True)
            port = free_port()
            kyojo = Path(sys.executable).with_name("kyojo")
            log = (root / "web.log").open("wb")
            web = subprocess.Popen(
                [str(kyojo), "web", "serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                client = _connect(port, web)
                sign_in(client, config)
                pages: dict[str, dict[str, float | int]] = {}
                for page in PAGES:
                    status, _, _ = client.request("GET", page)
                    if status == 404:
                        continue
                    assert status == 200, f"{page} answered {status}"
                    for _ in range(args.warmup):
                        client.request("GET", page)
                    times = []
                    for _ in range(args.requests):
                        status, body, elapsed = client.request("GET", page)
                        assert status == 200
                        times.append(elapsed * 1000)
                    pages[page] = {
                        "p50_ms": round(percentile(times, 0.5), 1),
                        "p95_ms": round(percentile(times, 0.95), 1),
                        "max_ms": round(max(times), 1),
                        "kb": round(len(body) / 1024, 1),
                        "n": len(times),
                    }
                    print(f"{page:<22} {pages[page]}", file=sys.stderr, flush=True)
                _, _, cpu0 = proc_stats(web.pid)
                time.sleep(args.idle)
                rss, hwm, cpu1 = proc_stats(web.pid)
            finally:
                web.terminate()
                web.wait(20)
                log.close()
    worst = max((p["p95_ms"] for p in pages.values()), default=0.0)
    out = {
        "seeded": seeded_doc,
        "pages": pages,
        "worst_p95_ms": worst,
        "idle_rss_mb": round(rss, 1),
        "peak_rss_mb": round(hwm, 1),
        "idle_cpu_pct_of_one_core": round(100 * (cpu1 - cpu0) / args.idle, 2),
        "targets": {"p95_ms": TARGET_P95_MS, "idle_rss_mb": TARGET_RSS_MB},
        "meets_targets": worst < TARGET_P95_MS and rss < TARGET_RSS_MB,
    }
    print(json.dumps(out))


def _connect(port: int, web: subprocess.Popen[bytes]) -> Client:
    deadline = time.monotonic() + 30
    while True:
        assert web.poll() is None, "kyojo web serve exited"
        try:
            client = Client(port)
            client.request("GET", "/signin")
            return client
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()

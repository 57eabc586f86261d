"""``kyojo demo``: the whole platform on one machine, with simulated homes and a garbage truck.

Starts Mosquitto and InfluxDB on free loopback ports with data under ``workdir``, one household gateway (wearables,
plugs, meter, EV charger), one gateway of a person living alone (watch-over) and one garbage-truck gateway as agent
processes, and the ingester, eraser and watch-over notifier processes; grants a sample set of consents (person p2
gives none, so their data never leaves); starts the household web page of home-001 (``kyojo web serve``, loopback,
port 8080 when free) and prints its URL and a one-time pairing code; starts the garbage-collection navigator
(``kyojo navi serve``, port 8090 when free) on the truck's route and prints its URL; runs the residents' services of
:mod:`kyojo.devstack.residents` (the person living alone goes quiet once and their family is e-mailed; the city
declares a disaster for the homes' area and counts their answers); prints progress every second; stops everything it
started on Ctrl-C or after ``duration``; returns a summary.

The devices are the deterministic simulators of :mod:`drivers.sim`, and most of them reach the gateways over
the real protocols, read by the production drivers (:mod:`drivers.sim.emit`):

=====================================  ==================================  =====================================
device                                 on the wire (emitted by the demo)   gateway driver
=====================================  ==================================  =====================================
4 plugs (kettle, tv, fridge, washer)   Tasmota SENSOR, Shelly Gen2          ``kind = "plugs"`` on the home's
                                       NotifyStatus, Zigbee2MQTT, on a      LAN broker
                                       second (LAN-side) Mosquitto
smart meter                            emulated BP35A1 Wi-SUN module on a   ``kind = "bmeter"``, port =
                                       pty (ECHONET Lite 0xE7/0xE0/...)     ``<workdir>/dev/home-001-bmeter``
garbage truck                          NMEA GGA+RMC+VTG, 1 Hz simulated,    ``kind = "gnss"``, port =
                                       on a pty                             ``<workdir>/dev/truck-07-gnss``
heart-rate straps (p1, p2)             Bumble virtual peripherals in the    ``kind = "ble"``, ``backend =
                                       agent process (demo/test backend)    "virtual"``
BP cuff (p1), oximeter (p2), EV        injected readings                    ``kind = "sim"`` (``only = [...]``)
=====================================  ==================================  =====================================

Time: each agent runs a scaled clock (``--speed``, a simulated minute per second by default) and its drivers
stamp what they receive with it (GNSS fixes carry their own time). The demo's emitters follow the agent's
clock, read from its status file (:func:`drivers.sim.emit.clock_of_agent`), so a device's state for simulated
time ``t`` is on the wire when the gateway's clock reads ``t``; the BLE straps run inside the agent on its
clock. Until an agent's first status, the meter answers on an estimate of that clock (started with the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from drivers import sim
from drivers.meter.emulator import PWD, RBID, PtyEmulator, Scenario
from drivers.sim.emit.clock import AnchoredClock, clock_of_agent
from drivers.sim.emit.meter import SimulatedMeter, serve_meter
from drivers.sim.emit.nmea import NmeaEmitter, PtyLine
from drivers.sim.emit.plugs import PlugEmitter, appliances, household_plugs
from drivers.sim.energy import Meter, Plug
from drivers.sim.evsite import LiveSite, live_site_toml
from drivers.sim.gnss import GarbageTruck
from edge_agent import consent
from edge_agent.config import AgentConfig, load_config
from edge_agent.db import connect
from edge_agent.disaster import press
from edge_agent.processors.watchover import family_code
from kyojo.contract.vocab import Clock
from kyojo.devstack import residents
from provisioning.local import LocalStack, Mosquitto, PostgreSQL, ensure_installed

DB = "kyojo"

SEED = 7
HOME = "home-001"
COLLECTION_POINTS = Path(sim.__file__).resolve().parent / "data" / "collection_points.geojson"
TRUCK = "truck-07"
GATEWAYS = {
    HOME: {"profile": "home", "sim": "household", "persons": ["p1", "p2"]},
    TRUCK: {"profile": "truck", "sim": "truck", "persons": []},
    residents.ALONE: {"profile": "home", "sim": "alone", "persons": [residents.PERSON]},
}
#: a home with PV on the roof and an EV charger, whose gateway steers the charging into the surplus (issue 18)
SITE = "home-003"
GATEWAYS[SITE] = {"profile": "home", "sim": "site", "persons": []}
#: the charge point of home-003 (a real ``ocpp`` ChargePoint that honours profiles: drivers.sim.evsite)
SITE_CP = "HOME3-EV"
#: home-003's clock starts this long after the others' (late morning: the car is home, the sun is up)
SITE_AHEAD_S = 3 * 3600.0
#: the gateways in the city's area (they answer a disaster declared for it)
HOMES = (HOME, residents.ALONE)
#: household devices that stay on ``kind = "sim"`` (no real path for them in the demo yet)
SIM_ONLY = [f"{HOME}-p1-bp", f"{HOME}-p2-spo2", f"{HOME}-ev"]
#: heart-rate straps on the virtual BLE backend: device id -> (BD_ADDR, subject)
STRAPS = {f"{HOME}-p1-hr": ("C0:4B:00:00:01:01", "p1"), f"{HOME}-p2-hr": ("C0:4B:00:00:02:01", "p2")}
#: the household's plugs (read through ``kind = "plugs"``)
PLUG_DEVICES = frozenset(f"{HOME}-{name}" for name in ("fridge", "kettle", "washer", "tv"))
#: simulated seconds between two meter polls (the driver sleeps on the agent's scaled clock)
METER_POLL_S = 10
# (gateway, purpose, subject): p2 consents to nothing, so p2's health data stays on the gateway.
CONSENTS = [
    ("home-001", "preventive-care", "p1"),
    ("home-001", "community-energy", "home-001"),
    ("home-001", "ev-energy-sharing", "home-001"),
    ("truck-07", "waste-collection", "truck-07"),
    ("home-001", "disaster-safety", "home-001"),
    (residents.ALONE, "watchover-family", residents.PERSON),
    (residents.ALONE, "disaster-safety", residents.PERSON),
    (SITE, "energy-trading", SITE),
    (HOME, "energy-trading", HOME),
]
#: k of the demo's safety count (two households in the area; the city's default is 5)
SAFETY_K = 2


def _morning_jst(now: float) -> float:
    """07:55 JST of the latest day whose 07:55 is past: the truck's shift and the morning cuff come soon."""
    day = 86_400
    t = (now + 9 * 3600) // day * day - 9 * 3600 + 7 * 3600 + 55 * 60
    return t if t <= now else t - day


def _toml_table(d: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in d.items()) + " }"


def _bmeter(home: str, port: str) -> str:
    """The ``kind = "bmeter"`` entry of ``home``'s smart meter, an emulated BP35A1 on the pty ``port``."""
    return f"""
[[devices]]
kind = "bmeter"
id = "{home}-meter"
household = "{home}"
serial_port = {json.dumps(port)}
rbid = "{RBID}"
password = "{PWD}"
poll_interval = {METER_POLL_S}
scan_durations = [4]
"""


def _device_entries(gw: str, spec: dict[str, Any], wire: _Wire, alone: residents.AloneHome) -> str:
    """The ``[[devices]]`` of a gateway: real drivers on the demo's emitters, the rest simulated."""
    if gw == SITE:
        # the meter sees the house, the PV and the car: the net power at the grid connection
        return _bmeter(SITE, wire.site_meter_port) + live_site_toml(
            SITE, port=wire.ocpp_port, cp_id=SITE_CP, key=wire.ocpp_key
        )
    if gw == residents.ALONE:
        return f"""
[[devices]]
kind = "sim"
profile = "alone"           # a person living alone; switches nothing on in the quiet window
id = "{gw}"
seed = {SEED}
only = ["{gw}-meter"]
quiet = [{alone.quiet[0]!r}, {alone.quiet[1]!r}]

[[processors]]
kind = "watchover"          # learned this home's rhythm (replayed: residents.seed_watchover)
meter = "{gw}-meter"
subject = "{residents.PERSON}"
"""
    if gw == TRUCK:
        return f"""
[[devices]]
kind = "gnss"
id = "{TRUCK}-gnss"
subject = "{TRUCK}"
port = {json.dumps(wire.gnss_port)}
baud = 9600
accept_simulated = true     # the emitter's NMEA says "simulator" (GGA quality 8, mode S)

[[processors]]
kind = "truck"              # stops at collection points -> pickup events (waste-collection consent)
collection_points = {json.dumps(str(COLLECTION_POINTS))}
"""
    persons = ", ".join(f'"{p}"' for p in spec["persons"])
    only = ", ".join(f'"{d}"' for d in SIM_ONLY)
    text = f"""
[[devices]]
kind = "sim"
profile = "{spec["sim"]}"
id = "{gw}"
seed = {SEED}
persons = [{persons}]
only = [{only}]
"""
    for dev, (address, subject) in STRAPS.items():
        text += f"""
[[devices]]
kind = "ble"
id = "{dev}"
address = "{address}"
profile = "heart_rate"
subject = "{subject}"
backend = "virtual"         # demo/test backend: a Bumble virtual strap played by the simulator
sim_seed = {SEED}
"""
    text += f"""
[[devices]]
kind = "plugs"
id = "{HOME}-plugs"
household = "{HOME}"
broker_port = {wire.lan.port}
appliances = {_toml_table(wire.appliances)}
{_bmeter(HOME, wire.meter_port)}
[[processors]]
kind = "health"             # guideline rules + the AF rhythm model -> alerts (kept home without consent)
profile = "japan"

[[processors]]
kind = "nilm"               # appliance estimates from the whole-home meter, helped by two plugs
meter = "{HOME}-meter"
subject = "{HOME}"
plugs = {{ "{HOME}-kettle" = "kettle", "{HOME}-washer" = "washing_machine" }}

[[processors]]
kind = "watchover"          # learns the home's rhythm; its signs of life feed the disaster status (no consent:
meter = "{HOME}-meter"      # its events stay home)
subject = "{HOME}"
signals = {{ "{HOME}-kettle" = "kettle", "{HOME}-tv" = "tv" }}
"""
    return text


def _gateway_toml(
    gw: str, spec: dict[str, Any], port: int, speed: float, start: float, wire: _Wire, alone: residents.AloneHome
) -> str:
    area = f'area = "{residents.AREA}"\n' if gw in HOMES else ""
    safety = f"\n[safety]\ncity_ca = {json.dumps(str(wire.city_ca))}\n" if gw in HOMES else ""
    if gw == HOME:  # the household page's 電力の取引 reads the city's ledger (kyojo ledger serve-http)
        safety += f'\n[trading]\nledger_url = "http://127.0.0.1:{wire.ledger_port}"\n'
        safety += f"city_ca = {json.dumps(str(wire.city_ca))}\n"
    return f"""[gateway]
id = "{gw}"
profile = "{spec["profile"]}"
data_dir = "data"
{area}
[mqtt]
host = "127.0.0.1"
port = {port}

[clock]
speed = {speed}
start = {alone.start if gw == residents.ALONE else start + SITE_AHEAD_S if gw == SITE else start}
{safety}{_device_entries(gw, spec, wire, alone)}"""


class _ClockProxy:
    """A clock whose source can be swapped (the meter must answer before the agent's clock is known)."""

    def __init__(self, target: Clock) -> None:
        self.target = target

    def now(self) -> float:
        return self.target.now()

    async def sleep(self, seconds: float) -> None:
        await self.target.sleep(seconds)


class _Wire:
    """The devices' side: the home's LAN broker, the meter's and the truck's ptys, and the emitters.

    ``prepare()`` before the agents start (their ports must exist), ``start()`` once they run (the emitters wait
    for each agent's clock), ``stop()`` after the agents stopped.
    """

    def __init__(self, workdir: Path, speed: float, start: float) -> None:
        self.speed = speed
        self.start_sim = start
        self.dev = workdir / "dev"
        self.city_ca = workdir / "ca" / "ca.crt"
        self.lan = Mosquitto(workdir / "lan-mosquitto", persistence=False)
        household = {s.device_id: s for s in sim.household(HOME, SEED)}
        self.plugs = household_plugs([s for s in household.values() if isinstance(s, Plug)], HOME)
        self.appliances = appliances(self.plugs, HOME)
        meter = household[f"{HOME}-meter"]
        assert isinstance(meter, Meter)
        self.meter = meter
        truck = sim.truck(TRUCK, SEED)[0]
        assert isinstance(truck, GarbageTruck)
        self.truck = truck
        self.home_clock = _ClockProxy(AnchoredClock(start, time.time(), speed))
        self.meter_pty: PtyEmulator | None = None
        # home-003: PV, an EV charger (a real ocpp ChargePoint) and its meter, on home-003's clock
        site_meter = next(s for s in sim.household(SITE, SEED) if isinstance(s, Meter))
        self.site_clock = _ClockProxy(AnchoredClock(start + SITE_AHEAD_S, time.time(), speed))
        self.site = LiveSite(self.site_clock, house_w=SimulatedMeter(site_meter, self.site_clock).power_w)
        self.site_pty: PtyEmulator | None = None
        self.ocpp_port = _web_port(0)
        self.ledger_port = _web_port(0)
        self.ocpp_key = secrets.token_urlsafe(24)
        self.gnss_line: PtyLine | None = None
        self.plug_emitter: PlugEmitter | None = None
        self.nmea_emitter: NmeaEmitter | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def meter_port(self) -> str:
        return str(self.dev / f"{HOME}-bmeter")

    @property
    def site_meter_port(self) -> str:
        return str(self.dev / f"{SITE}-bmeter")

    @property
    def gnss_port(self) -> str:
        return str(self.dev / f"{TRUCK}-gnss")

    def prepare(self) -> None:
        """Start the LAN broker; open the ptys behind their stable names."""
        self.dev.mkdir(parents=True, exist_ok=True)
        self.lan.start()
        self.home_clock.target = AnchoredClock(self.start_sim, time.time(), self.speed)
        self.meter_pty = serve_meter(self.meter, self.home_clock, link=self.meter_port)
        self.site_clock.target = AnchoredClock(self.start_sim + SITE_AHEAD_S, time.time(), self.speed)
        self.site_pty = PtyEmulator(Scenario(), model=self.site.meter_model(), link=self.site_meter_port)
        self.gnss_line = PtyLine(self.gnss_port)

    def start(self, status: dict[str, Path]) -> None:
        """Run the emitters in a thread of their own, each on its agent's clock."""
        self._thread = threading.Thread(target=self._run, args=(status,), name="demo-wire", daemon=True)
        self._thread.start()

    def _run(self, status: dict[str, Path]) -> None:
        try:
            asyncio.run(self._main(status))
        except Exception as err:  # reported in the summary; the agents show the missing data
            self.error = err

    async def _main(self, status: dict[str, Path]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        home = await asyncio.to_thread(clock_of_agent, status[HOME], self.speed)
        self.home_clock.target = home
        self.plug_emitter = PlugEmitter(self.plugs, home, port=self.lan.port)
        truck = await asyncio.to_thread(clock_of_agent, status[TRUCK], self.speed)
        assert self.gnss_line is not None
        self.nmea_emitter = NmeaEmitter(self.truck, self.gnss_line, truck)  # 1 Hz simulated, like a receiver
        tasks = [asyncio.create_task(self.plug_emitter.run()), asyncio.create_task(self.nmea_emitter.run())]
        self.site_clock.target = await asyncio.to_thread(clock_of_agent, status[SITE], self.speed)
        url = f"ws://127.0.0.1:{self.ocpp_port}/ocpp/{SITE_CP}"
        tasks.append(asyncio.create_task(self.site.run(url, SITE_CP, self.ocpp_key)))
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Stop the emitters, close the ptys, stop the LAN broker (idempotent)."""
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        for closeable in (self.meter_pty, self.site_pty, self.gnss_line):
            if closeable is not None:
                closeable.close()
        self.lan.stop()

    def stats(self) -> dict[str, Any]:
        """What went over the wire."""
        emu = self.meter_pty.emulator if self.meter_pty is not None else None
        return {
            "plug_messages": self.plug_emitter.published if self.plug_emitter else 0,
            "meter_gets": emu.gets if emu is not None else 0,
            "nmea_epochs": self.nmea_emitter.epochs if self.nmea_emitter else 0,
            "ocpp_connects": self.site.connects,
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }


def _path_of(device: str) -> str:
    """The gateway driver kind a device's readings come through in the demo."""
    if device in STRAPS:
        return "ble"
    if device.startswith((f"{HOME}-meter", f"{SITE}-meter")):
        return "bmeter"
    if device == f"{TRUCK}-gnss":
        return "gnss"
    if device in PLUG_DEVICES:
        return "plugs"
    if device.startswith(f"{SITE_CP}-"):  # the charge point's connectors, through the central system
        return "ocpp"
    return "sim"


def _readings_by_path(configs: dict[str, AgentConfig]) -> dict[str, int]:
    """Raw readings in the gateways' stores, by the driver kind their device is read with."""
    out: dict[str, int] = {}
    for cfg in configs.values():
        conn = connect(cfg.db_path)
        try:
            rows = conn.execute(
                "SELECT s.device, count(*) FROM raw r JOIN series s ON s.id = r.series GROUP BY s.device"
            ).fetchall()
        finally:
            conn.close()
        for device, n in rows:
            path = _path_of(str(device))
            out[path] = out.get(path, 0) + int(n)
    return dict(sorted(out.items()))


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


WEB_PORT = 8080
NAVI_PORT = 8090


def _web_port(preferred: int = WEB_PORT) -> int:
    """``preferred`` (8080) when it is free, else any free loopback port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port for the household page")


def _start_web(config_path: Path, config: AgentConfig, procs: list[_Proc]) -> tuple[str, str]:
    """``kyojo web serve`` for the demo household (loopback only) and a one-time pairing code for it."""
    from edge_agent.web import auth

    port = _web_port()
    web = _spawn(
        "web",
        ["-m", "edge_agent", "web", "serve", "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)],
        config_path.parent / "web.log",
    )
    procs.append(web)
    conn = auth.connect(config.gateway.data_dir)
    try:
        code = auth.AuthStore(conn, code_ttl=config.web.code_ttl).new_code(role=auth.Role.ADMIN)
    finally:
        conn.close()
    return _listening(web, port, "the household page"), auth.format_code(code)


def _start_navi(influx_url: str, clock_now: float, speed: float, workdir: Path, procs: list[_Proc]) -> str:
    """``kyojo navi serve`` (the garbage-collection navigator, a cloud-side public page) for the demo truck's
    route, on the trucks' scaled clock (``clock_now``: their simulated time now)."""
    port = _web_port(NAVI_PORT)
    navi = _spawn(
        "navi",
        [
            "-m",
            "kyojo",
            "navi",
            "serve",
            "--points",
            str(COLLECTION_POINTS),
            "--truck",
            TRUCK,
            "--influx-url",
            influx_url,
            "--influx-db",
            DB,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dev-key",
            "--clock-start",
            repr(clock_now),
            "--clock-speed",
            repr(speed),
        ],
        workdir / "navi.log",
    )
    procs.append(navi)
    return _listening(navi, port, "the navigator")


def _listening(proc: _Proc, port: int, what: str, timeout: float = 30.0) -> str:
    """Wait until ``proc`` accepts connections on loopback ``port``; its URL (RuntimeError if it exits or not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.popen.returncode}; see {proc.name}.log")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return f"http://127.0.0.1:{port}/"
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start listening within {timeout:g} s")


def _start_notifier(influx_url: str, smtp_port: int, workdir: Path, procs: list[_Proc]) -> str:
    """``kyojo ingest notify`` (the city's watch-over notifier): the families' sign-up page, and the notices, mailed
    to the demo's mailbox; polls the accepted events every second."""
    port = _web_port(0)
    notify = _spawn(
        "notify",
        [
            "-m",
            "cloud_ingest",
            "notify",
            "--influx-url",
            influx_url,
            "--influx-db",
            DB,
            "--store",
            str(workdir / "notify.sqlite3"),
            "--smtp-port",
            str(smtp_port),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "1",
        ],
        workdir / "notify.log",
    )
    procs.append(notify)
    return _listening(notify, port, "the notifier")


#: a timed demo waits at most this long past ``duration`` for the watch-over notice and the safety answers
RESIDENTS_WAIT_S = 120.0


def _residents_shown(mailbox: residents.Mailbox, influx_url: str, declaration: str) -> bool:
    """The family has the watch-over notice, and the city has every home's answer to the declaration."""
    if not mailbox.notices():
        return False
    try:
        counts = residents.safety_counts(influx_url, DB, declaration, 1)
    except Exception:
        return False
    return bool(counts["areas"].get(residents.AREA, {}).get("answered") == len(HOMES))


def _trade_mine(config: Path) -> dict[str, Any]:
    """``kyojo trade mine`` on home-001: its own entries, read from the city's ledger with a request signed by its
    trading key and checked against what it signed (the household page's 電力の取引 does the same)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kyojo", "trade", "mine", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    return {"exit_code": proc.returncode, "account": lines[0] if lines else proc.stderr.strip()[-300:],
            "entries": max(0, len(lines) - 2)}  # fmt: skip


def _start_ledger_db(postgres: PostgreSQL, out: IO[str]) -> str | None:
    """The city's ledger database (None, said, when PostgreSQL cannot start: the rest of the demo stands)."""
    try:
        postgres.start()
        return postgres.create_database("kyojo_ledger")
    except Exception as err:
        print(f"trading day not run: PostgreSQL did not start: {type(err).__name__}: {err}", file=out, flush=True)
        return None


def _trading_day(
    workdir: Path,
    configs: dict[str, AgentConfig],
    consent_ids: dict[tuple[str, str], str],
    site: LiveSite,
    start: float,
    out: IO[str],
    db_url: str | None,
) -> dict[str, Any]:
    """Issue 18 section 2: the demo day's neighbour trades, slot by slot on a simulated clock (about two seconds):
    home-003, the PV home, offers half of its forecast surplus (its own car takes the rest); home-001's EV charger,
    standing in for a charging site, bids for a car charging 10:00-15:00; the city's matcher clears each slot before
    it begins and settles from both meters after it; the ledger (the demo's PostgreSQL at ``db_url``) verifies. Both
    sign with their gateways' own keys under their energy-trading consents (:mod:`kyojo.devstack.trading`)."""
    if db_url is None:
        return {"error": "no PostgreSQL (see the line above)"}
    from kyojo.devstack.trading import TradingParty, run_demo_trading_day

    day = datetime.fromtimestamp(start + 9 * 3600, tz=UTC).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() - 9 * 3600

    def surplus(slot: int) -> int:
        t0 = midnight + slot * 1800
        spare = sum(max(0.0, site.pv_w(t0 + 60 * m) - site.house_w(t0 + 60 * m)) for m in range(30)) / 60
        return int(spare / 2)

    def party(gw: str, price: int) -> TradingParty:
        return TradingParty(gw, configs[gw].gateway.data_dir, gw, consent_ids[(gw, "energy-trading")], price=price)

    try:
        return run_demo_trading_day(
            workdir / "trading",
            ca_dir=workdir / "ca",
            home=party(SITE, 18),
            site=party(HOME, 28),
            day=day,
            surplus=surplus,
            out=out,
            db_url=db_url,
        )
    except Exception as err:  # PostgreSQL missing or refusing: the rest of the demo stands; say so
        print(f"trading day not run: {type(err).__name__}: {err}", file=out, flush=True)
        return {"error": f"{type(err).__name__}: {err}"}


def _ev_surplus(config: AgentConfig, site: LiveSite) -> dict[str, Any]:
    """home-003's surplus loop as its gateway reports it (``kyojo agent status``), and what the site measured: PV
    energy, what went to the grid and came from it, what the car took."""
    st = _agent_status(config.status_path).get("ev_surplus") or {}
    txs = st.get("transactions") or {}
    return {
        "mode": st.get("mode"),
        "state": st.get("state"),
        "steps": st.get("steps", 0),
        "profiles_accepted": sum(int((t.get("counts") or {}).get("accepted", 0)) for t in txs.values()),
        "transactions": txs,
        "charge_point_connects": site.connects,
        "grid_import_wh": round(site.import_wh, 1),
        "grid_export_wh": round(site.export_wh, 1),
    }


def _jst(ts: float) -> str:
    return datetime.fromtimestamp(ts + 9 * 3600, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _navi_status(url: str) -> dict[str, Any]:
    """What the navigator's /api/status says about the demo route (points, collected), or the error."""
    try:
        with urllib.request.urlopen(url + "api/status", timeout=10) as resp:  # noqa: S310 - our own loopback URL
            doc = json.loads(resp.read())
    except (OSError, ValueError) as err:
        return {"error": str(err)}
    return {r["route"]: {"points": r["points_total"], "collected": r["collected"]} for r in doc.get("routes", [])}


def _agent_status(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def run_demo(*, workdir: Path, duration: float | None, speed: float, out: IO[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary whose JSON is the last line ``kyojo demo`` prints."""
    out = out or sys.stdout
    ensure_installed(
        ("mosquitto", "influxdb", "postgresql"), install=os.geteuid() == 0 and shutil.which("apt-get") is not None
    )
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    procs: list[_Proc] = []
    stack = LocalStack(workdir / "services")
    start = _morning_jst(time.time())
    wire = _Wire(workdir, speed, start)
    mailbox = residents.Mailbox(workdir / "mail")
    postgres = PostgreSQL(workdir / "trading" / "postgres")
    stack.start()
    try:
        wire.prepare()
        stack.influxdb.create_database(DB)
        port = stack.mosquitto.port
        ca = residents.city_ca(workdir / "ca")
        print("watch-over: replaying six weeks of home-002's life so its gateway knows the rhythm ...", file=out)
        alone = residents.seed_watchover(workdir / residents.ALONE / "data", start, SEED)
        configs = {}
        for gw, spec in GATEWAYS.items():
            path = workdir / gw / "agent.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_gateway_toml(gw, spec, port, speed, start, wire, alone), encoding="utf-8")
            configs[gw] = load_config(path)
        granted = datetime.fromtimestamp(min(start, alone.start), tz=UTC)
        consent_ids: dict[tuple[str, str], str] = {}
        for gw, purpose, subject in CONSENTS:
            conn = connect(configs[gw].db_path)
            try:
                given = consent.open_store(configs[gw], conn).grant(purpose, subject, now=granted)
            finally:
                conn.close()
            consent_ids[(gw, purpose)] = given.id
        # the day's neighbour trades, on the city's ledger in PostgreSQL; its read API serves home-001's page
        ledger_db = _start_ledger_db(postgres, out)
        trading = _trading_day(workdir, configs, consent_ids, wire.site, start, out, ledger_db)
        if ledger_db is not None:
            procs.append(
                _spawn(
                    "ledger-http",
                    ["-m", "kyojo", "ledger", "serve-http", "--db", ledger_db, "--port", str(wire.ledger_port)],
                    workdir / "ledger-http.log",
                )
            )
        group = f"kyojo-demo-{secrets.token_hex(8)}"  # a secret $share group, as in a deployment
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
                "--group",
                group,
                "--stats-interval",
                "1",
            ],
            workdir / "ingester.log",
            capture=True,
        )
        procs.append(ingester)
        # the eraser, so a withdrawal in the demo really erases and the household's gateway gets its receipt
        procs.append(
            _spawn(
                "eraser",
                [
                    "-m",
                    "cloud_ingest",
                    "erasure",
                    "--broker-port",
                    str(port),
                    "--influx-url",
                    stack.influxdb.url,
                    "--influx-db",
                    DB,
                    "--stats-interval",
                    "5",
                ],
                workdir / "eraser.log",
            )
        )
        agents_at = time.time()  # the agents' scaled clocks start at `start` about now
        for gw in GATEWAYS:
            cfg_path = workdir / gw / "agent.toml"
            procs.append(
                _spawn(gw, ["-m", "edge_agent", "agent", "run", "--config", str(cfg_path)], workdir / gw / "agent.log")
            )
        wire.start({gw: cfg.status_path for gw, cfg in configs.items()})
        web_url, web_code = _start_web(workdir / HOME / "agent.toml", configs[HOME], procs)
        print(
            f"kyojo demo: broker 127.0.0.1:{port}, InfluxDB {stack.influxdb.url} (db {DB}), "
            f"simulated clock x{speed:g}; home LAN broker 127.0.0.1:{wire.lan.port} (plugs), "
            f"meter on {wire.meter_port}, truck GNSS on {wire.gnss_port}; Ctrl-C stops everything.",
            file=out,
            flush=True,
        )
        print(
            f"household page: {web_url}  (pairing code {web_code}; sign in on a phone or browser, "
            "Japanese first, English at the top right)",
            file=out,
            flush=True,
        )
        navi_url = _start_navi(stack.influxdb.url, start + (time.time() - agents_at) * speed, speed, workdir, procs)
        print(
            f"garbage-collection navigator: {navi_url}  (the public page of {TRUCK}'s round; no sign-in, "
            "Japanese first)",
            file=out,
            flush=True,
        )
        mailbox.start()
        notify_url = _start_notifier(stack.influxdb.url, mailbox.port, workdir, procs)
        code = family_code(configs[residents.ALONE].gateway.data_dir, residents.PERSON)
        signed_up = residents.family_signup(notify_url, code, mailbox)
        print(
            f"watch-over (見守り): {residents.ALONE} is {residents.PERSON}, living alone; its gateway learned the "
            f"home's rhythm, and nothing has been switched on there since {_jst(alone.quiet[0])} JST. Their family "
            f"({residents.FAMILY}) signed up on the notifier page {notify_url} with the family code and "
            f"{'confirmed' if signed_up else 'did NOT confirm'}; notices land in {mailbox.dir}",
            file=out,
            flush=True,
        )
        decl_path = workdir / "ca" / "declaration.json"
        issued = min(start, alone.start)  # the gateways' simulated clocks, not the wall clock
        declaration = residents.declare(ca, decl_path, issued_at=issued)
        # home-001's 「無事です」 (what its page's button calls), in time for its first answer
        home_now = start + (time.time() - agents_at) * speed
        press(configs[HOME].gateway.data_dir, safe=True, check_on_us=False, now=home_now)
        residents.publish_declaration(decl_path, port, workdir / "declare.log")
        print(
            f"disaster (安否確認): the city declared {declaration} for {residents.AREA} (signed by the demo city CA, "
            f"{workdir / 'ca'}); {HOME} pressed 「無事です」 on its page; homes that gave disaster-safety answer",
            file=out,
            flush=True,
        )
        print(
            f"EV on the sun: {SITE} has PV and an EV charger ({SITE_CP}, a real ocpp ChargePoint on its gateway's "
            f"central system); its gateway steers the car into the surplus. See it: kyojo agent status -c "
            f"{workdir / SITE / 'agent.toml'}",
            file=out,
            flush=True,
        )
        print(_analyst_hint(stack.influxdb.url, start, speed, time.time()), file=out, flush=True)
        deadline = None if duration is None else time.monotonic() + duration
        told = 0
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(1.0)
                for p in procs:
                    if p.popen.poll() is not None:
                        raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; see its log in {workdir}")
                print(_progress(configs, ingester), file=out, flush=True)
                for mail in mailbox.summary()[told:]:
                    print(f"family mail to {mail['to']}: {mail['subject']}", file=out, flush=True)
                    told += 1
            if duration is not None:  # a timed run (CI) ends once the residents' services have shown themselves
                end = time.monotonic() + RESIDENTS_WAIT_S
                while not _residents_shown(mailbox, stack.influxdb.url, declaration) and time.monotonic() < end:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping ...", file=out, flush=True)
        navigator = _navi_status(navi_url)
        if "error" not in trading:  # what home-001's page shows under 電力の取引, checked as the page checks it
            trading["household_view"] = _trade_mine(workdir / HOME / "agent.toml")
        for p in procs:  # everything but the ingester, which first writes what the gateways sent
            if p is ingester:
                continue
            _stop(p)
        wire.stop()
        _settle(configs, ingester)
        _stop(ingester)
        summary = _summary(configs, ingester)
        summary["readings_by_path"] = _readings_by_path(configs)
        summary["wire"] = wire.stats()
        summary["household_page"] = web_url
        summary["navigator_page"] = navi_url
        summary["navigator"] = navigator
        points = stack.influxdb.query_rows('SELECT count("last") FROM /.*/', DB)
        summary["points_in_influxdb"] = int(sum(int(r.get("count", 0) or 0) for r in points))
        events = stack.influxdb.query_rows('SELECT count("event_id") FROM "events"', DB)
        summary["events_in_influxdb"] = int(sum(int(r.get("count", 0) or 0) for r in events))
        summary["watchover"] = {
            "home": residents.ALONE,
            "nothing_switched_on_from": _jst(alone.quiet[0]),
            "absence_due": None if alone.absence_at is None else _jst(alone.absence_at),
            "family_signed_up": signed_up,
            "notifier_page": notify_url,
            "processor": _agent_status(configs[residents.ALONE].status_path).get("processors", {}).get("watchover"),
        }
        summary["mail"] = mailbox.summary()
        summary["ev_surplus"] = _ev_surplus(configs[SITE], wire.site)
        summary["trading"] = trading
        summary["safety"] = residents.safety_counts(stack.influxdb.url, DB, declaration, SAFETY_K)
        print(
            f"the demo's InfluxDB stops with it (its files stay in {workdir / 'services'}); to query, run the demo "
            "again and use the 'analyst' lines it prints while it runs",
            file=out,
            flush=True,
        )
        return summary
    finally:
        for p in procs:
            _stop(p, timeout=5)
        wire.stop()
        mailbox.stop()
        postgres.stop()
        stack.stop()


def demo_window(start_sim: float, speed: float, now: float, hours: float = 24.0) -> tuple[str, str]:
    """One ``--since``/``--until`` for the whole demo: its gateways' data runs on the simulated clock (from
    ``start_sim``, ``speed`` times faster than real time, so it soon lies in the future), the ingesters' own stats
    on wall time (from ``now``). The window spans both for ``hours`` of real running."""
    since = min(start_sim, now) // 60 * 60
    until = max(start_sim + hours * 3600 * speed, now + hours * 3600)
    fmt = "%Y-%m-%dT%H:%MZ"
    return (
        datetime.fromtimestamp(since, tz=UTC).strftime(fmt),
        datetime.fromtimestamp(-(-until // 60) * 60, tz=UTC).strftime(fmt),
    )


def _analyst_hint(url: str, start_sim: float, speed: float, now: float) -> str:
    """What an analyst runs while the demo runs: ``kyojo query`` (no other client needed) on one window."""
    since, until = demo_window(start_sim, speed, now)
    env = f"KYOJO_INFLUX_URL={url} KYOJO_INFLUX_DB={DB}"
    window = f"--since {since} --until {until}"
    return (
        "analyst (while the demo runs; one window covers the simulated data and the ingester's stats):\n"
        f"  {env} kyojo query energy.whole_vs_appliances {window} --format csv\n"
        f"  {env} kyojo query platform.ingest_rate {window} --plot ingest.png"
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
    tot = {
        "readings": 0,
        "aggregates_queued": 0,
        "aggregates_sent": 0,
        "outbox_depth": 0,
        "denied": 0,
        "events": 0,
        "events_sent": 0,
        "events_released": 0,
    }
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
        "events": t["events"],
        "events_released": t["events_released"],
        "events_sent": t["events_sent"],
        "points_written": int(ing.get("written", 0)),
        "rejected": int(sum(rejected.values())) if isinstance(rejected, dict) else 0,
        "rejected_by_cause": rejected,
    }

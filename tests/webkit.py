"""The household web app's test harness: a real home, the web server, and real headless Chromium.

- :class:`Home`: one household gateway as it runs in a home, all real parts: the agent (``edge_agent.agent.Agent``,
  in a thread of the test process, on a scaled clock) publishing to a real Mosquitto; its heart-rate straps are
  Bumble virtual GATT peripherals inside the agent (``backend = "virtual"``), its plugs publish Tasmota/Shelly/
  Zigbee2MQTT JSON to a second ("LAN") Mosquitto, its whole-home meter is the emulated BP35A1 Wi-SUN module on a
  pty; the BP cuff and the oximeter are the ``kind = "sim"`` driver (as in ``kyojo demo``); the ``health`` and
  ``nilm`` processors run. The config is a TOML file (``home.config_path``) as the web app reads it.
- :class:`WebServer`: ``edge_agent.web.app.create_app(config_path)`` under uvicorn on a free loopback port, in a
  thread (``.url``).
- Playwright on Debian's ``/usr/bin/chromium`` (never a browser download): the ``browser`` fixture (one Chromium for
  the session, closed at its end), ``phone`` (390x844, touch, ``ja-JP``) and ``desktop`` (1280x800, ``ja-JP``)
  pages, each in a context of its own that the fixture closes. ``sign_in(page, web, home)`` pairs the page's
  context with a one-time code from ``kyojo web pair-code`` (the first device becomes the admin).
- :func:`axe_violations` runs axe-core (vendored, tests/web/vendor/) in the page and returns the serious and
  critical violations; :func:`screenshot` writes ``docs/img/<name>.png`` (with ``KYOJO_SCREENSHOTS=1``).

Fixtures (registered for tests/web/ by tests/web/conftest.py): ``home`` (a live home for the module),
``fresh_home`` (one per test), ``seeded_home`` (for the module: a home whose database is a copy of six days
seeded once per session, see tests/household.py, with the agent running on it), ``web`` / ``seeded_web``,
``browser``, ``phone``, ``desktop``.
Every fixture stops what it started: Chromium, the Playwright driver, uvicorn, the agent, both brokers, the pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest

from drivers import sim
from drivers.meter.emulator import PWD, RBID, PtyEmulator
from drivers.sim.emit.meter import serve_meter
from drivers.sim.emit.plugs import PlugEmitter, appliances, household_plugs, wait_connected
from drivers.sim.energy import Meter, Plug
from edge_agent.config import AgentConfig, load_config
from edge_agent.db import connect
from provisioning.local import Mosquitto
from tests.agentkit import Collector, run_agent_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("KYOJO_CHROMIUM", "/usr/bin/chromium"))
#: Chromium flags for a headless run in a container, with nothing phoning home
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
AXE = ROOT / "tests" / "web" / "vendor" / "axe.min.js"
IMG = ROOT / "docs" / "img"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

HOME_ID = "home-001"
SEED = 7
#: heart-rate straps on the virtual BLE backend: device id -> (BD_ADDR, subject)
STRAPS = {f"{HOME_ID}-p1-hr": ("C0:4B:00:00:01:01", "p1"), f"{HOME_ID}-p2-hr": ("C0:4B:00:00:02:01", "p2")}
#: devices the ``kind = "sim"`` driver plays (no real path for them yet, as in ``kyojo demo``)
SIM_ONLY = [f"{HOME_ID}-p1-bp", f"{HOME_ID}-p2-spo2"]
METER_POLL_S = 10


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy (returned) or ``timeout`` s pass (AssertionError)."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------------------
# The home
# ------------------------------------------------------------------------------------------------------------


class _ClockProxy:
    """The emitters' clock: an estimate until the agent runs, then the agent's own clock object."""

    def __init__(self, start: float, speed: float) -> None:
        self.start, self.speed, self.wall = start, speed, time.time()
        self.target: Any = None

    def now(self) -> float:
        if self.target is not None:
            return float(self.target.now())
        return self.start + (time.time() - self.wall) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


def home_toml(
    *,
    data_dir: Path,
    broker_port: int,
    lan_port: int,
    meter_port: str,
    speed: float,
    start: float,
    simulated: bool = True,
) -> str:
    """The gateway config of the test home (the same shape as ``kyojo demo``'s household). ``simulated=False``
    leaves out the ``kind = "sim"`` device and the virtual BLE backend: a config as a real home has it."""
    household = {s.device_id: s for s in sim.household(HOME_ID, SEED)}
    plug_map = appliances(household_plugs([s for s in household.values() if isinstance(s, Plug)], HOME_ID), HOME_ID)
    table = "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in plug_map.items()) + " }"
    only = ", ".join(json.dumps(d) for d in SIM_ONLY)
    sim_entry = f"""
[[devices]]
kind = "sim"
profile = "household"
id = "{HOME_ID}"
seed = {SEED}
persons = ["p1", "p2"]
only = [{only}]
"""
    text = f"""[gateway]
id = "{HOME_ID}"
profile = "home"
data_dir = {json.dumps(str(data_dir))}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min = 0.1
reconnect_max = 0.5

[store]
commit_interval = 0.2

[clock]
speed = {speed}
start = {start}
{sim_entry if simulated else ""}"""
    for dev, (address, subject) in STRAPS.items():
        text += f"""
[[devices]]
kind = "ble"
id = "{dev}"
address = "{address}"
profile = "heart_rate"
subject = "{subject}"
"""
        if simulated:
            text += f"""backend = "virtual"
sim_seed = {SEED}
"""
    text += f"""
[[devices]]
kind = "plugs"
id = "{HOME_ID}-plugs"
household = "{HOME_ID}"
broker_port = {lan_port}
appliances = {table}

[[devices]]
kind = "bmeter"
id = "{HOME_ID}-meter"
household = "{HOME_ID}"
serial_port = {json.dumps(meter_port)}
rbid = "{RBID}"
password = "{PWD}"
poll_interval = {METER_POLL_S}
scan_durations = [4]

[[processors]]
kind = "health"
profile = "japan"

[[processors]]
kind = "nilm"
meter = "{HOME_ID}-meter"
subject = "{HOME_ID}"
plugs = {{ "{HOME_ID}-kettle" = "kettle", "{HOME_ID}-washer" = "washing_machine" }}
"""
    return text


class Home:
    """A household gateway with its devices, all real parts (see the module docstring).

    ``start()`` opens the LAN broker and the meter's pty, writes ``agent.toml``, runs the agent, then the plug
    emitter on the agent's clock; ``stop()`` undoes all of it (idempotent). ``run_agent=False`` prepares the
    config and the devices' side only (a test may then seed the database first and call :meth:`start_agent`).
    """

    def __init__(self, root: Path, broker: Mosquitto, *, speed: float = 20.0, start: float | None = None) -> None:
        self.root = root
        self.broker = broker
        self.speed = speed
        self.start_at = time.time() if start is None else start
        self.data_dir = root / "data"
        self.config_path = root / "agent.toml"
        self.lan = Mosquitto(root / "lan-mosquitto", persistence=False)
        self.clock = _ClockProxy(self.start_at, speed)
        self.meter_pty: PtyEmulator | None = None
        self.agent: Any = None
        self._stop_agent: Callable[[], None] | None = None
        self._emit_loop: asyncio.AbstractEventLoop | None = None
        self._emit_thread: threading.Thread | None = None
        self._emit_task: asyncio.Task[None] | None = None
        self.emitter: PlugEmitter | None = None
        self._cloud: Any = None
        household = {s.device_id: s for s in sim.household(HOME_ID, SEED)}
        meter = household[f"{HOME_ID}-meter"]
        assert isinstance(meter, Meter)
        self.meter = meter
        self.plugs = household_plugs([s for s in household.values() if isinstance(s, Plug)], HOME_ID)

    @property
    def config(self) -> AgentConfig:
        return load_config(self.config_path)

    def prepare(self) -> None:
        """The devices' side and the config file, without the agent."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.lan.start()
        link = str(self.root / f"{HOME_ID}-bmeter")
        self.meter_pty = serve_meter(self.meter, self.clock, link=link)
        self.config_path.write_text(
            home_toml(
                data_dir=self.data_dir,
                broker_port=self.broker.port,
                lan_port=self.lan.port,
                meter_port=link,
                speed=self.speed,
                start=self.start_at,
            ),
            encoding="utf-8",
        )

    def start_agent(self) -> None:
        from edge_agent.agent import Agent

        cfg = self.config
        # a subscriber standing for the city: a release nobody subscribed to is answered 0x10 and stays queued
        self._cloud = Collector(self.broker.port, f"kyojo/v1/{cfg.gateway.id}/#", client_id=f"cloud-{self.root.name}")
        _, self._stop_agent, holder = run_agent_in_thread(lambda: Agent(cfg))
        self.agent = holder[0]
        self.clock.target = self.agent.clock
        self._emit_loop = asyncio.new_event_loop()
        self.emitter = PlugEmitter(self.plugs, self.agent.clock, port=self.lan.port)
        ready = threading.Event()

        def run() -> None:
            loop = self._emit_loop
            assert loop is not None and self.emitter is not None
            asyncio.set_event_loop(loop)
            self._emit_task = loop.create_task(self.emitter.run())
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._emit_task)
            loop.close()

        self._emit_thread = threading.Thread(target=run, name="home-plugs", daemon=True)
        self._emit_thread.start()
        ready.wait(10)
        asyncio.run_coroutine_threadsafe(wait_connected(self.emitter), self._emit_loop).result(15)

    def start(self) -> Home:
        self.prepare()
        self.start_agent()
        return self

    def stop_agent(self) -> None:
        if self._emit_loop is not None and self._emit_task is not None:
            with contextlib.suppress(RuntimeError):
                self._emit_loop.call_soon_threadsafe(self._emit_task.cancel)
        if self._emit_thread is not None:
            self._emit_thread.join(15)
            assert not self._emit_thread.is_alive(), "plug emitter did not stop"
        self._emit_thread = self._emit_task = self._emit_loop = None
        if self._stop_agent is not None:
            stop, self._stop_agent = self._stop_agent, None
            stop()
        if self._cloud is not None:
            cloud, self._cloud = self._cloud, None
            cloud.close()
        self.clock.target = None

    def stop(self) -> None:
        try:
            self.stop_agent()
        finally:
            if self.meter_pty is not None:
                self.meter_pty.close()
                self.meter_pty = None
            self.lan.stop()

    def __enter__(self) -> Home:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the agent sees --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.config.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows from the gateway database (a connection of its own, closed after)."""
        conn = connect(self.config.db_path)
        try:
            return list(conn.execute(sql, args).fetchall())
        finally:
            conn.close()

    def devices_reading(self) -> set[str]:
        """Devices with at least one raw reading committed."""
        return {str(r[0]) for r in self.query("SELECT DISTINCT s.device FROM raw r JOIN series s ON s.id = r.series")}

    def wait_devices(self, timeout: float = 60.0) -> set[str]:
        """Wait until the straps, the plugs and the meter have each delivered readings through their drivers."""
        want = {*STRAPS, f"{HOME_ID}-meter", *(w.plug.device_id for w in self.plugs)}
        wait_for(f"readings from {sorted(want)}", lambda: want <= self.devices_reading(), timeout, 0.2)
        return self.devices_reading()


# ------------------------------------------------------------------------------------------------------------
# The web server
# ------------------------------------------------------------------------------------------------------------


class AppServer:
    """An ASGI app under uvicorn on a free loopback port, in a thread; ``stop()`` ends it. (:class:`WebServer` for
    the household page; the navigator's tests serve ``cloud_ingest.navi.app.create_app(...)`` with it.)"""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="auto")
        )
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    def start(self) -> Self:
        self.thread.start()
        wait_for("the web server to listen", lambda: self.server.started, 20)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WebServer(AppServer):
    """``create_app(config_path)`` (the household page) under uvicorn on a free loopback port, in a thread."""

    def __init__(self, config_path: Path, *, port: int | None = None) -> None:
        from edge_agent.web.app import create_app

        self.config_path = config_path
        super().__init__(create_app(config_path), port=port)


def pair_code(config_path: Path, *, member: bool = False) -> str:
    """A one-time pairing code from ``kyojo web pair-code -c CONFIG`` (its stdout: ``1234 5678``)."""
    kyojo = Path(sys.executable).with_name("kyojo")
    out = subprocess.run(
        [str(kyojo), "web", "pair-code", "-c", str(config_path), *(["--member"] if member else [])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert re.fullmatch(r"[0-9 ]{8,}", out), f"kyojo web pair-code printed {out!r}"
    return out


def sign_in(page: Page, web: WebServer, code: str | None = None) -> None:
    """Sign ``page``'s context in: the pairing form of /signin with a fresh one-time code."""
    page.goto(web.url + "/signin")
    page.locator("input[name=code]").fill(code or pair_code(web.config_path))
    page.locator('form[action="/signin"] [type=submit]').click()
    page.wait_for_url(lambda url: "/signin" not in url, timeout=15_000)


# ------------------------------------------------------------------------------------------------------------
# The browser
# ------------------------------------------------------------------------------------------------------------


def launch(pw: Playwright) -> Browser:
    """Debian's Chromium, headless, through Playwright (``executable_path``: no browser download ever)."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def new_page(browser: Browser, kind: str = "phone", *, lang: str = "ja") -> tuple[BrowserContext, Page]:
    """A page in a context of its own: ``phone`` (390x844, touch) or ``desktop`` (1280x800); ``lang`` ja or en."""
    locale = {"ja": "ja-JP", "en": "en-US"}[lang]
    opts: dict[str, Any] = {"locale": locale, "timezone_id": "Asia/Tokyo"}
    if kind == "phone":
        opts |= {"viewport": PHONE, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
    else:
        opts |= {"viewport": DESKTOP}
    ctx = browser.new_context(**opts)
    ctx.set_default_timeout(15_000)
    return ctx, ctx.new_page()


@dataclass(frozen=True)
class Violation:
    id: str
    impact: str
    help: str
    targets: list[str]

    def __str__(self) -> str:
        return f"{self.impact} {self.id}: {self.help} at {', '.join(self.targets[:5])}"


@functools.cache
def _axe_source() -> str:
    return AXE.read_text(encoding="utf-8") + "\n;void 0"


def axe_violations(page: Page, *, impacts: tuple[str, ...] = ("serious", "critical")) -> list[Violation]:
    """Run axe-core (WCAG 2.x A/AA rules and best practices) on the page; the violations of these impacts."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # through the DevTools protocol, not a <script> tag: the app's CSP (script-src 'self') stays in force
        page.evaluate(_axe_source())
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        Violation(v["id"], v["impact"], v["help"], [", ".join(n["target"]) for n in v["nodes"]])
        for v in result["violations"]
        if v.get("impact") in impacts
    ]


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save ``<name>.png`` (e.g. ``energy-ja-phone``): into docs/img/ when ``KYOJO_SCREENSHOTS=1`` (to refresh
    the README's pictures), else into a scratch folder, so a test run leaves the checkout unchanged."""
    folder = IMG if os.environ.get("KYOJO_SCREENSHOTS") == "1" else Path(tempfile.gettempdir()) / "kyojo-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


def set_lang(page: Page, web: WebServer, lang: str) -> None:
    """Choose the page's language as the language switch does (the ``kyojo_lang`` cookie)."""
    page.context.add_cookies([{"name": "kyojo_lang", "value": lang, "url": web.url}])


def page_screenshots(web: WebServer, browser: Browser, path: str, name: str, lang: str, *, ready: str) -> None:
    """``<name>-<lang>-<phone|desktop>.png`` of one page, signed in, once ``ready`` (a JS expression) holds."""
    for kind in ("phone", "desktop"):
        ctx, page = new_page(browser, kind, lang=lang)
        try:
            sign_in(page, web)
            set_lang(page, web, lang)
            page.goto(web.url + path)
            page.wait_for_function(ready)
            assert page.locator("html").get_attribute("lang") == lang
            screenshot(page, f"{name}-{lang}-{kind}")
        finally:
            ctx.close()


# ------------------------------------------------------------------------------------------------------------
# Fixtures (tests/web/conftest.py imports these)
# ------------------------------------------------------------------------------------------------------------


# Module scope, not session: while Playwright's sync API is started it keeps an asyncio loop running on the main
# thread, and a later module's test that calls asyncio.run() (tests/web/test_web_devices.py) would fail inside it.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """One headless Chromium for the whole session (each test gets contexts of its own)."""
    b = launch(playwright_driver)
    try:
        yield b
    finally:
        b.close()


def _page(browser: Browser, kind: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    lang = getattr(request, "param", "ja")
    ctx, page = new_page(browser, kind, lang=lang)
    try:
        yield page
    finally:
        ctx.close()


@pytest.fixture
def phone(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A phone-sized page (390x844, touch, ja-JP; parametrize indirectly with "en" for English)."""
    yield from _page(browser, "phone", request)


@pytest.fixture
def desktop(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A desktop-sized page (1280x800, ja-JP; parametrize indirectly with "en" for English)."""
    yield from _page(browser, "desktop", request)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[Home]:
    """A live home shared by the tests of one module (agent running, devices reading)."""
    with Home(tmp_path_factory.mktemp("home"), mosquitto) as h:
        yield h


@pytest.fixture
def fresh_home(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Home]:
    """A live home of this test's own."""
    with Home(tmp_path / "home", mosquitto) as h:
        yield h


@pytest.fixture(scope="session")
def seeded_month(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Path:
    """A gateway data dir (database, keys, NILM state) holding six seeded days of the household (tests/household.py),
    made once per session and copied by each ``seeded_home``. Six days: p1's home blood pressure needs five days
    for its guideline, p2's SpO2 episode is three days back."""
    from tests.household import seed_household

    root = tmp_path_factory.mktemp("seeded-month")
    config = root / "agent.toml"
    config.write_text(
        home_toml(
            data_dir=root / "data",
            broker_port=mosquitto.port,
            lan_port=free_port(),
            meter_port=str(root / "meter-pty"),
            speed=1.0,
            start=time.time(),
        ),
        encoding="utf-8",
    )
    seed_household(config, days=6)
    return root / "data"


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto, seeded_month: Path) -> Iterator[Home]:
    """A home whose gateway data is a copy of ``seeded_month``, with its agent running on it (for the module)."""
    h = Home(tmp_path_factory.mktemp("seeded-home"), mosquitto, speed=1.0)
    h.prepare()
    try:
        shutil.copytree(seeded_month, h.data_dir)
        h.start_agent()
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def web(home: Home) -> Iterator[WebServer]:
    with WebServer(home.config_path) as server:
        yield server


@pytest.fixture(scope="module")
def seeded_web(seeded_home: Home) -> Iterator[WebServer]:
    with WebServer(seeded_home.config_path) as server:
        yield server

"""The devices page's scan/pair job service (edge_agent/web/pairing.py) against real parts.

BLE: Bumble virtual peripherals (real advertising, LE connections, GATT discovery, SMP pairing) reached through
``drivers.ble.pair.backend_factory``, the one substitution ``kyojo pair``'s own tests make. Plugs: the plug emulator
(``drivers.sim.emit.plugs.PlugEmitter``, Tasmota JSON) publishing to a real Mosquitto that the gateway config names
as the LAN broker; the scan listens with the agent's own plugs driver. Jobs are polled with a deadline, never slept on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bumble import pairing as bumble_pairing

from drivers.ble import pair, paired
from drivers.ble.transport import BleBackend
from drivers.clock import SystemClock
from drivers.plugs import pairing as plug_pairing
from drivers.sim.emit.plugs import PlugEmitter, PlugWire, wait_connected
from drivers.sim.energy import Plug
from drivers.sim.virtual_ble import VirtualAir
from edge_agent.config import load_config
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from edge_agent.web.pairing import Job, PairingProblem, PairingService, ProblemKind, _last_readings, labels
from kyojo.contract.vocab import Reading
from provisioning.local import Mosquitto

STRAP = "C0:00:00:00:16:01"
CUFF = "C0:00:00:00:16:02"
SHY = "C0:00:00:00:16:03"  # a cuff outside its pairing mode
PINNED = "C0:00:00:00:16:04"  # a cuff whose pairing fails on the key check (what a wrong PIN does)
ABSENT = "C0:00:00:00:16:09"
HOME = "home-w"
KETTLE_KEY = "tasmota:kettle_5A3C"


class _WrongPin(bumble_pairing.PairingDelegate):
    """The peripheral side rejects the key check: SMP "Confirm Value Failed", which a mistyped passkey gives."""

    async def confirm(self, auto: bool = False) -> bool:
        return False

    async def compare_numbers(self, number: int, digits: int) -> bool:
        return False


@dataclass
class Radio:
    """What the virtual radio of the next pairing job holds (a fresh in-process radio per job, as per command)."""

    devices: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    wrong_pin: set[str] = field(default_factory=set)
    powered: bool = True


@pytest.fixture
def radio(monkeypatch: pytest.MonkeyPatch) -> Radio:
    state = Radio()

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[BleBackend | None]:
        air = VirtualAir()
        try:
            for address, profile, kw in state.devices:
                p = await air.add(address, profile, **kw)  # type: ignore[arg-type]
                if address in state.wrong_pin:
                    p.device.pairing_config_factory = lambda _c: bumble_pairing.PairingConfig(delegate=_WrongPin())
            air.powered = state.powered
            yield air.backend()
        finally:
            await air.close()

    monkeypatch.setattr(pair, "backend_factory", factory)
    return state


def write_config(tmp_path: Path, broker_port: int | None = None, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    text = f'[gateway]\nid = "{HOME}"\ndata_dir = "data"\n'
    if broker_port is not None:
        text += (
            f'[[devices]]\nkind = "plugs"\nid = "{HOME}-plugs"\nhousehold = "{HOME}"\nbroker_port = {broker_port}\n'
            'appliances = { "tasmota:tv_plug" = "tv" }\n'
        )
    path.write_text(text + extra, encoding="utf-8")
    (tmp_path / "data").mkdir(exist_ok=True)
    return path


@pytest.fixture
def web_db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "web.db", isolation_level=None, check_same_thread=False)
    yield conn
    conn.close()


async def finished(job: Job, within: float = 20.0) -> Job:
    deadline = time.monotonic() + within
    while job.running:
        assert time.monotonic() < deadline, f"job {job.what} still running after {within}s"
        await asyncio.sleep(0.02)
    return job


async def until(cond: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.02)


def run(coro: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` in a thread of its own: Playwright's sync API (the browser tests of this session) keeps an
    event loop running in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


# ------------------------------------------------------------------------------------------------------------
# scan
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_scan_reports_ble_devices_and_plugs_while_it_runs(
    radio: Radio, tmp_path: Path, web_db: sqlite3.Connection, fresh_mosquitto: Mosquitto
) -> None:
    radio.devices = [(STRAP, "heart_rate", {"name": "Polar H10"}), (CUFF, "blood_pressure", {"name": "BP7000"})]
    config = write_config(tmp_path, fresh_mosquitto.port)
    plug = Plug(f"{HOME}-kettle", HOME, 7, appliance="kettle", period_s=1.0)
    emitter = PlugEmitter([PlugWire(plug, "tasmota", "kettle_5A3C")], SystemClock(), port=fresh_mosquitto.port)

    async def main() -> None:
        service = PairingService(config, web_db, scan_s=4.0)
        em = asyncio.create_task(emitter.run())
        try:
            await wait_connected(emitter)
            job = service.start_scan()
            assert service.start_scan() is job  # a second phone joins the running scan
            # live progress: both straps and the plug show up before the scan's time is over
            await until(lambda: {STRAP, CUFF, KETTLE_KEY} <= set(job.found), within=8.0, what="all three found")
            assert job.running
            assert 0.0 <= job.progress() < 1.0
            await finished(job)
        finally:
            em.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await em
        assert job.state == "done", job.problem
        strap = job.found[STRAP]
        assert (strap.kind, strap.name, strap.profiles) == ("ble", "Polar H10", ("heart_rate",))
        assert isinstance(strap.rssi, int)
        assert job.found[CUFF].profiles == ("blood_pressure",)
        kettle = job.found[KETTLE_KEY]
        assert (kettle.kind, kettle.family, kettle.paired_as) == ("plug", "tasmota", None)
        assert [c.kind for c in job.candidates()][:2] == ["ble", "ble"]
        assert job.plugs_note is None
        # the web process listens only: the agent's discovery file is not written by it
        assert not list((tmp_path / "data").glob("plugs-*.json"))

    run(main())


def test_scan_with_the_adapter_off_says_so_and_a_gateway_without_plugs_says_that(
    radio: Radio, tmp_path: Path, web_db: sqlite3.Connection
) -> None:
    radio.devices = [(STRAP, "heart_rate", {})]
    radio.powered = False
    config = write_config(tmp_path)

    async def main() -> None:
        job = await finished(PairingService(config, web_db, scan_s=0.3).start_scan())
        assert job.state == "failed"
        assert job.problem is not None and job.problem.kind is ProblemKind.no_adapter
        assert job.plugs_note is ProblemKind.no_plugs

    run(main())


# ------------------------------------------------------------------------------------------------------------
# pair, name, assign, remove
# ------------------------------------------------------------------------------------------------------------


def test_pair_a_strap_and_a_bonding_cuff_name_assign_and_remove(
    radio: Radio, tmp_path: Path, web_db: sqlite3.Connection
) -> None:
    radio.devices = [
        (STRAP, "heart_rate", {"name": "Polar H10"}),
        (CUFF, "blood_pressure", {"name": "BP7000", "security": "bond"}),
    ]
    config = write_config(tmp_path)
    data = tmp_path / "data"

    async def main() -> None:
        service = PairingService(config, web_db, find_within=3.0)
        job = await finished(service.start_pair(STRAP.lower(), "p1", label="心拍ベルト"))
        assert job.state == "done", job.problem
        assert job.device_id == "heart-rate-p1"
        service.start_pair(CUFF, "p2")  # nothing runs now: this one starts
        with pytest.raises(PairingProblem) as busy:
            service.start_pair(SHY, "p2")  # ...and a second one while it runs is refused
        assert busy.value.kind is ProblemKind.busy
        cuff_job = service.running()
        assert cuff_job is not None
        await finished(cuff_job)
        assert cuff_job.state == "done", cuff_job.problem

        entries = {d.id: d for d in paired.load(data)}
        assert set(entries) == {"heart-rate-p1", "blood-pressure-p2"}
        assert entries["blood-pressure-p2"].bonded and not entries["heart-rate-p1"].bonded
        assert (entries["heart-rate-p1"].address, entries["heart-rate-p1"].subject) == (STRAP, "p1")
        # what the agent builds its drivers from
        assert {c.id for c in paired.device_configs(data)} == {"heart-rate-p1", "blood-pressure-p2"}
        assert labels(web_db) == {"heart-rate-p1": "心拍ベルト"}

        # お父さんの血圧計: name it and give it to p1
        await service.update("blood-pressure-p2", label="血圧計", person="p1")
        assert paired.find(paired.load(data), CUFF).subject == "p1"  # type: ignore[union-attr]
        views = {v.id: v for v in service.devices()}
        assert views["blood-pressure-p2"].label == "血圧計"
        assert views["blood-pressure-p2"].subject == "p1"
        assert views["heart-rate-p1"].connection == "agent_down"  # no agent status in this test

        with pytest.raises(PairingProblem) as bad:
            await service.update("blood-pressure-p2", label="x" * 41)
        assert bad.value.kind is ProblemKind.bad_input

        assert await service.remove("blood-pressure-p2") is None  # the bond is forgotten too
        assert [d.id for d in paired.load(data)] == ["heart-rate-p1"]
        assert "blood-pressure-p2" not in labels(web_db)
        with pytest.raises(PairingProblem) as gone:
            await service.remove("blood-pressure-p2")
        assert gone.value.kind is ProblemKind.not_found

    run(main())


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        (ABSENT, ProblemKind.out_of_range),
        (SHY, ProblemKind.bonding_refused),
        (PINNED, ProblemKind.pin_wrong),
        (STRAP, ProblemKind.wrong_profile),
    ],
)
def test_pairing_failures_are_classified(
    radio: Radio, tmp_path: Path, web_db: sqlite3.Connection, address: str, kind: ProblemKind
) -> None:
    radio.devices = [
        (STRAP, "heart_rate", {}),
        (SHY, "blood_pressure", {"security": "bond", "pairing_mode": False}),
        (PINNED, "blood_pressure", {"security": "bond"}),
    ]
    radio.wrong_pin = {PINNED}
    config = write_config(tmp_path)

    async def main() -> None:
        service = PairingService(config, web_db, find_within=1.0)
        profile = "glucose" if address == STRAP else None
        job = await finished(service.start_pair(address, "p1", profile=profile))
        assert job.state == "failed"
        assert job.problem is not None
        assert job.problem.kind is kind, job.problem
        assert not paired.load(tmp_path / "data")

    run(main())


def test_already_paired_and_timeout_and_bad_input(radio: Radio, tmp_path: Path, web_db: sqlite3.Connection) -> None:
    radio.devices = [(STRAP, "heart_rate", {})]
    config = write_config(
        tmp_path,
        extra=f'[[devices]]\nkind = "ble"\nid = "cfg-strap"\naddress = "{CUFF}"\n'
        'profile = "heart_rate"\nsubject = "p9"\n',
    )

    async def main() -> None:
        service = PairingService(config, web_db, find_within=5.0, pair_timeout=0.3)
        with pytest.raises(PairingProblem) as configured:
            service.start_pair(CUFF, "p1")
        assert configured.value.kind is ProblemKind.already_paired
        # the whole pairing must end within pair_timeout: a device that is not there runs into it
        job = await finished(service.start_pair(ABSENT, "p1"))
        assert job.problem is not None and job.problem.kind is ProblemKind.timeout

        service.pair_timeout = 20.0
        await finished(service.start_pair(STRAP, "p1"))
        with pytest.raises(PairingProblem) as again:
            service.start_pair(STRAP, "p2")
        assert again.value.kind is ProblemKind.already_paired
        for args in (("not-an-address", "p1"), (ABSENT, "お父さん"), (ABSENT, "")):
            with pytest.raises(PairingProblem) as bad:
                service.start_pair(*args)
            assert bad.value.kind is ProblemKind.bad_input
        views = {v.id: v for v in service.devices()}
        assert not views["cfg-strap"].removable
        with pytest.raises(PairingProblem):
            await service.remove("cfg-strap")

    run(main())


def test_plugs_pair_by_naming_the_appliance(tmp_path: Path, web_db: sqlite3.Connection) -> None:
    config = write_config(tmp_path, broker_port=1)  # never connected to in this test

    async def main() -> None:
        service = PairingService(config, web_db)
        device_id = await service.pair_plug(KETTLE_KEY, "kettle", label="電気ケトル")
        assert device_id == f"{HOME}-kettle"
        assert plug_pairing.load(tmp_path / "data") == {KETTLE_KEY: "kettle"}
        with pytest.raises(PairingProblem) as taken:
            await service.pair_plug("z2m:0x00158d0001", "tv")  # the config's tv plug has that appliance
        assert taken.value.kind is ProblemKind.already_paired
        with pytest.raises(PairingProblem) as bad:
            await service.pair_plug("bogus", "fan")
        assert bad.value.kind is ProblemKind.bad_input
        views = {v.id: v for v in service.devices()}
        assert (views[device_id].kind, views[device_id].label, views[device_id].removable) == (
            "plug",
            "電気ケトル",
            True,
        )
        assert not views[f"{HOME}-tv"].removable
        await service.remove(device_id)
        assert plug_pairing.load(tmp_path / "data") == {}

    run(main())


# ------------------------------------------------------------------------------------------------------------
# what the page shows per device: last reading, battery, connection (from the agent's database and status)
# ------------------------------------------------------------------------------------------------------------


def test_devices_show_last_reading_battery_and_connection(
    radio: Radio, tmp_path: Path, web_db: sqlite3.Connection
) -> None:
    radio.devices = [(STRAP, "heart_rate", {}), (CUFF, "blood_pressure", {})]
    config = write_config(tmp_path)
    cfg = load_config(config)

    async def main() -> None:
        service = PairingService(config, web_db, find_within=3.0)
        for address, person in ((STRAP, "p1"), (CUFF, "p2")):
            job = await finished(service.start_pair(address, person))
            assert job.state == "done", job.problem
        now = time.time()
        # the agent's own store and status writer's shapes: readings through the pipeline, links in status.json
        conn = connect(cfg.db_path)
        try:
            Pipeline(conn, cfg).store(
                [
                    Reading("heart-rate-p1", "p1", "heart_rate", 64.0, "bpm", now - 30),
                    Reading("heart-rate-p1", "p1", "heart_rate", 66.0, "bpm", now - 5),
                    Reading("heart-rate-p1", "p1", "battery_level", 80.0, "%", now - 5),
                    # the strap's side value of the same beat is not its "last reading"
                    Reading("heart-rate-p1", "p1", "rr_interval", 905.0, "ms", now - 5),
                    Reading("blood-pressure-p2", "p2", "systolic", 128.0, "mmHg", now - 60),
                    Reading("blood-pressure-p2", "p2", "diastolic", 82.0, "mmHg", now - 60),
                    Reading("blood-pressure-p2", "p2", "pulse_rate", 70.0, "bpm", now - 60),
                    # read once, long ago: "nothing recently", not "nothing yet"
                    Reading("thermometer-p2", "p2", "body_temperature", 36.5, "degC", now - 40 * 86400),
                ]
            )
        finally:
            conn.close()
        status = {
            "at": now,
            "drivers_stopped": {},
            "links": {"heart-rate-p1": {"connected": True, "battery_level": 81, "last_seen": now, "last_error": None}},
        }
        cfg.status_path.write_text(json.dumps(status), encoding="utf-8")
        views = {v.id: v for v in service.devices()}
        strap = views["heart-rate-p1"]
        assert (strap.connection, strap.battery) == ("connected", 81)
        assert strap.last is not None and (strap.last.metric, strap.last.value) == ("heart_rate", 66.0)
        assert abs(strap.last.ts - (now - 5)) < 0.01
        cuff = views["blood-pressure-p2"]
        assert (cuff.connection, cuff.battery) == ("waiting", None)  # not in the agent's status yet
        assert cuff.last is not None and cuff.diastolic is not None
        assert (cuff.last.metric, cuff.last.value, cuff.diastolic.value) == ("systolic", 128.0, 82.0)
        last, ever = _last_readings(cfg.db_path, ["thermometer-p2", "nothing-p9"], since=now - 30 * 86400)
        assert (last, ever) == ({}, {"thermometer-p2"})
        status["at"] = now - 3600
        cfg.status_path.write_text(json.dumps(status), encoding="utf-8")
        assert {v.connection for v in service.devices()} == {"agent_down"}

    run(main())


# ------------------------------------------------------------------------------------------------------------
# the page in a real browser, against a live home (tests/webkit.py: agent, both brokers, emulators, Chromium)
# ------------------------------------------------------------------------------------------------------------

NEW_STRAP = "C0:4B:00:00:16:21"
SHY_CUFF = "C0:4B:00:00:16:22"
RICE_KEY = "tasmota:ricecooker_77"


@contextlib.contextmanager
def extra_plug(port: int) -> Iterator[PlugEmitter]:
    """A plug nobody paired yet, publishing Tasmota telemetry every second on the home's LAN broker."""
    import threading

    plug = Plug("home-001-rice_cooker", "home-001", 11, appliance="kettle", period_s=1.0)
    emitter = PlugEmitter([PlugWire(plug, "tasmota", "ricecooker_77")], SystemClock(), port=port)
    loop = asyncio.new_event_loop()
    task = loop.create_task(emitter.run())
    thread = threading.Thread(target=lambda: loop.run_until_complete(asyncio.gather(task, return_exceptions=True)))
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(wait_connected(emitter), loop).result(15)
        yield emitter
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(15)
        loop.close()


def _found(page: Any, key: str) -> Any:
    return page.locator(f'[data-testid=found][data-key="{key}"]')


def _scan(page: Any, *keys: str) -> None:
    page.get_by_test_id("scan").click()
    for key in keys:
        _found(page, key).wait_for(timeout=20_000)  # live: shown while the scan still runs
    page.get_by_test_id("scan-done").wait_for(timeout=20_000)


@pytest.mark.broker
@pytest.mark.browser
def test_phone_in_japanese_pairs_a_strap_and_a_plug_names_them_and_sees_readings(  # type: ignore[no-untyped-def]
    radio: Radio, home, web, phone
) -> None:
    from tests.webkit import axe_violations, screenshot, sign_in, wait_for

    radio.devices = [
        (NEW_STRAP, "heart_rate", {"name": "HRM-Pro"}),
        (SHY_CUFF, "blood_pressure", {"name": "BP7000", "security": "bond", "pairing_mode": False}),
    ]
    app = web.server.config.app
    app.state.pairing = PairingService(home.config_path, app.state.site.web_db, scan_s=4.0, find_within=4.0)
    page = phone
    sign_in(page, web)
    with extra_plug(home.lan.port):
        page.goto(web.url + "/devices")
        assert page.locator("h1").inner_text() == "機器"
        # the installer's strap: connected, battery and its last reading, from the running agent
        p1_strap = page.locator('[data-testid=device][data-device="home-001-p1-hr"]')
        wait_for(
            "the agent to read the installer's strap",
            lambda: page.reload() or p1_strap.get_by_test_id("connection").get_attribute("data-state") == "connected",
            60,
            1.0,
        )
        assert "bpm" in p1_strap.get_by_test_id("last-reading").inner_text()
        assert "%" in p1_strap.get_by_test_id("battery").inner_text()

        # scan: the new strap, the cuff and the unpaired plug show up live; the home's own plugs are marked
        _scan(page, NEW_STRAP, SHY_CUFF, RICE_KEY)
        assert "心拍計" in _found(page, NEW_STRAP).inner_text()
        assert "dBm" in _found(page, NEW_STRAP).inner_text()
        assert axe_violations(page) == []
        _found(page, RICE_KEY).scroll_into_view_if_needed()
        screenshot(page, "web-devices-scan-ja-phone", full_page=False)

        # the plug: what it powers, a name
        plug = _found(page, RICE_KEY)
        plug.locator("select[name=appliance]").select_option("rice_cooker")
        plug.locator("input[name=label]").fill("炊飯器")
        plug.get_by_role("button", name="この機器を追加").click()
        page.wait_for_url(web.url + "/devices")
        rice = page.locator('[data-testid=device][data-device="home-001-rice_cooker"]')
        assert rice.get_by_test_id("device-title").inner_text() == "炊飯器"

        # the strap: a name, and a new person of the home (お父さん)
        _scan(page, NEW_STRAP)
        strap = _found(page, NEW_STRAP)
        strap.locator("input[name=label]").fill("心拍ベルト")
        strap.locator("select[name=person]").select_option("__new__")
        strap.locator("input[name=person_name]").fill("お父さん")
        strap.get_by_role("button", name="この機器を追加").click()
        page.get_by_test_id("paired").wait_for(timeout=30_000)
        new = page.locator('[data-testid=device][data-device^="heart-rate-"]')
        assert new.get_by_test_id("device-title").inner_text() == "お父さんの心拍ベルト"
        new_id = str(new.get_attribute("data-device"))

        # an error in plain words, with what to do next
        _scan(page, SHY_CUFF)
        cuff = _found(page, SHY_CUFF)
        cuff.locator("select[name=person]").select_option("__new__")
        cuff.locator("input[name=person_name]").fill("お母さん")
        cuff.get_by_role("button", name="この機器を追加").click()
        problem = page.get_by_test_id("problem")
        problem.wait_for(timeout=30_000)
        assert problem.get_attribute("data-kind") == "bonding_refused"
        assert "ペアリングモード" in problem.inner_text()
        assert axe_violations(page) == []
        problem.scroll_into_view_if_needed()
        screenshot(page, "web-devices-error-ja-phone", full_page=False)

        # the running agent picks the new devices up by itself: no restart, no terminal
        wait_for("the agent to read the new plug", lambda: "home-001-rice_cooker" in home.devices_reading(), 60, 0.5)
        assert home.status()["pairing"]["applied"] >= 1
        # and the strap's driver started in the running agent, which reports its link (here it cannot reach the
        # strap: that one lives in the web process's virtual radio, not the agent's)
        wait_for("the agent to report the new strap", lambda: new_id in home.status().get("links", {}), 60, 0.2)
        page.goto(web.url + "/devices")
        assert rice.get_by_test_id("connection").get_attribute("data-state") == "listening"
        assert "W" in rice.get_by_test_id("last-reading").inner_text()
        assert new.get_by_test_id("connection").get_attribute("data-state") == "disconnected"
        assert axe_violations(page) == []
        new.scroll_into_view_if_needed()
        screenshot(page, "web-devices-ja-phone", full_page=False)


@pytest.mark.broker
@pytest.mark.browser
@pytest.mark.parametrize("lang", ["ja", "en"])
@pytest.mark.parametrize("kind", ["phone", "desktop"])
def test_devices_page_screenshots_and_axe(home, web, browser, lang: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    from tests.webkit import axe_violations, new_page, screenshot, sign_in

    ctx, page = new_page(browser, kind, lang=lang)
    try:
        sign_in(page, web)
        page.goto(web.url + "/devices")
        if lang == "en":
            page.get_by_test_id("lang-switch").click()
            page.wait_for_url(web.url + "/devices")
        assert page.locator("h1").inner_text() == {"ja": "機器", "en": "Devices"}[lang]
        assert axe_violations(page) == []
        if not (lang == "ja" and kind == "phone"):  # that one is taken with the paired devices above
            screenshot(page, f"web-devices-{lang}-{kind}", full_page=kind == "desktop")
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------------------------
# the routes, in process (Starlette's TestClient against the real app): guard, CSRF, htmx polling, no-JS flow
# ------------------------------------------------------------------------------------------------------------


def test_routes_need_a_session_and_csrf_and_polling_stops_when_the_job_ends(radio: Radio, tmp_path: Path) -> None:
    from tests.web.appkit import make_client, sign_in
    from tests.web.appkit import write_config as app_config

    radio.devices = [(STRAP, "heart_rate", {"name": "Polar H10"})]
    config = app_config(tmp_path)
    with make_client(config) as client:
        assert client.get("/devices").status_code in (303, 401, 403)  # a stranger sees the sign-in page only
        token = sign_in(client)
        state: Any = client.app.state  # type: ignore[attr-defined]
        state.pairing = PairingService(config, state.site.web_db, scan_s=0.5, find_within=3.0)
        assert client.post("/devices/scan").status_code == 403  # no CSRF token
        hx = {"HX-Request": "true", "X-CSRF-Token": token}
        first = client.post("/devices/scan", headers=hx)
        assert first.status_code == 200
        job_id = re.search(r'hx-get="/devices/jobs/([^"]+)"', first.text).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 15
        while 'hx-trigger="every 1s"' in (frag := client.get(f"/devices/jobs/{job_id}", headers=hx).text):
            assert time.monotonic() < deadline, "the scan did not end"
            time.sleep(0.1)
        assert f'data-key="{STRAP}"' in frag and 'data-testid="pair-form"' in frag
        assert client.get("/devices/jobs/nope", headers=hx).status_code == 286  # htmx: stop polling

        # without JavaScript: plain form posts and redirects; the job page shows the result
        r = client.post(
            "/devices/pair",
            data={
                "csrf": token,
                "kind": "ble",
                "key": STRAP,
                "person": "__new__",
                "person_name": "お父さん",
                "label": "心拍ベルト",
            },
        )
        assert r.status_code == 303 and r.headers["location"].startswith("/devices?job=")
        deadline = time.monotonic() + 15
        while 'data-testid="paired"' not in (page := client.get(r.headers["location"]).text):
            assert time.monotonic() < deadline, "pairing did not end"
            time.sleep(0.1)
        assert "お父さんの心拍ベルト" in page
        again = client.post("/devices/pair", data={"csrf": token, "kind": "ble", "key": STRAP, "person": "p1"})
        assert again.status_code == 400
        assert 'data-kind="already_paired"' in again.text
        assert "すでにこのゲートウェイに登録されています" in again.text

"""The solar-surplus loop (issue 18 §1) closed with real parts: the meter emulator on a pty read by the real
B-route driver, the gateway's OCPP central system, and the ``ocpp`` library's ChargePoint with a car behind it
(:mod:`drivers.sim.evsite`). Time is simulated a minute at a time; every wait is on state.

The day: UK-DALE house 2's mains on 2013-06-29 (tests/data/nilm, provenance in its README) as the house load, and
PV from the Haurwitz clear-sky model for Aizuwakamatsu on 2026-06-29 with the seeded "variable" cloud process
(:mod:`drivers.sim.solar`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import pytest
import websockets
from pydantic import ValidationError
from websockets.typing import Subprotocol

from drivers.ocpp.smart import SurplusPolicy, next_limit, phases_from, surplus_limits, tx_profile
from drivers.ocpp.surplus import Config, SurplusController
from drivers.sim.evsite import (
    Car,
    DayRun,
    ProfileCharger,
    SiteMeter,
    StepClock,
    compare,
    full_power_schedule,
    oracle_schedule,
    run_surplus_day,
)
from drivers.sim.solar import SiteDay, site_day
from tests.kit import DATA

DAY_FILE = DATA / "nilm" / "ukdale_house2_2013-06-29_1min.csv.gz"
T = TypeVar("T")


@pytest.fixture(scope="module")
def day() -> SiteDay:
    return site_day(DAY_FILE, date(2026, 6, 29), weather="variable", seed=3)


def run(coro: Awaitable[T], limit_s: float = 120.0) -> T:
    async def main() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(main())


def hm(h: int, m: int = 0) -> int:
    return h * 60 + m


def limits_between(r: DayRun, day: SiteDay, a: int, b: int) -> list[float | None]:
    return [lim for t, lim in r.limits if day.start + a * 60 <= t < day.start + b * 60]


# -- the pure parts -------------------------------------------------------------------------------------------


def test_next_limit_is_the_step_of_surplus_limits() -> None:
    p = SurplusPolicy(phases=1, voltage_v=200, floor_a=6, max_a=30, hysteresis_a=1)
    surplus = [0, 1300, 1500, 2000, 2100, 6000, 7000, 800, -500, float("nan")]
    current, stepped = 0.0, []
    for w in surplus:
        current = next_limit(w, current, p)
        stepped.append(current)
    assert stepped == surplus_limits(surplus, p)
    assert stepped == [0.0, 0.0, 7.5, 10.0, 10.0, 30.0, 30.0, 0.0, 0.0, 0.0]
    keep = SurplusPolicy(phases=3, voltage_v=230, floor_a=6, max_a=16, keep_floor=True)
    assert surplus_limits([0, 3 * 230 * 10, 100], keep) == [6.0, 10.0, 6.0]


def test_phases_from_the_chargers_values() -> None:
    assert phases_from(2400.0, 12.0, 200.0) == 1
    assert phases_from(11_000.0, 16.0, 230.0) == 3
    assert phases_from(0.0, 0.0, 230.0) is None  # nothing flows: nothing to say
    assert phases_from(5000.0, 12.0, 200.0) is None  # neither 1 nor 3
    assert phases_from(float("nan"), 12.0, 200.0) is None


def test_tx_profile_is_relative_and_never_relies_on_the_chargers_clock() -> None:
    prof = tx_profile(5, 12.345, number_phases=1)
    assert prof["charging_profile_kind"] == "Relative" and prof["charging_profile_purpose"] == "TxProfile"
    assert not {"valid_from", "valid_to", "recurrency_kind"} & prof.keys()
    assert "start_schedule" not in prof["charging_schedule"]
    assert prof["charging_schedule"]["charging_schedule_period"] == [
        {"start_period": 0, "limit": 12.3, "number_phases": 1}
    ]


def test_config_validation() -> None:
    base = {"ocpp": "home1-ocpp", "meter": "home1-meter"}
    cfg = Config.model_validate({**base, "mode": "surplus-minimum", "interval": "PT1M", "phases": 3})
    assert cfg.min_current == 6.0 and cfg.interval.total_seconds() == 60 and cfg.phases == 3
    for bad in (
        {"mode": "solar"},
        {"min_current": 5},  # IEC 61851: nothing below 6 A
        {"min_current": 10, "max_current": 8},
        {"interval": "PT5S"},
        {"meter_stale": "PT30S"},  # shorter than the interval
        {"meter_timeout": "PT2M"},  # not longer than meter_stale
        {"phases": 2},
        {"colour": "green"},
    ):
        with pytest.raises(ValidationError):
            Config.model_validate({**base, **bad})


def test_oracle_and_full_power_deliver_the_need(day: SiteDay) -> None:
    car = Car()
    for schedule in (oracle_schedule(day, car), full_power_schedule(day, car)):
        assert schedule.sum() / 60 == pytest.approx(car.need_wh)
        assert (schedule[: car.arrive_min] == 0).all() and (schedule[car.depart_min :] == 0).all()
        assert schedule.max() <= car.max_w + 1e-6


# -- the closed loop ----------------------------------------------------------------------------------------


def test_closed_loop_day_reaches_80_percent_of_the_oracle(day: SiteDay) -> None:
    """A whole day, surplus-only: at least 80 % of the oracle's self-consumption, far less import than charging
    at full power on arrival, the car gets what it needs, and every profile is a Relative TxProfile in A."""
    car = Car()
    r = run(run_surplus_day(day, car, mode="surplus-only"))
    figures = compare(day, car, {"surplus-only": r})
    loop, full, oracle = figures["surplus-only"], figures["full_power"], figures["oracle"]
    assert loop["vs_oracle"] >= 0.8, figures
    assert loop["self_consumption"] > full["self_consumption"] + 0.1
    assert loop["import_charging_wh"] < 0.2 * full["import_charging_wh"]
    assert loop["car_wh"] == pytest.approx(car.need_wh, abs=1.0) and r.soc == pytest.approx(car.target_soc)
    assert oracle["self_consumption"] >= loop["self_consumption"]
    (tx,) = r.transactions
    depart = day.start + car.depart_min * 60
    assert r.profiles and all(t < depart and ptx == tx for t, ptx, _, _ in r.profiles)
    for _, _, limit, prof in r.profiles:
        assert limit == 0 or 6 <= limit <= car.max_a
        assert prof["charging_profile_kind"] == "Relative" and "start_schedule" not in prof["charging_schedule"]
        assert prof["charging_schedule"]["charging_rate_unit"] == "A"
    # the meter's registers reach the loop through the real driver: 0xE0 bought, 0xE3 sold (0.01 kWh counts)
    meter = r.status["meter"]
    assert meter["export_wh"] == pytest.approx(r.meter_registers["export_wh"], abs=20.0)
    assert meter["import_wh"] == pytest.approx(r.meter_registers["import_wh"], abs=20.0)
    assert r.status["counts"]["profiles_sent"] == r.status["counts"]["profiles_accepted"]
    assert r.status["ended"][-1]["phases"] == 1  # learnt from the charger's power / (current x voltage)


@pytest.mark.parametrize(("mode", "check"), [
    ("surplus-minimum", lambda lims: min(lims) >= 6.0),
    ("fixed", lambda lims: set(lims) == {16.0}),
    ("surplus-only", lambda lims: min(lims) == 0.0 and max(lims) > 6.0),
])  # fmt: skip
def test_modes(day: SiteDay, mode: str, check: Callable[[list[float]], bool]) -> None:
    """Minutes 08:55-12:00, the car at home from 09:00: each mode's limits while it charges."""
    car = Car(target_soc=95.0)  # never full in the slice
    r = run(run_surplus_day(day, car, mode=mode, start_min=hm(8, 55), end_min=hm(12)))
    lims = [lim for lim in limits_between(r, day, hm(9), hm(12)) if lim is not None]
    assert lims and check(lims), (mode, sorted(set(lims)))
    assert r.status["mode"] == mode


# -- faults --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("behaviour", "reason"), [("reject", "rejected"), ("not_supported", "not_supported")])
def test_charger_refusing_profiles_falls_back_and_says_so(
    day: SiteDay, behaviour: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rejected / NotSupported: the transaction is uncontrolled (the charger's own limit), shown in the status,
    counted, logged once; a profile is tried again every 15 minutes, not every minute."""
    caplog.set_level(logging.WARNING, logger="drivers.ocpp.surplus")
    car = Car(target_soc=95.0)
    r = run(run_surplus_day(day, car, behaviour=behaviour, start_min=hm(8, 55), end_min=hm(10, 30)))
    (tx,) = r.transactions
    (ended,) = r.status["ended"]
    assert (ended["tx"], ended["reason"]) == (tx, reason)
    assert r.status["counts"][f"uncontrolled:{reason}"] == len(r.profiles) == 6  # 09:00, 09:15 ... 10:15
    assert [round((t - day.start) / 60) for t, *_ in r.profiles] == [hm(9) + 15 * i for i in range(6)]
    assert r.car_w[hm(9) : hm(10, 30)].min() == car.max_w  # uncontrolled: full power
    lines = [rec.getMessage() for rec in caplog.records if "uncontrolled" in rec.getMessage()]
    assert len(lines) == 1 and "HOME" in lines[0], lines


def test_charger_ignoring_profiles_is_detected(day: SiteDay) -> None:
    """Accepted, not followed: after three fresh meter values above the limit the loop stops sending (it says
    ``ignored``), and tries again after 15 minutes."""
    car = Car(target_soc=95.0)
    r = run(run_surplus_day(day, car, behaviour="ignore", start_min=hm(8, 55), end_min=hm(9, 40)))
    (ended,) = r.status["ended"]
    assert ended["reason"] == "ignored" and r.status["counts"]["uncontrolled:ignored"] >= 1
    sent = [round((t - day.start) / 60) for t, *_ in r.profiles]
    # sent at 09:00; judged from 09:01 (values at least 30 s after it): ignored at 09:03; retried at 09:18, ignored
    # again at 09:21, retried at 09:36, ignored at 09:39
    assert sent[:3] == [hm(9), hm(9, 18), hm(9, 36)], sent
    assert ended["counts"]["uncontrolled:ignored"] == 3 and ended["counts"]["retries"] == 2
    assert r.car_w[hm(9) : hm(9, 40)].min() == car.max_w  # the car never followed


@pytest.mark.parametrize(("mode", "floor"), [("surplus-only", 0.0), ("surplus-minimum", 6.0)])
def test_meter_that_stops_answering_never_raises_the_limit(day: SiteDay, mode: str, floor: float) -> None:
    """At 10:15 the meter stops answering (the emulated module sends, no ERXUDP comes back): the limit is held
    once the last value is older than 150 s, and stepped down to the mode's minimum after 5 minutes."""
    car = Car(arrive_min=hm(10), target_soc=95.0)
    r = run(run_surplus_day(day, car, mode=mode, start_min=hm(9, 58), end_min=hm(10, 30), meter_silent_from=hm(10, 15)))
    before = limits_between(r, day, hm(10, 16), hm(10, 17))
    held = limits_between(r, day, hm(10, 17), hm(10, 20))
    after = limits_between(r, day, hm(10, 20), hm(10, 30))
    assert before[0] is not None and before[0] > floor  # the sun was shining: a real limit to hold
    assert held == [before[0]] * 3
    assert after == [floor] * 10
    assert r.status["state"] == "meter_lost" and r.status["counts"]["meter_stale"] == 3
    assert r.status["counts"]["meter_lost"] >= 10


def test_session_that_ends_while_a_profile_is_on_its_way(day: SiteDay) -> None:
    """The car is unplugged (StopTransaction) while SetChargingProfile is in flight: the answer is not taken for
    a refusal, and nothing more is sent to the dead transaction."""
    car = Car(target_soc=95.0)
    stops: list[asyncio.Task[None]] = []

    async def on_minute(k: int, ctl: SurplusController, cp: ProfileCharger) -> None:
        if k != hm(9, 10):
            return
        central = ctl._central()
        assert central is not None
        tx = cp.tx

        async def stop_in_flight(profile: dict[str, Any]) -> str | None:
            cp.on_profile = None
            stops.append(asyncio.create_task(cp.unplug()))
            # wait on the central system's state: the stop is recorded (it has no event to wait on)
            while tx in central.chargers["HOME"].transactions.values():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            return "Rejected"  # what a charger answers for a transaction that is over

        cp.on_profile = stop_in_flight

    r = run(run_surplus_day(day, car, start_min=hm(8, 58), end_min=hm(9, 30), on_minute=on_minute,
                            config={"refresh": "PT1M"}))  # fmt: skip
    (tx,) = r.transactions
    assert stops and stops[0].done()
    assert r.status["counts"]["ended_in_flight"] == 1
    assert not any(k.startswith("uncontrolled") for k in r.status["counts"])
    last = max(t for t, ptx, *_ in r.profiles if ptx == tx)
    assert round((last - day.start) / 60) == hm(9, 10) and r.status["ended"][-1]["tx"] == tx
    assert r.car_w[hm(9, 10) :].max() == 0.0


def test_clock_skew_changes_nothing(day: SiteDay) -> None:
    """The charger's clock 9 h behind (an RTC read in the wrong zone) or 3 min ahead: the same limits, minute by
    minute, as with a right clock (Relative schedules; every age is the gateway's)."""
    car = Car(target_soc=95.0)
    window = {"start_min": hm(8, 58), "end_min": hm(10)}
    right = run(run_surplus_day(day, car, **window))
    for skew in (-9 * 3600.0, 180.0):
        skewed = run(run_surplus_day(day, car, skew_s=skew, **window))
        assert [lim for _, lim in skewed.limits] == [lim for _, lim in right.limits], skew
        assert skewed.status["counts"] == right.status["counts"]


def test_charger_without_meter_values_is_driven_by_its_accepted_limit(day: SiteDay) -> None:
    """The loop asks each charger for MeterValues every interval (ChangeConfiguration MeterValueSampleInterval); one
    that refuses and sends none is driven all the same: the accepted limit's power stands in for the car's draw,
    and while the car follows, the limits are the same as with meter values."""
    car = Car(target_soc=95.0)
    window = {"start_min": hm(8, 55), "end_min": hm(12)}
    with_values = run(run_surplus_day(day, car, **window))
    without = run(run_surplus_day(day, car, meter_values=False, **window))
    assert with_values.status["sample_interval"] == {"HOME": "Accepted"}
    assert without.status["sample_interval"] == {"HOME": "Rejected"}
    assert [lim for _, lim in without.limits] == [lim for _, lim in with_values.limits]
    assert without.status["ended"][-1]["car_source"] == "limit"
    assert with_values.status["ended"][-1]["car_source"] == "meter_values"


# -- in the agent ---------------------------------------------------------------------------------------------


def test_agent_runs_the_loop_from_its_config(tmp_path: Path) -> None:
    """``[ev.surplus]`` in the gateway config: the agent builds the loop on its OCPP central system, feeds it the
    meter's readings from the bus, and shows it in its status and in ``kyojo agent status``."""
    from drivers.meter.emulator import PWD, RBID, PtyEmulator, Scenario
    from edge_agent.agent import Agent
    from edge_agent.cli import render_status
    from edge_agent.config import AgentConfig

    key = "home-charger-key-000001"
    site = SiteMeter()
    site.net_w = -3000.0  # 3 kW exported: the car may take 15 A at 200 V

    async def main(port: str) -> dict[str, Any]:
        config = AgentConfig.model_validate(
            {
                "gateway": {"id": "gw-ev", "data_dir": str(tmp_path)},
                "devices": [
                    {"kind": "ocpp", "id": "home1-ocpp", "subject": "home1", "listen_port": 0,
                     "charge_points": ["HOME"], "credentials": {"HOME": key}},
                    {"kind": "bmeter", "id": "home1-meter", "household": "home1", "rbid": RBID, "password": PWD,
                     "serial_port": port, "scan_durations": [4], "poll_interval": 60},
                ],
                "ev": {"surplus": {"ocpp": "home1-ocpp", "meter": "home1-meter", "max_current": 30}},
            }
        )  # fmt: skip
        clock = StepClock(1_782_690_000.0)
        agent = Agent(config, clock=clock)
        assert agent.surplus is not None
        tasks = [asyncio.create_task(agent._run_driver(d)) for d in agent.drivers]
        ocpp = next(d for d in agent.drivers if d.device_id == "home1-ocpp")
        try:
            await getattr(ocpp, "listening").wait()  # noqa: B009 - the Driver protocol does not declare it
            auth = {"Authorization": "Basic " + base64.b64encode(f"HOME:{key}".encode()).decode()}
            url = f"ws://127.0.0.1:{getattr(ocpp, 'port')}/ocpp/HOME"  # noqa: B009
            async with websockets.connect(url, subprotocols=[Subprotocol("ocpp1.6")], additional_headers=auth) as ws:
                cp = ProfileCharger("HOME", ws, Car(), clock)
                cp_task = asyncio.create_task(cp.start())
                tx = await cp.plug_in()
                while agent.surplus.meter_seen is None:
                    await agent.surplus.meter_event.wait()
                await agent.surplus.step()
                cp_task.cancel()
            return {"status": agent.status(), "tx": tx, "limit": cp.limit_a}
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            agent.conn.close()

    with PtyEmulator(Scenario(), model=site) as emu:
        out = run(main(emu.path), 60)
    ev = out["status"]["ev_surplus"]
    assert out["limit"] == 15.0
    assert ev["meter"]["power_w"] == -3000.0 and ev["state"] == "ok"
    assert ev["transactions"][str(out["tx"])]["state"] == "controlled"
    assert ev["transactions"][str(out["tx"])]["limit_a"] == 15.0
    text = render_status(out["status"], now=out["status"]["at"])
    assert "ev surplus  surplus-only: ok; HOME/1 controlled 15 A" in text


def test_agent_config_refers_to_a_real_ocpp_entry(tmp_path: Path) -> None:
    from edge_agent.config import AgentConfig

    doc: dict[str, Any] = {
        "gateway": {"id": "gw-ev", "data_dir": str(tmp_path)},
        "devices": [{"kind": "ocpp", "id": "home1-ocpp", "subject": "home1", "charge_points": ["HOME"],
                     "security_profile": 0}],
        "ev": {"surplus": {"ocpp": "other-ocpp", "meter": "home1-meter"}},
    }  # fmt: skip
    with pytest.raises(ValidationError, match="no \\[\\[devices\\]\\] entry of kind ocpp"):
        AgentConfig.model_validate(doc)
    doc["ev"]["surplus"] = {"ocpp": "home1-ocpp", "meter": "home1-meter", "charge_point": "GARAGE"}
    with pytest.raises(ValidationError, match="not in that entry's charge_points"):
        AgentConfig.model_validate(doc)
    doc["ev"]["surplus"]["charge_point"] = "HOME"
    assert AgentConfig.model_validate(doc).ev.surplus is not None


def test_the_documented_configuration_validates() -> None:
    """docs/EV_SURPLUS.md's ``[ev.surplus]`` block is a valid configuration, with the defaults it claims."""
    import re
    import tomllib

    from tests.kit import ROOT

    text = (ROOT / "docs" / "EV_SURPLUS.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None
    doc = tomllib.loads(block.group(1).replace("# ...", ""))
    cfg = Config.model_validate(doc["ev"]["surplus"])
    defaults = Config(ocpp="x", meter="y")
    assert (cfg.meter_stale, cfg.meter_timeout, cfg.retry_after, cfg.ignore_after) == (
        defaults.meter_stale, defaults.meter_timeout, defaults.retry_after, defaults.ignore_after,
    )  # fmt: skip


def test_bad_readings_are_counted_never_raised() -> None:
    """A non-numeric transaction id: counted and skipped (a Reading is never non-finite: the contract refuses it);
    without a central system the loop says so instead of failing."""
    from kyojo.contract.vocab import Reading

    clock = StepClock(1_782_690_000.0)
    ctl = SurplusController(Config(ocpp="o", meter="m"), lambda: None, clock)
    ctl.observe(Reading("CP1-1", "home1", "ev_power", 1000.0, "W", clock.now(), {"transaction": "not-a-number"}))
    ctl.observe(Reading("m", "home1", "power", -800.0, "W", clock.now(), {}))
    run(ctl.step())
    status = ctl.status()
    assert status["counts"] == {"bad_reading": 1}
    assert status["state"] == "no_central_system" and status["meter"]["power_w"] == -800.0


def test_live_site_drives_a_running_agents_loop(tmp_path: Path) -> None:
    """The demo's charging site: :class:`LiveSite` (meter model + a charge point on the agent's scaled clock)
    next to an agent configured with :func:`live_site_toml`: the loop takes the car's transaction and its limit
    follows the sun."""
    import tomllib
    from datetime import UTC, datetime

    from drivers.clock import ScaledClock
    from drivers.meter.emulator import PWD, RBID, PtyEmulator, Scenario
    from drivers.sim.evsite import LiveSite, live_site_toml
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from tests.kit import free_port

    port, key = free_port(), "live-site-key-00000001"
    start = datetime(2026, 6, 29, 0, 59, tzinfo=UTC).timestamp()  # 09:59 JST
    clock = ScaledClock(start, speed=300.0)  # a simulated minute in 0.2 s
    site = LiveSite(clock, car=Car(arrive_min=hm(10), target_soc=95.0), weather="clear", seed=1)

    async def main(meter_port: str) -> dict[str, Any]:
        doc = tomllib.loads(live_site_toml("home1", port=port, cp_id="EV1", key=key))
        doc["gateway"] = {"id": "gw-live", "data_dir": str(tmp_path)}
        doc["devices"].append({"kind": "bmeter", "id": "home1-meter", "household": "home1", "rbid": RBID,
                               "password": PWD, "serial_port": meter_port, "scan_durations": [4],
                               "poll_interval": 30})  # fmt: skip
        agent = Agent(AgentConfig.model_validate(doc), clock=clock)
        assert agent.surplus is not None
        tasks = [asyncio.create_task(agent._run_driver(d)) for d in agent.drivers]
        tasks.append(asyncio.create_task(agent.surplus.run()))
        tasks.append(asyncio.create_task(site.run(f"ws://127.0.0.1:{port}/ocpp/EV1", "EV1", key)))
        try:
            while True:  # wait on the loop's state: a controlled transaction with a limit from the sun
                status = agent.surplus.status()
                txs = [t for t in status["transactions"].values() if t["state"] == "controlled"]
                if txs and (txs[0]["limit_a"] or 0) >= 6 and site.charger and site.charger.limit_a == txs[0]["limit_a"]:
                    return {"status": status, "draw": site.charger.draw_w()}
                await agent.surplus.meter_event.wait()
                agent.surplus.meter_event.clear()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            agent.conn.close()

    with PtyEmulator(Scenario(), model=site.meter_model()) as emu:
        out = run(main(emu.path), 60)
    (tx,) = out["status"]["transactions"].values()
    assert tx["charge_point"] == "EV1" and 6 <= tx["limit_a"] <= 30
    assert out["draw"] == tx["limit_a"] * 200.0
    assert out["status"]["sample_interval"] == {"EV1": "Accepted"}
    assert site.pv_w(clock.now()) > 2000  # a clear June morning in Aizuwakamatsu

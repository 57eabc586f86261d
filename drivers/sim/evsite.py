"""The surplus loop closed with real parts: a home day, the meter emulator, a real ``ocpp`` charge point, a car.

:func:`run_surplus_day` runs the gateway's :class:`~drivers.ocpp.surplus.SurplusController` against

- the gateway's own :class:`~drivers.ocpp.server.CentralSystem` (websockets on loopback, security profile 1);
- :class:`ProfileCharger`, the ``ocpp`` library's ChargePoint with a car behind it: its current follows the
  TxProfile it accepted (``behaviour="honour"``), or it rejects, answers NotSupported, or accepts and ignores;
  the car's battery fills and the car stops drawing at its target state of charge; its MeterValues carry power,
  current, voltage, the energy register and SoC, stamped with its own clock (``skew_s`` off the gateway's);
- the emulated BP35A1 + smart meter (:mod:`drivers.meter.emulator`) on a pty, read by the real
  :class:`~drivers.meter.driver.BRouteMeter`; the meter answers 0xE7 with the site's net power of the last minute
  (house load - PV + car; import positive) and 0xE0/0xE3 with the bought/sold registers (0.01 kWh).

Time is simulated and stepped a minute at a time (:class:`StepClock`); every wait is on state (the meter's answer,
the charger's CALLRESULT), never on a sleep. Per minute ``k``: the car reports what it drew in minute ``k-1``, the
meter is polled (it also reports minute ``k-1``: a one-minute lag, as a real loop has), the controller decides,
and minute ``k`` is integrated with the limit the car then follows.

The baselines on the same day and car: :func:`full_power_schedule` (charge at full power on arrival) and
:func:`oracle_schedule` (knows the day: puts the needed energy into the minutes of highest surplus, within the
6 A floor and the charger's maximum); :func:`day_metrics` scores any schedule.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ocpp import routing
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action

from drivers.meter.driver import BRouteMeter
from drivers.meter.emulator import PWD, RBID, PtyEmulator, Scenario
from drivers.ocpp.server import CentralSystem
from drivers.ocpp.sessions import SessionStore
from drivers.ocpp.surplus import Config, Mode, SurplusController
from drivers.sim.base import FloatArray
from drivers.sim.solar import JST, SiteDay, load_day, pv_day, site_day
from kyojo.contract.vocab import Clock

KEY = "surplus-loop-site-key-0001"


class StepClock:
    """Simulated time that moves only when :meth:`advance_to` is called; ``sleep`` waits for it (no wall time)."""

    speed = 1.0

    def __init__(self, t: float) -> None:
        self.t = t
        self._moved = asyncio.Condition()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        until = self.t + max(0.0, seconds)
        async with self._moved:
            await self._moved.wait_for(lambda: self.t >= until)

    async def advance_to(self, t: float) -> None:
        """Move time to ``t`` and wake the sleepers that are due."""
        async with self._moved:
            self.t = max(self.t, t)
            self._moved.notify_all()


@dataclass(frozen=True, slots=True)
class Car:
    """The car and its stay: plugs in at ``arrive_min`` and leaves at ``depart_min`` (minutes of the local day)."""

    arrive_min: int = 9 * 60
    depart_min: int = 17 * 60
    capacity_wh: float = 40_000.0
    soc0: float = 50.0
    target_soc: float = 75.0
    efficiency: float = 0.9  # AC to battery
    max_a: float = 30.0  # the charger's own maximum (Japan: 200 V x 30 A = 6 kW)
    phases: int = 1
    voltage: float = 200.0

    @property
    def need_wh(self) -> float:
        """AC energy to reach the target."""
        return (self.target_soc - self.soc0) / 100.0 * self.capacity_wh / self.efficiency

    @property
    def max_w(self) -> float:
        return self.max_a * self.voltage * self.phases

    @property
    def floor_w(self) -> float:
        return 6.0 * self.voltage * self.phases


def _on(action: Action) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    decorator: Callable[[Callable[..., Any]], Callable[..., Any]] = routing.on(action)
    return decorator


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class ProfileCharger(ChargePoint):  # type: ignore[misc]  # the ocpp library ships no type hints
    """A charge point with a car: ``behaviour`` honour | reject | not_supported | ignore (accepts, follows not)."""

    def __init__(self, cp_id: str, ws: Any, car: Car, clock: Clock, *, behaviour: str = "honour",
                 skew_s: float = 0.0, meter_values: bool = True) -> None:  # fmt: skip
        super().__init__(cp_id, ws, response_timeout=10)
        self.car, self.clock, self.behaviour, self.skew_s = car, clock, behaviour, skew_s
        self.meter_values = meter_values
        self.configuration: dict[str, str] = {}
        self.limit_a: float | None = None  # None: no profile, the charger's own maximum
        self.soc = car.soc0
        self.register_wh = 0.0
        self.power_w = 0.0
        self.tx: int | None = None
        self.profiles: list[tuple[float, int | None, float, dict[str, Any]]] = []
        #: called (and awaited) when a profile arrives, before the answer (tests: a stop while it is in flight)
        self.on_profile: Callable[[dict[str, Any]], Awaitable[str | None]] | None = None

    @_on(Action.set_charging_profile)
    async def set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any],
                                   **_: Any) -> Any:  # fmt: skip
        profile = cs_charging_profiles
        period = profile["charging_schedule"]["charging_schedule_period"][0]
        limit = float(period["limit"])
        self.profiles.append((self.clock.now(), profile.get("transaction_id"), limit, profile))
        if self.on_profile is not None:
            forced = await self.on_profile(profile)
            if forced is not None:
                return call_result.SetChargingProfile(status=forced)
        if self.behaviour == "reject":
            return call_result.SetChargingProfile(status="Rejected")
        if self.behaviour == "not_supported":
            return call_result.SetChargingProfile(status="NotSupported")
        if profile.get("transaction_id") not in (None, self.tx):
            return call_result.SetChargingProfile(status="Rejected")  # no such transaction here
        if self.behaviour == "honour":
            self.limit_a = limit
        return call_result.SetChargingProfile(status="Accepted")

    @_on(Action.change_configuration)
    async def change_configuration(self, key: str, value: str, **_: Any) -> Any:
        """MeterValueSampleInterval is the only key this charger knows (answers NotSupported to others)."""
        if key != "MeterValueSampleInterval":
            return call_result.ChangeConfiguration(status="NotSupported")
        self.configuration[key] = value
        return call_result.ChangeConfiguration(status="Accepted" if self.meter_values else "Rejected")

    def draw_w(self) -> float:
        """What the car draws now: the limit (or the charger's maximum), 0 under 6 A or when full/unplugged."""
        if self.tx is None or self.soc >= self.car.target_soc:
            return 0.0
        amps = self.car.max_a if self.limit_a is None else min(self.limit_a, self.car.max_a)
        return 0.0 if amps < 6.0 else amps * self.car.voltage * self.car.phases

    def integrate(self, seconds: float) -> float:
        """Charge for ``seconds`` at :meth:`draw_w` (stopping at the target); returns the mean AC power (W)."""
        p = self.draw_w()
        if p <= 0:
            self.power_w = 0.0
            return 0.0
        room_wh = (self.car.target_soc - self.soc) / 100.0 * self.car.capacity_wh / self.car.efficiency
        wh = min(p * seconds / 3600.0, room_wh)
        self.soc += wh * self.car.efficiency / self.car.capacity_wh * 100.0
        self.register_wh += wh
        self.power_w = wh * 3600.0 / seconds
        return self.power_w

    async def plug_in(self, tag: str = "HOME", *, soc: float | None = None) -> int:
        """StartTransaction (charger time); ``soc``: the car arrives with this state of charge."""
        if soc is not None:
            self.soc = soc
        res = await self.call(
            call.StartTransaction(connector_id=1, id_tag=tag, meter_start=round(self.register_wh),
                                  timestamp=_iso(self.clock.now() + self.skew_s))
        )  # fmt: skip
        self.tx = int(res.transaction_id)
        self.limit_a = None
        return self.tx

    async def unplug(self) -> None:
        """StopTransaction (EVDisconnected)."""
        if self.tx is None:
            return
        tx, self.tx = self.tx, None
        await self.call(
            call.StopTransaction(meter_stop=round(self.register_wh), timestamp=_iso(self.clock.now() + self.skew_s),
                                 transaction_id=tx, reason="EVDisconnected")
        )  # fmt: skip

    async def report(self) -> None:
        """MeterValues of the transaction: power, per-phase current, voltage, register, SoC (charger time)."""
        if self.tx is None or not self.meter_values:
            return
        amps = self.power_w / (self.car.voltage * self.car.phases)
        sv: list[dict[str, Any]] = [
            {"value": f"{self.register_wh:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": f"{self.power_w:.1f}", "measurand": "Power.Active.Import", "unit": "W"},
            {"value": f"{self.car.voltage:.1f}", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
            {"value": f"{self.soc:.1f}", "measurand": "SoC", "unit": "Percent", "location": "EV"},
        ]
        for ph in ("L1", "L2", "L3")[: self.car.phases]:
            sv.append({"value": f"{amps:.1f}", "measurand": "Current.Import", "unit": "A", "phase": ph})
        entry = {"timestamp": _iso(self.clock.now() + self.skew_s), "sampled_value": sv}
        await self.call(call.MeterValues(connector_id=1, transaction_id=self.tx, meter_value=[entry]))


class SiteMeter:
    """The emulated smart meter's :class:`~drivers.meter.emulator.MeterModel`: net power and registers of the site,
    set by the simulation each minute."""

    def __init__(self) -> None:
        self.net_w = 0.0
        self.import_wh = 0.0
        self.export_wh = 0.0

    def edt(self, epc: int) -> bytes | None:
        table = {
            0xD3: (1).to_bytes(4, "big"),
            0xD7: b"\x08",
            0xE1: b"\x02",  # 0.01 kWh
            0xE7: round(self.net_w).to_bytes(4, "big", signed=True),
            0xE0: int(self.import_wh // 10).to_bytes(4, "big"),
            0xE3: int(self.export_wh // 10).to_bytes(4, "big"),
        }
        return table.get(epc)

    def after_get(self, epcs: tuple[int, ...]) -> None:
        """Nothing advances per Get: the simulation moves the state."""

    def first_inf(self) -> bytes | None:
        return None

    def add(self, net_w: float, seconds: float) -> None:
        """A minute of the site's net power: the registers count it, 0xE7 reports it."""
        self.net_w = net_w
        if net_w >= 0:
            self.import_wh += net_w * seconds / 3600.0
        else:
            self.export_wh += -net_w * seconds / 3600.0


# ---------------------------------------------------------------------------------------------------------------
# scoring and baselines (pure numpy)
# ---------------------------------------------------------------------------------------------------------------


def day_metrics(day: SiteDay, car_w: FloatArray, window: tuple[int, int] = (0, 1440)) -> dict[str, float]:
    """Self-consumption of PV, PV into the car, and grid import during charging for a car schedule (W per minute),
    over the minutes ``window`` of the day.

    ``self_consumption``: PV used at home (house + car) / PV produced; ``solar_share``: car energy from PV / car
    energy (the house is served first); ``import_charging_wh``: grid import in the minutes the car drew power;
    ``import_for_car_wh``: the part of the import the car caused (import with the car - import without it).
    """
    a, b = window
    load, pv, car_w = day.load_w[a:b], day.pv_w[a:b], car_w[a:b]
    used = np.minimum(pv, load + car_w)
    surplus = np.maximum(pv - load, 0.0)
    grid = np.maximum(load + car_w - pv, 0.0)
    charging = car_w > 0
    pv_wh = float(pv.sum() / 60.0)
    car_wh = float(car_w.sum() / 60.0)
    return {
        "pv_wh": round(pv_wh, 1),
        "car_wh": round(car_wh, 1),
        "self_consumption": round(float(used.sum() / 60.0) / pv_wh, 4) if pv_wh > 0 else 0.0,
        "solar_share": round(float(np.minimum(car_w, surplus).sum() / 60.0) / car_wh, 4) if car_wh > 0 else 0.0,
        "import_charging_wh": round(float(grid[charging].sum() / 60.0), 1),
        "import_for_car_wh": round(float((grid - np.maximum(load - pv, 0.0)).sum() / 60.0), 1),
        "import_day_wh": round(float(grid.sum() / 60.0), 1),
    }


def _stay(car: Car) -> range:
    return range(car.arrive_min, car.depart_min)


def full_power_schedule(day: SiteDay, car: Car) -> FloatArray:
    """Charge at the charger's maximum from arrival until the car has its energy (or leaves)."""
    out = np.zeros(len(day.load_w))
    left = car.need_wh
    for k in _stay(car):
        if left <= 0:
            break
        wh = min(car.max_w / 60.0, left)
        out[k], left = wh * 60.0, left - wh
    return out


def oracle_schedule(day: SiteDay, car: Car, *, grid: bool = True) -> FloatArray:
    """Knows the day: the needed energy goes first into surplus minutes (at the surplus, within floor..max, best
    minutes first), then, if the sun did not give enough, at the floor into the minutes of highest surplus left
    (``grid=False``: not at all: the best that charging from surplus only can do)."""
    out = np.zeros(len(day.load_w))
    surplus = day.pv_w - day.load_w
    stay = np.array(list(_stay(car)))
    left = car.need_wh
    for k in stay[np.argsort(-surplus[stay], kind="stable")]:
        if left <= 0:
            break
        p = min(max(surplus[k], 0.0), car.max_w)
        if p < car.floor_w:
            continue
        wh = min(p / 60.0, left)
        out[k], left = wh * 60.0, left - wh
    if not grid:
        return out
    for k in stay[np.argsort(-(surplus[stay] - out[stay]), kind="stable")]:
        if left <= 0:
            break
        room = car.max_w - out[k] if out[k] > 0 else car.max_w
        step = max(car.floor_w - out[k], 0.0) if out[k] == 0 else 0.0
        add = min(max(step, min(room, car.floor_w)), room)
        wh = min(add / 60.0, left)
        out[k], left = out[k] + wh * 60.0, left - wh
    return out


# ---------------------------------------------------------------------------------------------------------------
# the closed loop
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DayRun:
    """What :func:`run_surplus_day` measured."""

    car_w: FloatArray
    limits: list[tuple[float, float | None]]
    metrics: dict[str, float]
    status: dict[str, Any]
    profiles: list[tuple[float, int | None, float, dict[str, Any]]]
    meter_registers: dict[str, float]
    soc: float
    window: tuple[int, int]
    transactions: list[int] = field(default_factory=list)
    wall_s: float = 0.0


async def _meter_read(ctl: SurplusController, t: float, limit_s: float = 20.0) -> None:
    """Wait (on the controller's state, not on time) until it observed a meter power taken at ``t`` or later."""
    async with asyncio.timeout(limit_s):
        while ctl.meter_seen is None or ctl.meter_seen < t:
            await ctl.meter_event.wait()
            ctl.meter_event.clear()


async def run_surplus_day(
    day: SiteDay,
    car: Car = Car(),  # frozen: a safe default
    *,
    mode: Mode | str = Mode.SURPLUS_ONLY,
    start_min: int = 0,
    end_min: int = 1440,
    behaviour: str = "honour",
    skew_s: float = 0.0,
    meter_values: bool = True,
    meter_silent_from: int | None = None,
    config: dict[str, Any] | None = None,
    on_minute: Callable[[int, SurplusController, ProfileCharger], Awaitable[None]] | None = None,
    data_dir: Path | None = None,
) -> DayRun:
    """Run the loop over minutes ``start_min..end_min`` of ``day`` with real parts (see the module docstring).

    ``meter_values=False``: the charger sends no MeterValues (and refuses to be asked). ``config``: overrides of the
    ``[ev.surplus]`` settings (the meter/ocpp ids are fixed here). ``on_minute``:
    awaited at the start of each minute after the car reported (tests inject faults there).
    """
    t0 = time.monotonic()
    clock = StepClock(day.start + start_min * 60.0)
    settings = Config.model_validate(
        {"mode": str(mode), "ocpp": "site-ocpp", "meter": "site-meter", "max_current": car.max_a,
         "voltage": car.voltage, **(config or {})}
    )  # fmt: skip
    site = SiteMeter()
    with contextlib.ExitStack() as stack:
        folder = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kyojo-surplus-")))
        store = stack.enter_context(SessionStore(folder / "sessions.db"))
        emu = stack.enter_context(PtyEmulator(Scenario(), model=site))
        central = CentralSystem(store, subject="home1", allow={"HOME"}, credentials={"HOME": KEY}, clock=clock.now)
        ctl = SurplusController(settings, lambda: central, clock)
        port = await central.start("127.0.0.1", 0)
        import serial
        import websockets
        from websockets.typing import Subprotocol

        meter = BRouteMeter(
            "site-meter", "home1", port_factory=lambda: serial.Serial(emu.path, 115200, timeout=0.02),
            rbid=RBID, password=PWD, clock=clock, poll_interval_s=60.0, export=True, command_timeout_s=2.0,
            session_options={"join_timeout_s": 2.0, "response_timeout_s": 1.0, "rejoin_grace_s": 0.2,
                             "scan_durations": (4,)},
        )  # fmt: skip

        async def read_meter() -> None:
            agen = meter.readings()
            try:
                async for r in agen:
                    ctl.observe(r)
            finally:
                await agen.aclose()

        meter_task = asyncio.create_task(read_meter())
        auth = {"Authorization": "Basic " + base64.b64encode(f"HOME:{KEY}".encode()).decode()}
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/ocpp/HOME", subprotocols=[Subprotocol("ocpp1.6")], additional_headers=auth
        )
        cp = ProfileCharger("HOME", ws, car, clock, behaviour=behaviour, skew_s=skew_s, meter_values=meter_values)
        cp_task = asyncio.create_task(cp.start())
        n = len(day.load_w)
        car_w = np.zeros(n)
        limits: list[tuple[float, float | None]] = []
        txs: list[int] = []
        try:
            await cp.call(call.BootNotification(charge_point_model="sim", charge_point_vendor="kyojo"))
            for k in range(start_min, end_min):
                t = day.start + k * 60.0
                muted = meter_silent_from is not None and k >= meter_silent_from
                emu.emulator.sc.mute = muted  # the meter stops answering: the driver's Gets time out
                ctl.meter_event.clear()
                await clock.advance_to(t)
                if k == car.depart_min:
                    await cp.unplug()
                if k == car.arrive_min:
                    txs.append(await cp.plug_in())
                await cp.report()
                while not central.readings.empty():
                    ctl.observe(central.readings.get_nowait())
                if not muted:
                    await _meter_read(ctl, t)
                if on_minute is not None:
                    await on_minute(k, ctl, cp)
                await ctl.step()
                limits.append((t, cp.limit_a if cp.tx is not None else None))
                car_w[k] = cp.integrate(60.0)
                site.add(day.load_w[k] - day.pv_w[k] + car_w[k], 60.0)
            await cp.unplug()
            await ctl.step()
        finally:
            cp_task.cancel()
            meter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await cp_task
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await meter_task
            await ws.close()
            await central.close()
        return DayRun(
            car_w=car_w,
            limits=limits,
            metrics=day_metrics(day, car_w, (start_min, end_min)),
            status=ctl.status(),
            profiles=cp.profiles,
            meter_registers={"import_wh": float(site.import_wh), "export_wh": float(site.export_wh)},
            soc=cp.soc,
            window=(start_min, end_min),
            transactions=txs,
            wall_s=round(time.monotonic() - t0, 2),
        )


def compare(day: SiteDay, car: Car, runs: dict[str, DayRun]) -> dict[str, Any]:
    """The figures of one day: each mode's run, full power on arrival, the oracle, and each run / oracle."""
    windows = {run.window for run in runs.values()} or {(0, 1440)}
    if len(windows) != 1:
        raise ValueError("the runs compared must cover the same minutes")
    (window,) = windows
    oracle = day_metrics(day, oracle_schedule(day, car), window)
    out: dict[str, Any] = {
        "day": day.name,
        "minutes": list(window),
        "need_wh": round(car.need_wh, 1),
        "full_power": day_metrics(day, full_power_schedule(day, car), window),
        "oracle": oracle,
        "oracle_no_import": day_metrics(day, oracle_schedule(day, car, grid=False), window),
    }
    for name, run in runs.items():
        scr = run.metrics["self_consumption"]
        out[name] = {
            **run.metrics,
            "vs_oracle": round(scr / oracle["self_consumption"], 4) if oracle["self_consumption"] else math.nan,
            "profiles_sent": run.status["counts"].get("profiles_sent", 0),
            "wall_s": run.wall_s,
        }
    return out


#: the load day the demo uses by default (a test excerpt with provenance: tests/data/nilm/README.md)
DEMO_LOAD = Path(__file__).resolve().parents[2] / "tests" / "data" / "nilm" / "ukdale_house2_2013-06-29_1min.csv.gz"


async def run_demo_surplus_day(
    *,
    modes: tuple[str, ...] = ("surplus-only",),
    weather: str = "variable",
    seed: int = 3,
    day: str = "2026-06-29",
    load_file: Path | None = None,
    car: Car = Car(),  # frozen: a safe default
) -> dict[str, Any]:
    """One simulated day of the surplus loop with real parts, for the demo: the figures of :func:`compare`
    (JSON-ready: each mode's self-consumption, solar share and import, full power on arrival, the oracle) plus,
    per mode, the limit the charger followed each minute of the car's stay (``limits_a``). Takes ~4 s per mode."""
    site = site_day(load_file or DEMO_LOAD, date.fromisoformat(day), weather=weather, seed=seed)
    runs = {m: await run_surplus_day(site, car, mode=m) for m in modes}
    out = compare(site, car, runs)
    for m, r in runs.items():
        out[m]["limits_a"] = [lim for _, lim in r.limits[car.arrive_min : car.depart_min]]
        out[m]["status"] = r.status
    return out


# ---------------------------------------------------------------------------------------------------------------
# a live site for a running agent (the demo)
# ---------------------------------------------------------------------------------------------------------------


def local_minute(t: float) -> tuple[date, int]:
    """The JST date and minute of the day of a UTC instant."""
    local = datetime.fromtimestamp(t + JST * 3600.0, UTC)
    return local.date(), local.hour * 60 + local.minute


class LiveSite:
    """A home's PV and EV charger next to a running agent, on the agent's clock (the demo's charging site).

    - :meth:`meter_model`: the smart meter behind the emulated BP35A1 (``PtyEmulator(model=site.meter_model())``,
      read by the agent's ``kind = "bmeter"``): 0xE7 = house load - PV + what the car draws now; 0xE0/0xE3 count
      bought and sold energy between Gets (0.01 kWh).
    - :meth:`run`: the charge point (:class:`ProfileCharger`, honouring profiles) connects to the agent's central
      system (``url``, HTTP Basic with ``key``), boots, plugs the car in at ``car.arrive_min`` with ``car.soc0`` and
      out at ``car.depart_min`` every local day, and sends MeterValues each simulated minute. Reconnects with a
      pause of a simulated minute when the agent is not (yet) listening.

    ``house_w(t)``: the home's load (W) at ``t`` (default: the demo NILM day's mains at that local minute); PV: the
    Haurwitz clear-sky model for Aizuwakamatsu with the seeded cloud process of ``weather`` for each local date.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        car: Car = Car(),  # frozen: a safe default
        house_w: Callable[[float], float] | None = None,
        weather: str = "variable",
        seed: int = 3,
        kwp: float = 4.5,
    ) -> None:
        self.clock, self.car, self.weather, self.seed, self.kwp = clock, car, weather, seed, kwp
        if house_w is None:
            load = load_day(DEMO_LOAD)
            house_w = lambda t: float(load[local_minute(t)[1]])  # noqa: E731 - a default of the same type
        self.house_w = house_w
        self._pv: dict[date, FloatArray] = {}
        self.charger: ProfileCharger | None = None
        self.import_wh = 0.0
        self.export_wh = 0.0
        self._last_get: float | None = None
        self.connects = 0

    def pv_w(self, t: float) -> float:
        """PV power (W) at ``t``."""
        day, minute = local_minute(t)
        if day not in self._pv:
            self._pv = {day: pv_day(day, kwp=self.kwp, weather=self.weather, seed=self.seed)}
        return float(self._pv[day][minute])

    def net_w(self, t: float) -> float:
        """The net power at the grid connection (W, import positive) at ``t``."""
        car = self.charger.draw_w() if self.charger is not None else 0.0
        return self.house_w(t) - self.pv_w(t) + car

    def meter_model(self) -> _LiveMeter:
        """The :class:`~drivers.meter.emulator.MeterModel` of this site."""
        return _LiveMeter(self)

    async def run(self, url: str, cp_id: str, key: str) -> None:
        """The charge point, until cancelled (see the class docstring)."""
        import websockets
        from websockets.typing import Subprotocol

        auth = {"Authorization": "Basic " + base64.b64encode(f"{cp_id}:{key}".encode()).decode()}
        while True:
            try:
                async with websockets.connect(
                    url, subprotocols=[Subprotocol("ocpp1.6")], additional_headers=auth
                ) as ws:
                    self.connects += 1
                    await self._session(ProfileCharger(cp_id, ws, self.car, self.clock))
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
                self.charger = None
                await self.clock.sleep(60.0)

    async def _session(self, cp: ProfileCharger) -> None:
        task = asyncio.create_task(cp.start())
        try:
            await cp.call(call.BootNotification(charge_point_model="kyojo-sim", charge_point_vendor="kyojo"))
            self.charger = cp
            last = self.clock.now()
            charged_on: date | None = None
            while not task.done():
                now = self.clock.now()
                cp.integrate(max(0.0, now - last))
                last = now
                day, minute = local_minute(now)
                home = self.car.arrive_min <= minute < self.car.depart_min
                if cp.tx is not None and not home:
                    await cp.unplug()
                elif cp.tx is None and home and charged_on != day:
                    await cp.plug_in(soc=self.car.soc0)
                    charged_on = day
                await cp.report()
                await self.clock.sleep(60.0)
        finally:
            self.charger = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class _LiveMeter:
    """:meth:`LiveSite.meter_model`."""

    def __init__(self, site: LiveSite) -> None:
        self.site = site

    def edt(self, epc: int) -> bytes | None:
        site, now = self.site, self.site.clock.now()
        net = site.net_w(now)
        if epc == 0xE7:
            if site._last_get is not None and now > site._last_get:
                wh = net * (now - site._last_get) / 3600.0
                site.import_wh, site.export_wh = site.import_wh + max(wh, 0.0), site.export_wh + max(-wh, 0.0)
            site._last_get = now
            return round(net).to_bytes(4, "big", signed=True)
        table = {
            0xD3: (1).to_bytes(4, "big"),
            0xD7: b"\x08",
            0xE1: b"\x02",  # 0.01 kWh
            0xE0: int(site.import_wh // 10).to_bytes(4, "big"),
            0xE3: int(site.export_wh // 10).to_bytes(4, "big"),
        }
        return table.get(epc)

    def after_get(self, epcs: tuple[int, ...]) -> None:
        """Nothing: the registers advance with the clock."""

    def first_inf(self) -> bytes | None:
        return None


def live_site_toml(home: str, *, port: int, cp_id: str, key: str, mode: str = "surplus-only") -> str:
    """The agent config a :class:`LiveSite` needs besides the home's ``bmeter`` entry (``<home>-meter``): the
    central system on ``port`` (loopback) with ``cp_id`` and its key, and ``[ev.surplus]``."""
    return f"""
[[devices]]
kind = "ocpp"
id = "{home}-ocpp"
subject = "{home}"
listen_port = {port}
charge_points = ["{cp_id}"]
credentials = {{ "{cp_id}" = "{key}" }}

[ev.surplus]
mode = "{mode}"
ocpp = "{home}-ocpp"
meter = "{home}-meter"
max_current = 30
"""

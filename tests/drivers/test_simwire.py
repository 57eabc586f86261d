"""Simulators on the wire, read by the production drivers: the values must be the simulators' ground truth.

- plugs: Tasmota / Shelly Gen2 / Zigbee2MQTT payloads on a real Mosquitto -> ``kind = "plugs"`` driver;
- smart meter: the emulated BP35A1 on a pty (through a stable symlink) -> ``kind = "bmeter"`` driver;
- garbage truck: NMEA on a pty (through a stable symlink) -> ``kind = "gnss"`` driver;
- heart-rate straps: Bumble virtual peripherals -> ``kind = "ble"`` with ``backend = "virtual"``.

Emitters and drivers share one scaled clock (x60), as the demo's gateways share the agent's clock. Every value
must match the simulator within the resolution of the protocol that carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import sim
from drivers.clock import ScaledClock
from drivers.gnss.nmea import GGA, KNOT_MPS, VTG, NmeaDecoder, parse_sentence
from drivers.meter.emulator import PWD, RBID
from drivers.plugs.parse import decode
from drivers.registry import BuildContext, build, validate
from drivers.sim.emit import AnchoredClock, clock_of_agent
from drivers.sim.emit.ble import heart_rate_measurement
from drivers.sim.emit.meter import SimulatedMeter, serve_meter
from drivers.sim.emit.nmea import NmeaEmitter, PtyLine, epoch, truck_epochs
from drivers.sim.emit.plugs import (
    RESOLUTION,
    PlugEmitter,
    PlugWire,
    appliances,
    household_plugs,
    plug_state,
    wait_connected,
)
from drivers.sim.energy import Meter, Plug
from drivers.sim.gnss import GarbageTruck
from kyojo.contract.vocab import Driver, Reading
from provisioning.local import Mosquitto

HOME = "home-001"
SEED = 7
SPEED = 60.0
#: 2024-06-03 09:00 JST: the truck is on its shift, the household awake
START = 1_717_372_800.0
EPS = 1e-6


def household() -> dict[str, Any]:
    return {s.device_id: s for s in sim.household(HOME, SEED)}


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout))


async def collect(drivers: list[Driver], seconds: float) -> list[Reading]:
    """Run the drivers for ``seconds`` of real time and return what they yielded."""
    out: list[Reading] = []

    async def pump(d: Driver) -> None:
        agen = d.readings()
        try:
            async for r in agen:
                out.append(r)
        finally:
            await agen.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(d)) for d in drivers]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for res in results:
        if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
            raise res
    return out


@contextlib.asynccontextmanager
async def running(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------------------------------------------------
# pure: payloads and sentences decode to the simulator's values
# ------------------------------------------------------------------------------------------------------------


def test_plug_payloads_decode_to_the_simulator_within_resolution() -> None:
    plugs = [s for s in household().values() if isinstance(s, Plug)]
    for w in household_plugs(plugs, HOME):
        for ts in (START + 10, START + 3600, START + 7 * 3600 + 50):
            st = plug_state(w.plug, ts)
            dec = decode(w.topic, w.payload(st), received_at=ts)
            got = {r.metric: r.value for r in dec.readings}
            assert set(got) == {"power", "energy", "voltage", "current"}, w.family
            for metric, value in got.items():
                assert abs(value - getattr(st, metric)) <= RESOLUTION[w.family][metric] / 2 + EPS, (w, metric)
            assert {r.device for r in dec.readings} == {w.native_key}


def test_nmea_epoch_is_valid_nmea_with_the_simulator_values() -> None:
    text = epoch(START + 0.0, 35.6812345, 139.7671234, 8.5, 359.996)
    lines = text.split("\r\n")[:-1]
    assert [ln[3:6] for ln in lines] == ["GGA", "RMC", "VTG"]
    for ln in lines:
        parse_sentence(ln)  # checksum and fields
    gga = parse_sentence(lines[0])
    assert isinstance(gga, GGA) and gga.lat is not None and gga.lon is not None
    assert abs(gga.lat - 35.6812345) < 1e-6 and abs(gga.lon - 139.7671234) < 1e-6
    assert gga.quality == 8  # says it is a simulator
    assert lines[1].split(",")[3] == "3540.8741" and lines[1].split(",")[5] == "13946.0274"
    vtg = parse_sentence(lines[2])
    assert isinstance(vtg, VTG) and vtg.speed_knots is not None
    assert abs(vtg.speed_knots * KNOT_MPS - 8.5) < 3e-4 and vtg.course_true_deg == 0.0
    dec = NmeaDecoder()
    assert len(dec.feed(text.encode())) == 3 and not dec.stats.rejects


def test_heart_rate_measurement_payload() -> None:
    from drivers.ble import gatt

    v = gatt.decode_heart_rate_measurement(heart_rate_measurement(72, [812.5, 830.078125]))
    assert (v.heart_rate_bpm, v.sensor_contact, v.rr_intervals_1_1024s) == (72, "detected", (832, 850))
    assert gatt.decode_heart_rate_measurement(heart_rate_measurement(60, [])).rr_intervals_ms is None


def test_anchored_clock_follows_agent_status(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(f'{{"at": {time.time() - 2.0}, "clock": {START}}}')
    clock = clock_of_agent(status, SPEED, timeout_s=1)
    assert abs(clock.now() - (START + 2.0 * SPEED)) < 1.0
    assert isinstance(clock, AnchoredClock)
    with pytest.raises(TimeoutError):
        clock_of_agent(tmp_path / "missing.json", SPEED, timeout_s=0.1)


def test_sim_only_filter(tmp_path: Path) -> None:
    cfg = validate({"kind": "sim", "profile": "household", "id": HOME, "seed": SEED, "only": [f"{HOME}-ev"]})
    ctx = BuildContext("gw", ScaledClock(START, SPEED), SPEED, tmp_path)
    assert [d.device_id for d in build(cfg, ctx)] == [f"{HOME}-ev"]
    with pytest.raises(ValueError, match="no simulated device"):
        build(validate({"kind": "sim", "profile": "household", "id": HOME, "only": ["nope"]}), ctx)


# ------------------------------------------------------------------------------------------------------------
# end to end: emitters + production drivers
# ------------------------------------------------------------------------------------------------------------


def _near_step(ts: float, period: float) -> list[float]:
    """The step instants a value received at ``ts`` may belong to (the latest, or the one before)."""
    k = math.floor(ts / period + 1e-9) * period
    return [k, k - period]


@pytest.mark.broker
@pytest.mark.slow
def test_plugs_meter_gnss_real_drivers(fresh_mosquitto: Mosquitto, tmp_path: Path) -> None:
    sims = household()
    plugs = [s for s in sims.values() if isinstance(s, Plug)]
    meter: Meter = sims[f"{HOME}-meter"]
    truck: GarbageTruck = sim.truck("truck-07", SEED)[0]  # type: ignore[assignment]
    wires = household_plugs(plugs, HOME)
    assert {w.family for w in wires} == {"tasmota", "shelly_gen2", "zigbee2mqtt"}

    async def main() -> None:
        clock = ScaledClock(START, SPEED)
        ctx = BuildContext("gw", clock, SPEED, tmp_path)
        meter_link = str(tmp_path / "bp35a1")
        gnss_link = str(tmp_path / "gnss")
        with serve_meter(meter, clock, link=meter_link) as emu, PtyLine(gnss_link) as line:
            entries = [
                {
                    "kind": "plugs", "id": f"{HOME}-plugs", "household": HOME, "broker_port": fresh_mosquitto.port,
                    "appliances": appliances(wires, HOME),
                },
                {
                    "kind": "bmeter", "id": f"{HOME}-meter", "household": HOME, "serial_port": meter_link,
                    "rbid": RBID, "password": PWD, "poll_interval": 5, "scan_durations": [4],
                },
                {
                    "kind": "gnss", "id": "truck-07-gnss", "subject": "truck-07", "port": gnss_link, "baud": 9600,
                    "thin_interval": 1, "thin_distance_m": 0, "accept_simulated": True,
                },
            ]  # fmt: skip
            drivers = [d for e in entries for d in build(validate(e), ctx)]
            plug_em = PlugEmitter(wires, clock, port=fresh_mosquitto.port)
            nmea_em = NmeaEmitter(truck, line, clock, batch_s=0.5)
            async with running(plug_em.run(), nmea_em.run()):
                await wait_connected(plug_em)
                got = await collect(drivers, 5.0)
            assert isinstance(emu.emulator.model, SimulatedMeter) and emu.emulator.model.gets >= 5
            assert line.dropped == 0
        check_plugs(got, wires)
        check_meter(got, meter)
        check_gnss(got, truck, nmea_em.epochs)

    run(main, timeout=40)
    assert not os.path.lexists(tmp_path / "bp35a1") and not os.path.lexists(tmp_path / "gnss")  # links removed


def check_plugs(got: list[Reading], wires: list[PlugWire]) -> None:
    by_dev = {w.plug.device_id: w for w in wires}
    plug_readings = [r for r in got if r.device in by_dev]
    for dev in by_dev:
        assert len([r for r in plug_readings if r.device == dev and r.metric == "power"]) >= 10, dev
    for r in plug_readings:
        w = by_dev[r.device]
        tol = RESOLUTION[w.family][r.metric] / 2 + EPS
        truths = [getattr(plug_state(w.plug, t), r.metric) for t in _near_step(r.ts, w.plug.period_s)]
        assert any(abs(r.value - t) <= tol for t in truths), (r, truths)
        assert r.subject == HOME and r.extra["native"] == w.native_key


def check_meter(got: list[Reading], meter: Meter) -> None:
    power = [r for r in got if r.device == f"{HOME}-meter" and r.metric == "power"]
    energy = [r for r in got if r.device == f"{HOME}-meter" and r.metric == "energy"]
    assert len(power) >= 5 and len(energy) >= 5
    model = SimulatedMeter(meter, ScaledClock(START, SPEED))
    for r in power:
        truths = [round(model.power_w(t)) for t in _near_step(r.ts, meter.period_s)]
        assert r.value in truths, (r, truths)
    unit = model.unit_wh
    for r in energy:
        # the register counts whole units up to the Get, which happened just before the driver stamped it
        exact = float(meter.energy_at(np.array([r.ts]))[0])
        assert exact - unit - 1.0 <= r.value <= exact + EPS, (r, exact)
        assert r.value % unit == pytest.approx(0.0, abs=1e-6) or r.value % unit == pytest.approx(unit, abs=1e-6)
    currents = [r for r in got if r.device in (f"{HOME}-meter-r", f"{HOME}-meter-t")]
    assert currents and all(r.metric == "current" for r in currents)


def check_gnss(got: list[Reading], truck: GarbageTruck, emitted: int) -> None:
    gnss = [r for r in got if r.device == "truck-07-gnss"]
    times = sorted({r.ts for r in gnss})
    assert len(times) >= 100 and emitted >= len(times)
    truth = {(r.ts, r.metric): r.value for r in truck.readings_between(times[0] - 1, times[-1])}
    tol = {
        "latitude": 0.5e-4 / 60 + 1e-7,  # half of 0.0001 minute
        "longitude": 0.5e-4 / 60 + 1e-7,
        "speed": 0.0005 * KNOT_MPS + 1e-6,  # knots with 3 decimals
        "course": 0.005 + 1e-6,
    }
    for r in gnss:
        assert r.ts == float(int(r.ts))  # the receiver's own (simulated) time, whole seconds
        assert abs(r.value - truth[(r.ts, r.metric)]) <= tol[r.metric], (r, truth[(r.ts, r.metric)])
    assert any(r.metric == "speed" and r.value > 1.0 for r in gnss)  # it did drive
    assert [t for t, _ in truck_epochs(truck, times[0] - 1, times[-1])] == times  # no epoch lost


def test_virtual_heart_rate_strap_real_ble_driver(tmp_path: Path) -> None:
    """``kind = "ble"``, ``backend = "virtual"``: the strap simulator notifies over a Bumble GATT server and the
    production bleak/Link/BleDriver path decodes the simulator's heart rate and RR intervals."""
    strap_id = f"{HOME}-p1-hr"
    strap = household()[strap_id]

    async def main() -> None:
        clock = ScaledClock(START, 20.0)
        ctx = BuildContext("gw", clock, 20.0, tmp_path)
        cfg = validate(
            {"kind": "ble", "id": strap_id, "address": "C0:00:00:00:01:01", "profile": "heart_rate",
             "subject": "p1", "backend": "virtual", "sim_seed": SEED}
        )  # fmt: skip
        (drv,) = build(cfg, ctx)
        got = await collect([drv], 4.0)
        hr = [r for r in got if r.metric == "heart_rate"]
        assert len(hr) >= 20, drv.health()
        for r in hr:
            truths = [
                x.value
                for t in _near_step(r.ts, 1.0)
                for x in strap.readings_between(t - 1, t)
                if x.metric == "heart_rate"
            ]
            assert r.value in truths, (r, truths)
        rr = [r.value for r in got if r.metric == "rr_interval"]
        truth_rr = {x.value for x in strap.readings_between(hr[0].ts - 5, hr[-1].ts + 1) if x.metric == "rr_interval"}
        assert rr and all(any(abs(v - t) < 1e-6 for t in truth_rr) for v in rr)
        h = drv.health()
        assert h["backend"] == "virtual" and h["battery_level"] is not None

    run(main, timeout=30)


def test_virtual_backend_is_a_double_the_ble_family_does_not_know() -> None:
    """``backend = "virtual"`` entries validate with the double's own model (``drivers.sim.emit.ble.Config``, with
    ``sim_seed``); the BLE family's model knows only ``backend = "bleak"``, so production code cannot reach the
    simulator even by building a config by hand."""
    from pydantic import ValidationError

    from drivers.ble.device import Config as BleConfig
    from drivers.sim.emit.ble import Config as VirtualConfig

    entry = {"kind": "ble", "id": "hr-1", "address": "C0:00:00:00:01:01", "profile": "heart_rate", "subject": "p1"}
    assert type(validate(entry)) is BleConfig and validate(entry).backend == "bleak"
    assert type(validate({**entry, "backend": "bleak"})) is BleConfig
    virtual = validate({**entry, "backend": "virtual", "sim_seed": SEED})
    assert type(virtual) is VirtualConfig and virtual.sim_seed == SEED
    with pytest.raises(ValidationError, match="heart_rate devices only"):
        validate({**entry, "backend": "virtual", "profile": "blood_pressure"})
    with pytest.raises(ValidationError, match="sim_seed"):
        validate({**entry, "sim_seed": 1})  # a real strap has no simulator seed
    with pytest.raises(ValidationError, match="backend"):
        BleConfig.model_validate({**entry, "backend": "virtual"})

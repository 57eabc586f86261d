"""Simulators: split invariance, determinism, fixed units, plausible ranges, physics consistency, SimDriver."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.clock import ScaledClock
from drivers.sim import (
    DEVICE_ID_RE,
    BloodPressureCuff,
    EVCharger,
    GarbageTruck,
    HeartRateStrap,
    Meter,
    Plug,
    PulseOximeter,
    SimDriver,
    Simulator,
    Thermometer,
    haversine_m,
    household,
    initial_bearing_deg,
    truck,
)
from kyojo.contract.vocab import METRICS, Reading

JST = dt.timezone(dt.timedelta(hours=9))
#: local midnight, Monday 2025-06-02 JST
DAY0 = dt.datetime(2025, 6, 2, tzinfo=JST).timestamp()
H = 3600.0


def at(hour: float, day: int = 0) -> float:
    """UTC instant of a local (JST) time on day DAY0 + day."""
    return DAY0 + day * 86400.0 + hour * H


def _plugs(seed: int) -> list[Plug]:
    return [Plug(f"h-{a}", "h", seed, appliance=a, grid_id="h") for a in ("fridge", "kettle", "washing_machine", "tv")]


#: kind -> (factory(seed), a window in local hours where the device is busy)
FACTORIES: dict[str, tuple[Callable[[int], Simulator], tuple[float, float]]] = {
    "hr_strap": (lambda s: HeartRateStrap("h-p1-hr", "p1", s), (8.0, 9.5)),
    "bp_cuff": (lambda s: BloodPressureCuff("h-p1-bp", "p1", s), (6.0, 22.0)),
    "thermometer": (lambda s: Thermometer("h-p1-temp", "p1", s, fever_prob_per_day=0.3), (6.0, 22.5)),
    "pulse_oximeter": (lambda s: PulseOximeter("h-p2-spo2", "p2", s), (22.0, 31.0)),
    "plug": (lambda s: Plug("h-kettle", "h", s, appliance="kettle"), (6.0, 13.0)),
    "plug_fridge": (lambda s: Plug("h-fridge", "h", s, appliance="fridge"), (20.0, 28.0)),
    "meter": (lambda s: Meter("h-meter", "h", s, _plugs(s)), (6.0, 12.0)),
    "ev_charger": (lambda s: EVCharger("h-ev", "h", s), (17.0, 32.0)),
    "gnss_truck": (lambda s: GarbageTruck("t1-gnss", "t1", s), (7.9, 9.0)),
}


def by_metric(rs: list[Reading]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (ts array, value array)."""
    acc: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rs:
        acc[r.metric].append((r.ts, r.value))
    return {m: (np.array([p[0] for p in v]), np.array([p[1] for p in v])) for m, v in acc.items()}


# ----------------------------------------------------------------------------------------------------------
# The contract: split invariance, determinism, seeds, units, ids
# ----------------------------------------------------------------------------------------------------------

_point = st.one_of(
    st.floats(0.0, 1.0, allow_nan=False),
    st.integers(0, 3600).map(lambda i: i / 3600.0),  # whole seconds: readings sit exactly on the split
)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fa=_point, fb=_point, fc=_point)
def test_split_invariance(kind: str, fa: float, fb: float, fc: float) -> None:
    make, (h0, h1) = FACTORIES[kind]
    a, b, c = sorted((fa, fb, fc))
    span = (h1 - h0) * H
    ta, tb, tc = (round(at(h0) + x * span, 3) for x in (a, b, c))
    whole = make(5).readings_between(ta, tc)
    first = make(5).readings_between(ta, tb)
    second = make(5).readings_between(tb, tc)
    assert first + second == whole
    assert all(ta < r.ts <= tb for r in first)
    assert all(tb < r.ts <= tc for r in second)
    # one instance reused over consecutive slices (caches warm) agrees too
    sim = make(5)
    assert sim.readings_between(ta, tb) + sim.readings_between(tb, tc) == whole


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_deterministic_sorted_and_seeded(kind: str) -> None:
    make, (h0, h1) = FACTORIES[kind]
    t0, t1 = at(h0), at(h1)
    one, two = make(11).readings_between(t0, t1), make(11).readings_between(t0, t1)
    assert one, f"{kind} emitted nothing in its busy window"
    assert one == two
    assert [r.ts for r in one] == sorted(r.ts for r in one)
    assert [r.value for r in make(12).readings_between(t0, t1)] != [r.value for r in one]
    sim = make(11)
    assert {r.metric for r in one} <= set(sim.metrics)
    assert sim.readings_between(t1, t0) == []
    assert sim.readings_between(t0, t0) == []


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_units_are_the_fixed_ones(kind: str) -> None:
    make, (h0, h1) = FACTORIES[kind]
    sim = make(3)
    for r in sim.readings_between(at(h0), at(h1)):
        assert r.unit == METRICS[r.metric].unit
        assert r.device == sim.device_id
        assert r.subject == sim.subject
        assert math.isfinite(r.value)


def test_household_layout() -> None:
    sims = household("home-7", 1)
    kinds = Counter(s.kind for s in sims)
    assert kinds == {"hr_strap": 2, "bp_cuff": 1, "pulse_oximeter": 1, "plug": 4, "meter": 1, "ev_charger": 1}
    assert len({s.device_id for s in sims}) == len(sims)
    for s in sims:
        assert DEVICE_ID_RE.fullmatch(s.device_id)
        assert isinstance(s, Simulator)
        if s.kind in ("hr_strap", "bp_cuff", "pulse_oximeter", "thermometer"):
            assert s.subject in ("p1", "p2")
        else:
            assert s.subject == "home-7"
    assert {s.device_id for s in sims if s.kind == "plug"} == {
        "home-7-fridge",
        "home-7-kettle",
        "home-7-washer",
        "home-7-tv",
    }
    three = household("h3", 1, persons=("a", "b", "c"))
    assert Counter(s.kind for s in three)["thermometer"] == 1
    (gnss,) = truck("truck-12", 4)
    assert gnss.subject == "truck-12"
    assert gnss.kind == "gnss_truck"
    with pytest.raises(ValueError, match="invalid device id"):
        household("-bad id", 1)


# ----------------------------------------------------------------------------------------------------------
# Health
# ----------------------------------------------------------------------------------------------------------


def test_heart_rate_strap_physiology() -> None:
    sim = HeartRateStrap("h-p1-hr", "p1", 21)
    m = by_metric(sim.readings_between(at(0), at(24)))
    ts, hr = m["heart_rate"]
    assert len(ts) == 86400 and np.all(np.diff(ts) == 1.0)
    assert hr.min() >= 38 and hr.max() <= 195
    assert np.all(hr == np.round(hr))
    local_h = (ts - DAY0) / H
    day = hr[(local_h >= 9) & (local_h < 21)]
    night = hr[(local_h >= 1) & (local_h < 5)]
    assert 58 <= np.median(day) <= 80
    assert np.median(night) < np.median(day) - 3
    # RR intervals agree with the heart rate: mean beat rate equals mean HR, one RR per beat
    rr_ts, rr = m["rr_interval"]
    assert rr.min() >= 300 and rr.max() <= 1700
    assert len(rr) / 86400 * 60 == pytest.approx(hr.mean(), rel=0.02)
    assert 60000 / rr.mean() == pytest.approx(hr.mean(), rel=0.03)
    # RR tracks 60000/HR second by second
    sec = np.ceil(rr_ts).astype(np.int64)
    hr_of = dict(zip(ts.astype(np.int64).tolist(), hr.tolist(), strict=True))
    expected = np.array([60000.0 / hr_of[s] for s in sec.tolist()])
    assert np.median(np.abs(rr / expected - 1)) < 0.05
    # battery: every 10 min, integer percent, never rising except at a cell change (a jump to ~100)
    bts, bat = m["battery_level"]
    assert len(bts) == 144
    steps = np.diff(bat)
    assert np.all(bat[1:][steps > 0] >= 99)
    assert (steps < 0).sum() >= 3


def test_activity_bouts_reach_exercise_rates() -> None:
    t = np.arange(at(0), at(0, day=3), 1.0)
    local_h = ((t - DAY0) % 86400) / H
    for seed in range(4):
        hr, env = HeartRateStrap("h-p1-hr", "p1", seed).heart_rate_model(t)
        assert hr.max() >= 110  # a few bouts a day
        assert hr.max() <= 150
        assert np.all(env[(local_h >= 1) & (local_h < 5)] == 0)  # nobody exercises at 3 am


def test_bp_cuff_two_sets_a_day_and_map() -> None:
    for profile, (lo, hi) in (("normal", (100, 140)), ("hypertensive", (125, 180))):
        sim = BloodPressureCuff("h-p1-bp", "p1", 8, profile=profile)  # type: ignore[arg-type]
        rs = sim.readings_between(at(0), at(0, day=10))
        by_ts: dict[float, dict[str, float]] = defaultdict(dict)
        for r in rs:
            by_ts[r.ts][r.metric] = r.value
        assert len(by_ts) == 20  # exactly two measurements a day
        days = Counter(int((ts - DAY0) // 86400) for ts in by_ts)
        assert set(days.values()) == {2}
        sbps = []
        for ts, s in by_ts.items():
            assert set(s) == set(sim.metrics)
            hour = ((ts - DAY0) % 86400) / H
            assert 6.7 <= hour <= 7.3 or 20.7 <= hour <= 21.3
            assert s["mean_arterial_pressure"] == pytest.approx(s["diastolic"] + (s["systolic"] - s["diastolic"]) / 3)
            assert s["systolic"] - s["diastolic"] >= 25
            assert 45 <= s["pulse_rate"] <= 100
            sbps.append(s["systolic"])
        assert lo <= np.mean(sbps) <= hi
        assert all(lo - 25 <= x <= hi + 25 for x in sbps)


def test_thermometer_range_and_fever() -> None:
    rs = Thermometer("h-p1-temp", "p1", 2).readings_between(at(0), at(0, day=14))
    per_day = Counter(int((r.ts - DAY0) // 86400) for r in rs)
    assert set(per_day.values()) <= {2, 3} and len(per_day) == 14
    assert all(36.2 <= r.value <= 37.0 for r in rs)
    feverish = Thermometer("h-p1-temp", "p1", 2, fever_prob_per_day=0.5).readings_between(at(0), at(0, day=14))
    assert max(r.value for r in feverish) >= 37.5
    assert max(r.value for r in feverish) <= 40.0


def test_pulse_oximeter_worn_overnight() -> None:
    m = by_metric(PulseOximeter("h-p2-spo2", "p2", 4).readings_between(at(12), at(36)))
    ts, spo2 = m["spo2"]
    assert len(ts) == 8 * 60  # every minute from 23:00 to 07:00
    hours = ((ts - DAY0) % 86400) / H
    assert np.all((hours >= 23) | (hours < 7))
    assert spo2.min() >= 95 and spo2.max() <= 99
    _, pr = m["pulse_rate"]
    assert pr.min() >= 40 and pr.max() <= 90


# ----------------------------------------------------------------------------------------------------------
# Energy
# ----------------------------------------------------------------------------------------------------------


def _check_counter(power: np.ndarray, energy: np.ndarray, period: float, power_resolution: float) -> None:
    """The energy counter is monotonic and its increments are the reported (interval-mean) power x period."""
    assert np.all(np.diff(energy) >= 0)
    de = np.diff(energy)
    expected = power[1:] * period / H
    assert np.all(np.abs(de - expected) <= power_resolution / 2 * period / H + 1e-6)
    assert energy[-1] - energy[0] == pytest.approx(expected.sum(), abs=len(de) * 1e-4 + 1e-6)


@pytest.mark.parametrize("appliance", ["fridge", "kettle", "washing_machine", "tv"])
def test_plug_physics(appliance: str) -> None:
    plug = Plug(f"h-{appliance}", "h", 9, appliance=appliance)  # type: ignore[arg-type]
    # a day and a half, crossing local midnight
    m = by_metric(plug.readings_between(at(0), at(36)))
    ts, power = m["power"]
    assert np.all(np.diff(ts) == 10.0) and len(ts) == 36 * 360
    _, energy = m["energy"]
    _check_counter(power, energy, 10.0, 0.1)
    _, volts = m["voltage"]
    _, amps = m["current"]
    assert volts.min() >= 97.0 and volts.max() <= 103.0
    assert np.allclose(amps, power / volts, atol=1e-3)
    assert amps.max() <= 15.0  # a Japanese outlet is 15 A
    assert power.min() >= 0.0
    day_wh = energy[360 * 24] - energy[0]
    lo, hi, peak = {
        "fridge": (500, 1300, (80, 260)),
        "kettle": (20, 700, (1150, 1300)),
        "washing_machine": (0, 900, (0, 1400)),
        "tv": (200, 700, (80, 160)),
    }[appliance]
    assert lo <= day_wh <= hi
    assert peak[0] <= power.max() <= peak[1]


def test_fridge_compressor_cycles() -> None:
    _, power = by_metric(Plug("h-fridge", "h", 1, appliance="fridge").readings_between(at(0), at(24)))["power"]
    on = power > 50
    starts = np.count_nonzero(on[1:] & ~on[:-1])
    assert 28 <= starts <= 42  # ~40 min cycles
    assert 0.25 <= on.mean() <= 0.5  # duty cycle ~15/40


def test_counter_is_split_invariant_over_days() -> None:
    """Energy read through a fresh instance in another week continues the same closed-form counter."""
    t = np.array([at(12, day=d) for d in range(0, 30, 3)])
    a = Plug("h-tv", "h", 3, appliance="tv")
    values = [a.energy_at(np.array([x]))[0] for x in t]
    assert np.all(np.diff(values) > 0)
    b = Plug("h-tv", "h", 3, appliance="tv")
    assert b.energy_at(t[::-1]).tolist() == values[::-1]


def test_meter_sums_plugs_plus_base_load() -> None:
    plugs = _plugs(6)
    meter = Meter("h-meter", "h", 6, plugs)
    t0, t1 = at(6), at(22)
    mm = by_metric(meter.readings_between(t0, t1))
    ts, power = mm["power"]
    total = np.zeros_like(power)
    for p in plugs:
        pts, pp = by_metric(p.readings_between(t0, t1))["power"]
        assert np.array_equal(pts, ts)
        total += pp
    base = power - total
    assert base.min() >= 120 and base.max() <= 340  # base load 155-295 W plus a few W of noise
    assert np.all(power >= total)
    _, energy = mm["energy"]
    _check_counter(power, energy, 10.0, 0.1)
    # the meter's counter moves with the plugs' counters plus the integral of the base load
    plug_wh = sum(float(np.diff(p.energy_at(np.array([t0, t1])))[0]) for p in plugs)
    base_wh = float(np.diff(meter.base_energy_at(np.array([t0, t1])))[0])
    assert float(np.diff(meter.energy_at(np.array([t0, t1])))[0]) == pytest.approx(plug_wh + base_wh, abs=0.05)


def test_ev_charger_session() -> None:
    ev = EVCharger("h-ev", "h", 13)
    m = by_metric(ev.readings_between(at(12), at(36)))
    pts, power = m["ev_power"]
    ets, energy = m["ev_energy"]
    assert np.array_equal(pts, ets)
    sts, soc = m["soc"]
    # one session: soc readings are contiguous every 10 s, soc rises to the target
    assert len(sts) > 100 and np.all(np.diff(sts) == 10.0)
    assert np.all(np.diff(soc) >= 0)
    assert soc[-1] == pytest.approx(90.0, abs=0.2)
    assert 18 <= ((sts[0] - DAY0) % 86400) / H <= 21.1
    charging = np.isin(pts, sts)
    assert power[charging].max() == pytest.approx(6000.0)
    assert np.all(power[~charging] == 0.0)
    assert power.max() <= 6000.0 + 1e-6
    # taper: above 80 % soc power falls below full power
    assert np.all(power[np.isin(pts, sts[soc > 81])] < 6000.0 - 1)
    # idle heartbeat every minute
    idle = pts[~charging]
    assert np.all(np.mod(idle, 60.0) == 0) and len(idle) > 500
    # counter exact vs mean power over each interval, and battery energy vs soc gain (efficiency 0.9)
    assert np.all(np.diff(energy) >= 0)
    expected = np.where(charging[1:], power[1:] * 10.0 / H, 0.0)  # idle heartbeats follow no charging
    assert np.all(np.abs(np.diff(energy) - expected) <= 0.05 * 10 / H + 1e-6)
    session_wh = energy[-1] - energy[0]
    assert session_wh * 0.9 == pytest.approx((soc[-1] - soc[0]) / 100 * 40_000, rel=0.03)


# ----------------------------------------------------------------------------------------------------------
# GNSS
# ----------------------------------------------------------------------------------------------------------


def test_truck_kinematics() -> None:
    sim = GarbageTruck("t1-gnss", "t1", 2)
    m = by_metric(sim.readings_between(at(0), at(24)))
    ts, lat = m["latitude"]
    _, lon = m["longitude"]
    _, speed = m["speed"]
    _, course = m["course"]
    assert len(ts) == 8 * 3600 and np.all(np.diff(ts) == 1.0)
    hours = (ts - DAY0) / H
    assert hours.min() >= 8 and hours.max() < 16
    assert np.all(np.abs(lat - 35.686) < 0.02) and np.all(np.abs(lon - 139.768) < 0.02)
    assert speed.min() == 0.0 and 7.0 <= speed.max() <= 11.0
    assert np.all((course >= 0) & (course < 360))
    # distance between consecutive fixes agrees with the reported speeds (accel <= 1.5 m/s^2)
    dist = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
    assert np.all(np.abs(dist - (speed[:-1] + speed[1:]) / 2) < 0.35)
    # accelerations physically plausible
    assert np.abs(np.diff(speed)).max() <= 1.5 + 0.02
    # stops of 30-90 s at collection points
    stopped = speed == 0
    edges = np.flatnonzero(np.diff(stopped.astype(int)))
    runs = np.diff(edges)[::2] if stopped[edges[0] + 1] else np.diff(edges)[1::2]
    assert runs[:-1].min() >= 29 and runs[:-1].max() <= 91
    # heading: while moving, course matches the bearing of the track
    moving = (speed[:-1] > 3) & (speed[1:] > 3)
    track = initial_bearing_deg(lat[:-1], lon[:-1], lat[1:], lon[1:])
    diff = np.abs((track - course[:-1] + 180) % 360 - 180)
    assert np.median(diff[moving]) < 2.0


# ----------------------------------------------------------------------------------------------------------
# Driver and performance
# ----------------------------------------------------------------------------------------------------------


def test_sim_driver_with_scaled_clock() -> None:
    plug = Plug("h-fridge", "h", 1, appliance="fridge")
    start = at(10)
    clock = ScaledClock(start, speed=3600)
    driver = SimDriver(plug, clock, tick_s=60.0, start=start)

    async def run() -> list[Reading]:
        got: list[Reading] = []
        async for r in driver.readings():
            got.append(r)
            if r.ts >= start + 1800:
                break
        return got

    got = asyncio.run(asyncio.wait_for(run(), timeout=30))
    assert driver.device_id == "h-fridge"
    ts = sorted({r.ts for r in got})
    assert ts[0] == start + 10 and ts[-1] >= start + 1800
    assert np.all(np.diff(ts) == 10.0)  # nothing missing, nothing twice
    assert got == plug.readings_between(start, got[-1].ts)[: len(got)]
    health = driver.health()
    assert health["readings_emitted"] == len(got)
    assert health["last_ts"] == got[-1].ts


def test_sim_driver_starts_at_clock_now() -> None:
    hr = HeartRateStrap("h-p1-hr", "p1", 1)
    clock = ScaledClock(at(9), speed=3600)
    driver = SimDriver(hr, clock)
    bounds: list[float] = []

    async def run() -> list[Reading]:
        got: list[Reading] = []
        bounds.append(clock.now())
        async for r in driver.readings():
            if not got:
                bounds.append(clock.now())
            got.append(r)
            if r.ts >= got[0].ts + 120:
                break
        return got

    got = asyncio.run(asyncio.wait_for(run(), timeout=30))
    hrs = [r for r in got if r.metric == "heart_rate"]
    assert len(hrs) >= 110
    # began where the clock was when it started (a fast clock moves on meanwhile: bounded by its readings around)
    assert bounds[0] - 1 <= hrs[0].ts <= bounds[1]


def test_household_six_hours_in_one_go() -> None:
    """Six hours of a household and a truck in one call (its speed is bench/edge.py's to measure, not a test's)."""
    sims = household("home-1", 42) + truck("truck-1", 42)
    n = sum(len(s.readings_between(at(8), at(14))) for s in sims)
    assert n > 150_000


def test_a_person_living_alone_switches_nothing_on_in_the_quiet_window() -> None:
    from drivers.sim import living_alone

    quiet = (DAY0 - 2 * H, DAY0 + 14 * H)  # 22:00 the evening before until 14:00
    sims = {s.device_id: s for s in living_alone("h2", 7, quiet=quiet)}
    usual = {s.device_id: s for s in living_alone("h2", 7)}
    meter = sims["h2-meter"]
    assert isinstance(meter, Meter) and meter.period_s == 60.0
    t = np.arange(DAY0 - 3 * H, DAY0 + 2 * 24 * H, 10.0)
    for name in ("kettle", "washer", "tv"):
        plug, free = sims[f"h2-{name}"], usual[f"h2-{name}"]
        assert isinstance(plug, Plug) and isinstance(free, Plug)
        inside = (t > quiet[0] + 3 * H) & (t < quiet[1])  # on-periods started before the window may run into it
        assert plug.power_at(t[inside]).max() <= plug.standby_w + 1e-9, name
        assert free.power_at(t).max() > 50.0, name  # the same person on a usual day does use it
        after = t >= quiet[1]
        assert np.array_equal(plug.power_at(t[after]), free.power_at(t[after]))  # same life outside the window
        # the counter is still the exact integral of the power
        e = plug.energy_at(t)
        p = plug.power_at(t[1:])
        assert np.allclose(np.diff(e), p * 10.0 / 3600.0, atol=1e-6), name
    fridge = sims["h2-fridge"]
    assert isinstance(fridge, Plug) and fridge.power_at(t[(t > quiet[0]) & (t < quiet[1])]).max() > 50.0

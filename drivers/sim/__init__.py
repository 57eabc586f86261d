"""Deterministic, seeded simulators of every device family, producing :class:`kyojo.contract.vocab.Reading`.

Each simulator's readings are a pure function of (seed, device id, time): ``readings_between(t0, t1)`` is
split-invariant and reproducible, so tests can pass simulated hours in seconds (with
:class:`drivers.clock.ScaledClock` and :class:`SimDriver`) and compute ground truth independently.

Factories: :func:`household` (a typical home), :func:`living_alone` (a person living alone, for the watch-over)
and :func:`truck` (a garbage truck's GNSS).
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.sim.base import (
    COUNTER_ORIGIN,
    DEVICE_ID_RE,
    JST_OFFSET_H,
    BaseSimulator,
    CounterRng,
    Simulator,
    stable_key,
)
from drivers.sim.driver import SimDriver
from drivers.sim.energy import APPLIANCES, Appliance, Meter, Plug, QuietPlug
from drivers.sim.ev import EVCharger
from drivers.sim.gnss import DEFAULT_ROUTE, GarbageTruck, haversine_m, initial_bearing_deg
from drivers.sim.health import BloodPressureCuff, HeartRateStrap, PulseOximeter, Thermometer

__all__ = [
    "APPLIANCES",
    "COUNTER_ORIGIN",
    "DEFAULT_ROUTE",
    "DEVICE_ID_RE",
    "JST_OFFSET_H",
    "BaseSimulator",
    "BloodPressureCuff",
    "CounterRng",
    "EVCharger",
    "GarbageTruck",
    "HeartRateStrap",
    "Meter",
    "Plug",
    "PulseOximeter",
    "QuietPlug",
    "SimDriver",
    "Simulator",
    "Thermometer",
    "haversine_m",
    "household",
    "initial_bearing_deg",
    "living_alone",
    "stable_key",
    "truck",
]


def household(
    home_id: str,
    seed: int,
    *,
    persons: Sequence[str] = ("p1", "p2"),
    tz_offset_h: float = JST_OFFSET_H,
    bp_profile: str = "normal",
) -> list[Simulator]:
    """A typical home's devices.

    Per person (in order): a heart-rate strap ``{home}-{person}-hr`` and one more wearable, cycling through a
    blood-pressure cuff ``-bp`` (``bp_profile``), a pulse oximeter ``-spo2`` and a thermometer ``-temp``; subject
    = the person. Then four plugs ``{home}-fridge``, ``-kettle``, ``-washer``, ``-tv``, the meter
    ``{home}-meter`` summing them, and the EV charger ``{home}-ev``; subject = ``home_id`` (the household).
    """
    if bp_profile not in ("normal", "hypertensive"):
        raise ValueError(f"unknown blood-pressure profile {bp_profile!r}")
    sims: list[Simulator] = []
    for i, person in enumerate(persons):
        sims.append(HeartRateStrap(f"{home_id}-{person}-hr", person, seed, tz_offset_h=tz_offset_h))
        which = i % 3
        if which == 0:
            sims.append(
                BloodPressureCuff(
                    f"{home_id}-{person}-bp",
                    person,
                    seed,
                    tz_offset_h=tz_offset_h,
                    profile="hypertensive" if bp_profile == "hypertensive" else "normal",
                )
            )
        elif which == 1:
            sims.append(PulseOximeter(f"{home_id}-{person}-spo2", person, seed, tz_offset_h=tz_offset_h))
        else:
            sims.append(Thermometer(f"{home_id}-{person}-temp", person, seed, tz_offset_h=tz_offset_h))
    names: dict[Appliance, str] = {"fridge": "fridge", "kettle": "kettle", "washing_machine": "washer", "tv": "tv"}
    plugs = [
        Plug(f"{home_id}-{name}", home_id, seed, appliance=app, tz_offset_h=tz_offset_h, grid_id=home_id)
        for app, name in names.items()
    ]
    sims.extend(plugs)
    sims.append(Meter(f"{home_id}-meter", home_id, seed, plugs, tz_offset_h=tz_offset_h))
    sims.append(EVCharger(f"{home_id}-ev", home_id, seed, tz_offset_h=tz_offset_h))
    return sims


def living_alone(
    home_id: str,
    seed: int,
    *,
    quiet: tuple[float, float] | None = None,
    meter_period_s: float = 60.0,
    tz_offset_h: float = JST_OFFSET_H,
) -> list[Simulator]:
    """A person living alone: plugs ``{home}-fridge``, ``-kettle``, ``-washer``, ``-tv`` and the meter
    ``{home}-meter`` summing them (read every ``meter_period_s``, as a B-route meter is); subject = ``home_id``.

    ``quiet`` (POSIX s, ``[start, end)``): the person switches nothing on in that window (the fridge runs on), as
    on a morning they do not get up -- what the watch-over processor must notice.
    """
    names: dict[Appliance, str] = {"fridge": "fridge", "kettle": "kettle", "washing_machine": "washer", "tv": "tv"}
    plugs: list[Plug] = []
    for app, name in names.items():
        dev = f"{home_id}-{name}"
        if quiet is not None and app != "fridge":
            plugs.append(
                QuietPlug(dev, home_id, seed, appliance=app, tz_offset_h=tz_offset_h, grid_id=home_id, quiet=quiet)
            )
        else:
            plugs.append(Plug(dev, home_id, seed, appliance=app, tz_offset_h=tz_offset_h, grid_id=home_id))
    meter = Meter(f"{home_id}-meter", home_id, seed, plugs, period_s=meter_period_s, tz_offset_h=tz_offset_h)
    return [*plugs, meter]


def truck(truck_id: str, seed: int, *, tz_offset_h: float = JST_OFFSET_H) -> list[Simulator]:
    """A garbage truck: one GNSS receiver ``{truck_id}-gnss`` on the default Tokyo route; subject = truck_id."""
    return [GarbageTruck(f"{truck_id}-gnss", truck_id, seed, tz_offset_h=tz_offset_h)]

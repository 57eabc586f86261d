"""The one vocabulary every part speaks: ``Reading``, ``Event``, the fixed unit of each metric, identifiers.

This module imports only the standard library so a parser can depend on it without pulling in I/O. Moved here
from the old ``drivers/base.py`` (removed) so that the cloud never needs
gateway code; the error types live in :mod:`kyojo.contract.errors`.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from kyojo.contract.errors import KyojoError, ParseError, ReadingError

__all__ = [
    "GLUCOSE_MMOL_TO_MGDL",
    "ID_PATTERN",
    "MAX_POWER_W",
    "METRICS",
    "Aggregation",
    "Category",
    "Clock",
    "Driver",
    "Event",
    "KyojoError",
    "MetricSpec",
    "ParseError",
    "Reading",
    "ReadingError",
    "plausible_delta",
    "reading",
    "reading_json",
    "valid_id",
]


class Category(StrEnum):
    """Personal-data category of a metric; consent purposes are granted per category."""

    HEALTH = "health"
    ENERGY = "energy"
    EV = "ev"
    MOBILITY = "mobility"
    #: signs of life in a home (watch-over, safety status): events only, derived on the gateway, never a reading
    WELLBEING = "wellbeing"
    DEVICE = "device"  # device housekeeping (battery level): never personal, never released in v1


class Aggregation(StrEnum):
    """How a metric aggregates over a window."""

    GAUGE = "gauge"  # count/mean/min/max/last
    COUNTER = "counter"  # monotonically increasing: delta over the window, plus last


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric's fixed unit, category and aggregation.

    ``max_rate`` (counters only): the most the counter can physically grow per second, in ``unit`` per second
    (Wh/s for energy), i.e. the largest device family's power ceiling (:data:`MAX_POWER_W`) / 3600. Both the
    gateway (:mod:`drivers.counter`) and the cloud read it through :func:`plausible_delta`; None: no ceiling.
    """

    unit: str
    category: Category
    aggregation: Aggregation = Aggregation.GAUGE
    max_rate: float | None = None


#: Generous ceilings on the power (W) one device of a family can deliver, so that a counter delta above
#: ``ceiling x elapsed`` is a glitch, not energy. Each is well above what the family can draw, since a
#: wrong ceiling holds real readings (counted, energy lost), while a loose one only lets a glitch through that
#: is still bounded:
#:
#: - ``plug``: one metered outlet or relay. Japanese outlets are 15 A x 100 V = 1.5 kW, EU/UK outlets 16 A x
#:   230 V = 3.7 kW, and the largest Tasmota metering relay (Sonoff POW R3) switches 25 A: 25 A x 240 V = 6 kW.
#: - ``meter``: a whole home or small site. A Japanese low-voltage contract is at most 60 A x 200 V = 12 kVA
#:   (lighting) or 50 kVA (low-voltage power), an EU three-phase 63 A supply 43 kW; B-route meters and clamp
#:   meters (Shelly EM/3EM) stay on low-voltage supplies: 100 kW.
#: - ``ev_charger``: DC fast chargers reach 350-400 kW per outlet (CCS, ABB Terra 360); 500 kW covers them.
MAX_POWER_W: Mapping[str, float] = {"plug": 6_000.0, "meter": 100_000.0, "ev_charger": 500_000.0}

_HOUR_S = 3600.0

#: Units are fixed per metric, here and only here, so nothing downstream converts twice.
METRICS: Mapping[str, MetricSpec] = {
    "heart_rate": MetricSpec("bpm", Category.HEALTH),
    "rr_interval": MetricSpec("ms", Category.HEALTH),
    "systolic": MetricSpec("mmHg", Category.HEALTH),
    "diastolic": MetricSpec("mmHg", Category.HEALTH),
    "mean_arterial_pressure": MetricSpec("mmHg", Category.HEALTH),
    "pulse_rate": MetricSpec("bpm", Category.HEALTH),
    "body_temperature": MetricSpec("degC", Category.HEALTH),
    "glucose": MetricSpec("mg/dL", Category.HEALTH),
    "spo2": MetricSpec("%", Category.HEALTH),
    "weight": MetricSpec("kg", Category.HEALTH),
    "body_fat": MetricSpec("%", Category.HEALTH),
    "battery_level": MetricSpec("%", Category.DEVICE),
    "power": MetricSpec("W", Category.ENERGY),
    "energy": MetricSpec("Wh", Category.ENERGY, Aggregation.COUNTER, MAX_POWER_W["meter"] / _HOUR_S),
    "voltage": MetricSpec("V", Category.ENERGY),
    "current": MetricSpec("A", Category.ENERGY),
    "ev_power": MetricSpec("W", Category.EV),
    "ev_energy": MetricSpec("Wh", Category.EV, Aggregation.COUNTER, MAX_POWER_W["ev_charger"] / _HOUR_S),
    "soc": MetricSpec("%", Category.EV),
    "latitude": MetricSpec("deg", Category.MOBILITY),
    "longitude": MetricSpec("deg", Category.MOBILITY),
    "speed": MetricSpec("m/s", Category.MOBILITY),
    "course": MetricSpec("deg", Category.MOBILITY),
}

#: The one identifier pattern (gateway, device, subject, consent, charger ids): ASCII letters and digits, then
#: up to 63 of letters, digits, ``_ . -``. For pydantic ``Field(pattern=...)`` (its Rust regex reads ``$`` as the
#: end of the text). Python code calls :func:`valid_id`: ``re.match`` with ``$`` would also accept a trailing
#: newline.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_ID_FULL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def valid_id(value: object) -> bool:
    """True when ``value`` is a str that is an identifier as a whole (no trailing newline, no prefix match)."""
    return isinstance(value, str) and _ID_FULL.fullmatch(value) is not None


def plausible_delta(metric: str, delta: float, seconds: float) -> bool:
    """Whether a counter may have grown by ``delta`` (the metric's unit) in ``seconds``.

    False for an unknown metric, a non-finite or negative delta (a counter never decreases: a decrease is a
    reset or a glitch, see :mod:`drivers.counter`), a negative or non-finite time, or more than the metric's
    ``max_rate`` x ``seconds`` (what the largest device family's supply could deliver in that time). A metric
    without ``max_rate`` bounds nothing. Register resolution is the caller's to add: over a one-minute window
    at the 100 kW ceiling the bound is 1.7 kWh, far above any register step.
    """
    spec = METRICS.get(metric)
    if spec is None or not (math.isfinite(delta) and math.isfinite(seconds)) or delta < 0 or seconds < 0:
        return False
    if spec.max_rate is None:
        return True
    return delta <= spec.max_rate * seconds * (1.0 + 1e-9)


#: mmol/L -> mg/dL for glucose (molar mass 180.16 g/mol).
GLUCOSE_MMOL_TO_MGDL = 18.016


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement. ``ts`` is POSIX seconds (UTC); ``unit`` must be the metric's fixed unit."""

    device: str
    subject: str
    metric: str
    value: float
    unit: str
    ts: float
    extra: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        spec = METRICS.get(self.metric)
        if spec is None:
            raise ReadingError(f"unknown metric {self.metric!r}")
        if self.unit != spec.unit:
            raise ReadingError(f"{self.metric} must be in {spec.unit}, got {self.unit!r}")
        if not math.isfinite(self.value):
            raise ReadingError(f"{self.metric} value is not finite: {self.value!r}")

    @property
    def category(self) -> Category:
        return METRICS[self.metric].category


def reading_json(r: Reading) -> dict[str, object]:
    """A Reading as a JSON-ready object (the ``kyojo decode`` commands print these)."""
    return {
        "device": r.device,
        "subject": r.subject,
        "metric": r.metric,
        "value": r.value,
        "unit": r.unit,
        "ts": r.ts,
        "extra": dict(r.extra),
    }


def reading(device: str, subject: str, metric: str, value: float, ts: float) -> Reading:
    """Build a Reading in the metric's fixed unit."""
    return Reading(device, subject, metric, float(value), METRICS[metric].unit, ts)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, as opposed to a measurement: a pickup at a collection point, a health alert.

    ``ts`` is POSIX seconds (UTC) when it happened (for an episode, when it ended); ``id`` is stable for the same
    event, so a re-delivery or a re-detection after a restart is stored once.
    """

    id: str
    kind: str
    category: Category
    subject: str
    device: str
    ts: float
    severity: str = "info"  # info | warning | urgent
    attrs: Mapping[str, str | float | int | bool] = field(default_factory=dict)


class Clock(Protocol):
    """Time source injected into drivers and the agent, so tests can pass hours in seconds."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class Driver(Protocol):
    """What the agent runs for each configured device: an async stream of Readings.

    ``readings()`` does the I/O (or simulation); reconnecting is the driver's job, and an error it cannot
    recover from propagates to the agent's supervisor, which restarts the driver with backoff.
    """

    device_id: str

    def readings(self) -> AsyncIterator[Reading]: ...

    def health(self) -> Mapping[str, object]: ...

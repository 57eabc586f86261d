"""A PV-and-house-load day for the surplus loop: clear-sky PV with a stated cloud process, and a real mains day.

PV (Aizuwakamatsu, 37.49 N, 139.93 E, JST): solar position from Spencer's (1971) Fourier series for the
declination and the equation of time; clear-sky global horizontal irradiance from Haurwitz's model
(``GHI = 1098 cos z exp(-0.059 / cos z)`` W/m2, z the zenith angle; Haurwitz 1945, as in pvlib's ``haurwitz``);
the array turns irradiance into AC power with a performance ratio: ``P = kWp x PR x GHI x kc`` (a horizontal-
equivalent array, W with GHI in W/m2 and kWp in kW x 1000 / 1000).

Cloud process (the clearness index ``kc``, one value per minute): a three-state Markov chain (clear, broken,
overcast) with the per-minute transition matrix of the chosen weather, seeded; within a state ``kc`` is an AR(1)
process around the state's mean (``kc_t = m + phi (kc_{t-1} - m) + sigma e_t``), clipped to 0.05..1.15 (broken
cloud briefly enhances irradiance above clear sky). Means 1.0 / 0.6 / 0.25, phi 0.9, sigma 0.01 / 0.12 / 0.04.

House load: the ``mains_w`` column of a real 1-minute NILM day (``tests/data/nilm``: UK-DALE/REFIT, CC BY 4.0,
provenance in that folder's README), replayed at the same *local* clock minute in Japan (the UK day is read in
its own local time, ``source_utc_offset_h``: BST = 1); gap rows (empty) are filled with the previous value.
"""

from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from drivers.sim.base import FloatArray

LAT, LON = 37.49, 139.93  # Aizuwakamatsu
JST = 9.0
MINUTES = 1440

#: weather -> per-minute transition matrix between (clear, broken, overcast)
WEATHER: dict[str, list[list[float]]] = {
    "clear": [[0.998, 0.002, 0.0], [0.05, 0.95, 0.0], [0.02, 0.0, 0.98]],
    "variable": [[0.97, 0.03, 0.0], [0.03, 0.96, 0.01], [0.0, 0.03, 0.97]],
    "overcast": [[0.9, 0.05, 0.05], [0.0, 0.95, 0.05], [0.0, 0.01, 0.99]],
}
_KC_MEAN = (1.0, 0.6, 0.25)
_KC_SIGMA = (0.01, 0.12, 0.04)
_PHI = 0.9


def solar_cos_zenith(ts_utc: FloatArray, lat: float = LAT, lon: float = LON) -> FloatArray:
    """cos of the solar zenith angle at UTC instants (Spencer 1971 declination and equation of time)."""
    year = datetime.fromtimestamp(float(ts_utc[0]), UTC).year if len(ts_utc) else 2000
    jan1 = datetime(year, 1, 1, tzinfo=UTC).timestamp()
    doy = (ts_utc - jan1) / 86_400.0 + 1.0  # fractional day of the year
    b = 2 * np.pi * (doy - 1) / 365.0
    decl = (
        0.006918 - 0.399912 * np.cos(b) + 0.070257 * np.sin(b) - 0.006758 * np.cos(2 * b)
        + 0.000907 * np.sin(2 * b) - 0.002697 * np.cos(3 * b) + 0.00148 * np.sin(3 * b)
    )  # fmt: skip
    eot_min = 229.18 * (
        0.000075 + 0.001868 * np.cos(b) - 0.032077 * np.sin(b) - 0.014615 * np.cos(2 * b) - 0.040849 * np.sin(2 * b)
    )
    utc_min = (ts_utc % 86_400.0) / 60.0
    solar_min = utc_min + 4.0 * lon + eot_min
    hour_angle = np.radians(solar_min / 4.0 - 180.0)
    phi = math.radians(lat)
    out: FloatArray = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
    return out


def haurwitz_ghi(cos_z: FloatArray) -> FloatArray:
    """Clear-sky global horizontal irradiance (W/m2), Haurwitz; 0 with the sun below the horizon."""
    cz = np.clip(cos_z, 1e-6, None)
    ghi: FloatArray = np.where(cos_z > 0.0, 1098.0 * cz * np.exp(-0.059 / cz), 0.0)
    return ghi


def clearness(weather: str, seed: int, n: int = MINUTES) -> FloatArray:
    """A clearness-index series (see the module docstring), reproducible from ``seed``."""
    if weather not in WEATHER:
        raise ValueError(f"weather is one of {', '.join(WEATHER)}")
    p = np.array(WEATHER[weather])
    rng = np.random.default_rng(seed)
    state = {"clear": 0, "variable": 0, "overcast": 2}[weather]
    kc = _KC_MEAN[state]
    out = np.empty(n)
    for i in range(n):
        state = int(rng.choice(3, p=p[state]))
        m = _KC_MEAN[state]
        kc = m + _PHI * (kc - m) + _KC_SIGMA[state] * rng.standard_normal()
        kc = min(max(kc, 0.05), 1.15)
        out[i] = kc
    return out


def pv_day(day: date, *, kwp: float = 4.5, pr: float = 0.8, weather: str = "variable", seed: int = 1) -> FloatArray:
    """AC power (W) of the PV system for each minute of the JST day ``day`` (minute means, centre of the minute)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=JST)
    ts: FloatArray = start.timestamp() + 60.0 * np.arange(MINUTES, dtype=np.float64) + 30.0
    ghi = haurwitz_ghi(solar_cos_zenith(ts))
    pv: FloatArray = kwp * pr * ghi * clearness(weather, seed)
    return pv


def load_day(path: Path, *, source_utc_offset_h: float = 1.0, day_index: int = 0) -> FloatArray:
    """House load (W) per local minute from a 1-minute NILM file (``timestamp,mains_w,...``): its ``day_index``-th
    UTC day from the first row; see the module docstring."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    first = day_index * MINUTES
    if len(rows) < first + MINUTES:
        raise ValueError(f"{path}: {len(rows)} rows, day {day_index} needs {first + MINUTES}")
    values = np.empty(MINUTES)
    last = 0.0
    for i, row in enumerate(rows[first : first + MINUTES]):
        text = row.get("mains_w") or ""
        last = float(text) if text else last
        values[i] = last
    if values[0] == 0.0:
        values[values == 0.0] = float(np.median(values[values > 0]))
    shift = round(source_utc_offset_h * 60)
    out: FloatArray = np.roll(values, shift)  # UTC row i is local minute i + shift
    return out


@dataclass(frozen=True, slots=True)
class SiteDay:
    """One day at one home: minute arrays (W) of house load and PV, starting at JST midnight (``start`` UTC s)."""

    name: str
    start: float
    load_w: FloatArray
    pv_w: FloatArray


def site_day(
    load_file: Path,
    day: date,
    *,
    weather: str = "variable",
    seed: int = 1,
    kwp: float = 4.5,
    utc_offset_h: float = 1.0,
    day_index: int = 0,
) -> SiteDay:
    """The load of ``load_file`` (its ``day_index``-th day) with the PV of ``day`` in Aizuwakamatsu under
    ``weather`` (seeded)."""
    start = (datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=JST)).timestamp()
    stem = Path(load_file).name.split("_1min")[0] + (f"-d{day_index}" if day_index else "")
    name = f"{stem}+pv-{day.isoformat()}-{weather}-{seed}"
    return SiteDay(
        name,
        start,
        load_day(load_file, source_utc_offset_h=utc_offset_h, day_index=day_index),
        pv_day(day, kwp=kwp, weather=weather, seed=seed),
    )

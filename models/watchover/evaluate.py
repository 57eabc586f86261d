"""The watch-over protocol: real households' meter data, replayed minute by minute, with absences cut in.

Per house (every file of one house in the shared NILM format, in time order, gaps kept as gaps):

- **False alerts.** The untouched record is replayed through :class:`~models.watchover.rhythm.Watch` (it learns
  online, from the days before only). Every *absence* raised after the learning days on a day the household was
  at home is a false alert; ``false_per_30_days`` divides by the *normal household-days* (complete days, after
  learning, with any activity). Days without any activity at all are the household away (``away_days``): a
  real watch-over gateway is told with away mode, so an alert on such a day is counted apart (``away_alerts``).
- **Absences.** Copies of the record in which, on every 9th day from day 20 (those on
  which the watch was armed, past its learning and calibration days, count), nothing happens from the cut on
  (``00:00``: the first-morning activity is missing; ``08:00``: the home goes quiet after breakfast) until the
  day ends: the meter carries the same day's 02:00-05:00 base load (fridge, standby) on a loop and the strong-
  signal plugs stay off. ``delay_h`` runs from when activity *normally starts* after the cut (the median first
  active 15-minute slot after the cut over the previous days of the same type, the profile's own data) to the
  absence alert; an absence not flagged by noon the next day is missed. Target: within 3 h, and at most one
  false alert per 30 normal household-days.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from statistics import median
from zoneinfo import ZoneInfo

import numpy as np

from models.nilm.data import load_csv
from models.watchover.rhythm import SLOT_MIN, ActivityDetector, Day, Params, Watch, local_midnight, usual_start

#: the shared data are UK households, their timestamps UTC
DEFAULT_TZ = "Europe/London"
#: plugs whose switching on is a person's doing (kettle and microwave are the ones the shared data meter)
STRONG = ("kettle", "microwave")
STRONG_ON_W = 500.0
CUTS_MIN = (0, 8 * 60)
FIRST_CUT_DAY = 20
EVERY = 9
TARGET_DELAY_H = 3.0

_HOUSE = re.compile(r"^(?P<house>.+?)_\d{4}-\d{2}(?:-\d{2})?_1min\.csv(?:\.gz)?$")


@dataclass
class Household:
    name: str
    ts: np.ndarray
    mains: np.ndarray
    strong: np.ndarray  # max power of the strong-signal plugs (0 where none)


def households(paths: Iterable[Path]) -> list[Household]:
    """The files grouped by house (name before the month), each house one regular series with gaps as NaN."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        if p.is_dir():
            for q in sorted(p.glob("*_1min.csv*")):
                m = _HOUSE.match(q.name)
                if m:
                    groups[m["house"]].append(q)
        else:
            m = _HOUSE.match(p.name)
            groups[m["house"] if m else p.stem].append(p)
    out = []
    for name, files in sorted(groups.items()):
        series = [load_csv(f) for f in sorted(files)]
        t0 = min(int(s.ts[0]) for s in series)
        t1 = max(int(s.ts[-1]) for s in series)
        n = (t1 - t0) // 60 + 1
        mains = np.full(n, np.nan)
        strong = np.zeros(n)
        for s in series:
            idx = (s.ts - t0) // 60
            mains[idx] = s.mains
            for a in STRONG:
                if a in s.appliances:
                    strong[idx] = np.maximum(strong[idx], np.nan_to_num(s.appliances[a]))
        out.append(Household(name, t0 + 60 * np.arange(n, dtype=np.int64), mains, strong))
    return out


@dataclass
class Replay:
    alerts: list[tuple[float, float]]  # (at, since) of each absence raised
    days: dict[int, Day]  # local day ordinal -> the watch's own record of it (activity per slot, minutes measured)
    armed: set[int]  # local days the watch had a threshold all day (past learning and calibration)


def replay(h: Household, tz: ZoneInfo, params: Params) -> Replay:
    """One pass of the record through a :class:`Watch`; the per-day facts are the watch's own :class:`Day`
    records, kept here beyond its history window."""
    watch = Watch(tz, params)
    det = ActivityDetector(params.step_w)
    alerts: list[tuple[float, float]] = []
    days: dict[int, Day] = {}
    armed: set[int] = set()
    prev_strong = 0.0
    for t, w, s in zip(h.ts.tolist(), h.mains.tolist(), h.strong.tolist(), strict=True):
        measured = not math.isnan(w)
        active = det.minute(w if measured else None)
        signal = "meter" if active else None
        if s >= STRONG_ON_W > prev_strong:
            active, signal = True, "plug"
        prev_strong = s
        for f in watch.push(t, measured=measured, active=active, signal=signal):
            if f.kind == "absence":
                alerts.append((f.at, f.since))
        today = watch.today
        if today is not None and today not in days:
            days[today] = watch.days[today]
        if watch.threshold is not None and today is not None:
            armed.add(today)
    return Replay(alerts, days, armed)


def cut(h: Household, tz: ZoneInfo, cut_min: int) -> tuple[Household, list[tuple[int, float, float]]]:
    """A copy with absences cut in; [(local day ordinal, midnight, cut time)] of the days that took one."""
    mains, strong = h.mains.copy(), h.strong.copy()
    t0 = int(h.ts[0])
    first = local_midnight(t0, tz)
    days = []
    k = 0
    while True:
        mid = local_midnight(first + (FIRST_CUT_DAY + k * EVERY) * 86400 + 43200, tz)
        k += 1
        nxt = local_midnight(mid + 86400 + 43200, tz)
        a, b = int((mid + cut_min * 60 - t0) // 60), int((nxt - t0) // 60)
        if b + 1440 > len(mains):
            break
        base = mains[int((mid + 2 * 3600 - t0) // 60) : int((mid + 5 * 3600 - t0) // 60)]
        if a < 1 or not np.isfinite(base).all() or not np.isfinite(mains[a:b]).all():
            continue
        mains[a:b] = np.resize(base, b - a)
        strong[a:b] = 0.0
        days.append((datetime.fromtimestamp(mid, tz).toordinal(), mid, mid + cut_min * 60))
    return Household(h.name, h.ts, mains, strong), days


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None, "max": None}
    return {
        "median": round(float(median(values)), 2),
        "p90": round(float(np.quantile(values, 0.9)), 2),
        "max": round(float(max(values)), 2),
    }


def evaluate_house(h: Household, tz: ZoneInfo, params: Params) -> dict[str, object]:
    normal = replay(h, tz, params)
    after = [o for o, d in normal.days.items() if o in normal.armed and d.complete]
    home_days = [o for o in after if normal.days[o].active]
    away_days = [o for o in after if not normal.days[o].active]
    alert_days = [(a, datetime.fromtimestamp(a[0], tz).toordinal()) for a in normal.alerts]
    home, away = set(home_days), set(away_days)
    false = [a for a, o in alert_days if o in home]
    away_alerts = [a for a, o in alert_days if o in away]
    result: dict[str, object] = {
        "house": h.name,
        "days": len(normal.days),
        "normal_days": len(home_days),
        "away_days": len(away_days),
        "false_alerts": len(false),
        "false_per_30_days": round(30 * len(false) / len(home_days), 2) if home_days else None,
        "away_alerts": len(away_alerts),
    }
    for cut_min in CUTS_MIN:
        copy, injected = cut(h, tz, cut_min)
        run = replay(copy, tz, params)
        delays, from_cut, missed = [], [], 0
        injected = [x for x in injected if x[0] in normal.armed]
        for o, mid, at in injected:
            past = [normal.days.get(d) for d in range(o - params.history_days, o)]
            hist = [(d.weekend, d.slots) for d in past if d is not None and d.complete]
            weekend = normal.days[o].weekend
            start = usual_start(hist, weekend, cut_min // SLOT_MIN)
            ref = mid + (start if start is not None else 24 * 60 // SLOT_MIN) * SLOT_MIN * 60
            ref = max(ref, at)
            hits = [f_at for f_at, _since in run.alerts if at <= f_at < mid + 36 * 3600]
            if not hits:
                missed += 1
                continue
            delays.append((min(hits) - ref) / 3600)
            from_cut.append((min(hits) - at) / 3600)
        result[f"cut_{cut_min // 60:02d}00"] = {
            "absences": len(injected),
            "detected": len(delays),
            "missed": missed,
            "within_3h": sum(d <= TARGET_DELAY_H for d in delays),
            "delay_h": _stats(delays),
            "delay_from_cut_h": _stats(from_cut),
        }
    return result


def evaluate(
    paths: Iterable[Path],
    tz: str = DEFAULT_TZ,
    params: Params | None = None,
    *,
    min_days: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """The protocol over every house with at least ``min_days`` of data (default: its learning and calibration
    days and two more); one JSON-ready object."""
    zone, prm = ZoneInfo(tz), params or Params()
    if min_days is None:
        min_days = prm.learn_days + prm.calibrate_days + 2
    houses, skipped = [], []
    for h in households(paths):
        if len(h.ts) < min_days * 1440:
            skipped.append(h.name)
            continue
        if progress is not None:
            progress(f"{h.name}: {len(h.ts) / 1440:.0f} days")
        houses.append(evaluate_house(h, zone, prm))
    return {"protocol": "watchover-v1", "tz": tz, "params": asdict(prm), "houses": houses, "skipped": skipped}

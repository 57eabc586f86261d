"""Solar-surplus charging benchmark (issue 18 §1): the gateway's loop over whole days, with real parts, against
charging at full power on arrival and against an oracle that knows the day.

Each day: a real 1-minute house load (tests/data/nilm, UK-DALE / REFIT, provenance in that folder's README), PV
from the Haurwitz clear-sky model for Aizuwakamatsu (4.5 kWp, PR 0.8) with a seeded Markov/AR cloud process
(drivers/sim/solar.py), and a car at home 09:00-17:00 that needs 11.1 kWh (40 kWh battery, 50 -> 75 %, 90 %
efficiency) from a 200 V x 30 A charger. The loop runs with the meter emulator read by the real B-route driver,
the gateway's OCPP central system and a real ``ocpp`` ChargePoint whose current follows the profiles
(drivers/sim/evsite.py), a simulated minute at a time.

    .venv/bin/python bench/surplus.py [--days 4] [--modes surplus-only,surplus-minimum,fixed]
    .venv/bin/python bench/surplus.py --month ../shared/data/nilm/ukdale_house2_2013-06_1min.csv.gz --days 14

``--month``: the days are that month file's first ``--days`` days instead (weather clear, variable, variable,
overcast in turn, cloud seed = the day's index), each with the PV of the same date in June 2026.

Per strategy and day: ``self_consumption`` (PV used at home / PV produced, house + car), ``solar_share`` (car energy
from PV), ``import_charging_wh`` (grid import in the minutes the car charged), ``import_for_car_wh`` (the import
the car caused), ``car_wh``. ``oracle`` must deliver the car's need (it charges from the grid at the floor when the
sun is short); ``oracle_no_import`` is the best any surplus-only schedule can do. ``vs_oracle`` = loop / oracle
self-consumption; ``vs_oracle_no_import`` the same against the surplus-only bound. One JSON line per day, then
the summary as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.sim.evsite import Car, DayRun, compare, run_surplus_day  # noqa: E402
from drivers.sim.solar import site_day  # noqa: E402

NILM = ROOT / "tests" / "data" / "nilm"
#: (load day, weather, cloud seed): a clear day, two variable ones, an overcast one (the rainy season)
DAYS = [
    ("ukdale_house2_2013-06-29_1min.csv.gz", "clear", 1),
    ("ukdale_house2_2013-06-29_1min.csv.gz", "variable", 3),
    ("refit_house2_2014-06-14_1min.csv.gz", "variable", 7),
    ("refit_house2_2014-06-14_1min.csv.gz", "overcast", 2),
]
PV_DAY = date(2026, 6, 29)


def main() -> None:
    """Run the days and print one JSON line per day, the summary last."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=len(DAYS))
    ap.add_argument("--modes", default="surplus-only,surplus-minimum,fixed")
    ap.add_argument("--month", type=Path, default=None, help="a 1-minute NILM month file (see the docstring)")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    car = Car()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    weathers = ("clear", "variable", "variable", "overcast")
    plan = (
        [(args.month, weathers[i % 4], i, i) for i in range(args.days)]
        if args.month is not None
        else [(NILM / name, weather, seed, 0) for name, weather, seed in DAYS[: args.days]]
    )
    for path, weather, seed, index in plan:
        pv_date = date(2026, 6, 1 + index % 30) if args.month is not None else PV_DAY
        day = site_day(path, pv_date, weather=weather, seed=seed, day_index=index)
        runs: dict[str, DayRun] = {m: asyncio.run(run_surplus_day(day, car, mode=m)) for m in modes}
        figures = compare(day, car, runs)
        bound = figures["oracle_no_import"]["self_consumption"]
        for m in modes:
            figures[m]["vs_oracle_no_import"] = round(figures[m]["self_consumption"] / bound, 4) if bound else None
        results.append(figures)
        print(json.dumps(figures), flush=True)
    summary: dict[str, Any] = {"days": [r["day"] for r in results], "need_wh": round(car.need_wh, 1)}
    for strategy in ("full_power", "oracle", "oracle_no_import", *modes):
        rows = [r[strategy] for r in results]
        entry: dict[str, Any] = {
            key: round(statistics.fmean(row[key] for row in rows), 4)
            for key in ("self_consumption", "solar_share", "import_charging_wh", "import_for_car_wh", "car_wh")
        }
        if strategy in modes:
            for key in ("vs_oracle", "vs_oracle_no_import"):
                values = [row[key] for row in rows if row[key] is not None]
                entry[f"{key}_min"] = min(values)
                entry[f"{key}_mean"] = round(statistics.fmean(values), 4)
            entry["profiles_sent_mean"] = round(statistics.fmean(row["profiles_sent"] for row in rows), 1)
        summary[strategy] = entry
    summary["target"] = "surplus-only self-consumption >= 80 % of the oracle's"
    summary["target_met_days"] = sum(r["surplus-only"]["vs_oracle"] >= 0.8 for r in results) if modes else 0
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""Garbage-collection navigator: ETA accuracy over a week of simulated rounds, through a real InfluxDB.

The simulated truck (:class:`drivers.sim.rounds.VariedTruck`: the GNSS truck of ``kyojo demo`` with rush hours,
day-to-day pace, heavier Mondays, per-point loads and 4 % incidents) drives one route of ``--points`` collection
points every morning; each day's 1 Hz fixes go through the gateway's own stop detection and matching
(``TruckTracker``), the pickups are written to InfluxDB as the ingester writes them (tests/navikit.py), and the
navigator reads them back from InfluxDB exactly as ``kyojo navi serve`` does (``Navigator`` over
``InfluxPickups``, relearning its model once per day from the ``--history`` days before).

For each of the ``--days`` evaluated days, right after every pickup of the round becomes visible (the truck left
the point), the navigator's estimate for each point 1..10 stops ahead is compared with when the truck really
arrived there. Printed per stops-ahead: count, median and p90 of the absolute error (minutes) and the median signed
error (positive: the truck came later than said); and, as a baseline, the same for the model with nothing learned
(150 s per leg). Target (issue 17): median error under 3 minutes at 5 stops ahead.

    .venv/bin/python bench/navi.py [--days 7] [--history 28] [--points 60] [--seed 1]

The last line is one JSON object: per stops-ahead ``{n, median_min, p90_min, bias_min}``, ``baseline`` (the same
for the unlearned model), ``rounds_learned`` and ``target_met``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_ingest.navi.model import EtaModel, today  # noqa: E402
from cloud_ingest.navi.routes import load_routes  # noqa: E402
from cloud_ingest.navi.service import Navigator  # noqa: E402
from cloud_ingest.navi.source import InfluxPickups, truck_tags  # noqa: E402
from cloud_ingest.scope import Scope, new_key, parse_key  # noqa: E402
from drivers.sim.rounds import VariedTruck, city_route, pickups_of_day, route_geojson  # noqa: E402
from provisioning.local import InfluxDB  # noqa: E402
from tests.navikit import first_visits, local_day, pickup_lines  # noqa: E402

ROUTE = "bench-1"
GATEWAY = "truck-gw-01"
FIRST_EVAL_DAY = date(2026, 10, 5)  # a Monday


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def _summary(errors: dict[int, list[float]]) -> dict[str, dict[str, float]]:
    return {
        str(k): {
            "n": len(e),
            "median_min": round(statistics.median(abs(x) for x in e) / 60, 2),
            "p90_min": round(_p90([abs(x) for x in e]) / 60, 2),
            "bias_min": round(statistics.median(e) / 60, 2),
        }
        for k, e in sorted(errors.items())
        if e
    }


def main() -> None:
    """Run the benchmark and print the table, then the JSON summary last."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--history", type=int, default=28)
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    t_start = time.perf_counter()
    geo = route_geojson(city_route(args.points, args.seed), ROUTE)
    routes = load_routes(geo)
    truck = VariedTruck("truck-01", "truck-01", args.seed, route=city_route(args.points, args.seed), shift_h=(8, 13))
    scope = Scope(parse_key(new_key()))
    days = [FIRST_EVAL_DAY + timedelta(days=i) for i in range(-args.history, args.days)]
    pickups = {d: pickups_of_day(truck, geo, local_day(d)) for d in days}
    sim_s = time.perf_counter() - t_start

    errors: dict[int, list[float]] = {k: [] for k in range(1, 11)}
    baseline: dict[int, list[float]] = {k: [] for k in range(1, 11)}
    rounds = 0
    with tempfile.TemporaryDirectory(prefix="kyojo-bench-navi-") as tmp, InfluxDB(Path(tmp)) as influx:
        influx.create_database("kyojo")
        for d in days:
            influx.write_lines("\n".join(pickup_lines(pickups[d], GATEWAY, scope=scope)), "kyojo", precision="ms")
        source = InfluxPickups(
            influx.url, "kyojo", truck_tags([GATEWAY], scope), points=[p.id for p in routes[ROUTE].points]
        )
        clock = [0.0]
        nav = Navigator(routes, source, history_days=args.history, refresh_s=0.0, now=lambda: clock[0])
        for d in days[args.history :]:
            truth = first_visits(pickups[d])
            round_pickups = sorted(
                (p for p in pickups[d] if int(p.arrived * 1000) == truth[p.point]), key=lambda p: p.arrived
            )
            for pk in round_pickups:
                clock[0] = pk.departed + 1.0  # the pickup is known once the truck left the point
                snap = nav.snapshot()
                now_ms = int(clock[0] * 1000)
                visits = source.visits(now_ms - 86_400_000, now_ms + 1)
                plain = today(routes[ROUTE], visits, EtaModel(), now_ms)
                for learned, table in ((snap.routes[ROUTE], errors), (plain, baseline)):
                    for st in learned:
                        if st.status == "on_the_way" and st.stops_away is not None and st.stops_away <= 10:
                            assert st.eta_ms is not None
                            table[st.stops_away].append((truth[st.point] - st.eta_ms) / 1000)
            rounds = nav.model.rounds

    result = _summary(errors)
    base = _summary(baseline)
    print(f"{args.days} days evaluated, model relearned daily from the {args.history} days before ({rounds} rounds)")
    print(f"route of {args.points} points; simulated in {sim_s:.1f} s; errors in minutes (truth - estimate)")
    print(f"{'ahead':>5} {'n':>5} {'median':>7} {'p90':>7} {'bias':>7}   | unlearned: {'median':>7} {'p90':>7}")
    for k, row in result.items():
        b = base.get(k, {"median_min": float("nan"), "p90_min": float("nan")})
        print(
            f"{k:>5} {row['n']:>5} {row['median_min']:>7.2f} {row['p90_min']:>7.2f} {row['bias_min']:>7.2f}"
            f"   |            {b['median_min']:>7.2f} {b['p90_min']:>7.2f}"
        )
    met = result.get("5", {}).get("median_min", float("inf")) < 3.0
    print(f"target (median < 3 min at 5 stops ahead): {'met' if met else 'NOT met'}")
    print(json.dumps({"ahead": result, "baseline": base, "rounds_learned": rounds, "target_met": met}))


if __name__ == "__main__":
    main()

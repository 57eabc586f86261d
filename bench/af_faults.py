"""AF robustness sweep: leave-one-record-out with strap faults injected into each held-out record.

    .venv/bin/python bench/af_faults.py [--data /work/shared/data/rr] [--rates 0.01,0.03,0.05] [--seed 0]

For each fault kind (missed beats, spurious beats, non-physiological values; then 3 % missed + 3 % spurious
together) and rate, the full LORO of :mod:`models.af.loro` (training records are never faulty; threshold and alert
rule chosen inside the training folds) and the change against the clean run, in points. Needs the ``train`` extra.
~1 min per run on this 2-core machine; progress on stderr. The last line is one JSON object:
``{"clean": {...}, "runs": [{"faults": ..., figures..., "delta": {...}}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEYS = ("sensitivity", "specificity", "episode_sensitivity", "median_detection_delay_s", "false_alerts_per_person_day")


def _figs(report: dict[str, object]) -> dict[str, object]:
    return {k: report[k] for k in (*KEYS, "windows", "false_alerts", "episodes_caught", "af_episodes_30min")}


def _delta(a: dict[str, object], b: dict[str, object]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in KEYS:
        x, y = a[k], b[k]
        if not isinstance(x, int | float) or not isinstance(y, int | float):
            out[k] = None
        elif k == "median_detection_delay_s" or k == "false_alerts_per_person_day":
            out[k] = round(float(x) - float(y), 4)
        else:
            out[k] = round(100.0 * (float(x) - float(y)), 2)  # points
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/rr"))
    ap.add_argument("--rates", default="0.01,0.03,0.05")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from models.af import load_dir, loro
    from models.af.artefacts import Injection

    records = load_dir(args.data)
    clean = _figs(loro.run(records))
    print(f"clean: {json.dumps(clean)}", file=sys.stderr, flush=True)
    plans = [
        Injection(**{kind: float(r)}) for kind in ("missed", "spurious", "nonphysio") for r in args.rates.split(",")
    ]
    plans.append(Injection(missed=0.03, spurious=0.03))
    runs = []
    for faults in plans:
        figs = _figs(loro.run(records, faults, args.seed))
        row = {"faults": faults.label(), **figs, "delta": _delta(figs, clean)}
        print(f"{faults.label()}: {json.dumps(row)}", file=sys.stderr, flush=True)
        runs.append(row)
    print(json.dumps({"clean": clean, "seed": args.seed, "runs": runs}))


if __name__ == "__main__":
    main()

"""NILM benchmark: inference latency per minute of meter data (all appliances) and the model file sizes.

One process, one core: the committed ONNX models (1 intra-op thread) run through the streaming runtime on a day of
the test excerpt, one minute at a time, exactly as on the gateway. Baseline in the same process: the classic CO
baseline's per-minute cost (a numpy nearest-sum search), so the ratio says what the CNNs cost on top of it.

    .venv/bin/python bench/nilm.py [--minutes 1440] [--repeat 3]

The last line is one JSON object: per_minute_ms_median, per_minute_ms_p95, per_window_ms (per appliance),
co_per_minute_ms, ratio_vs_co, model_bytes (per file), model_bytes_total, params, load_ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.processors.nilm import feed_nilm  # noqa: E402
from kyojo.contract.vocab import reading  # noqa: E402
from models.nilm.data import load_csv  # noqa: E402
from models.nilm.metrics import co_predict  # noqa: E402
from models.nilm.model import MODEL_DIR, NilmModels  # noqa: E402
from models.nilm.runtime import NilmRuntime  # noqa: E402

EXCERPT = ROOT / "tests" / "data" / "nilm" / "ukdale_house2_2013-06-29_1min.csv.gz"


def main() -> None:
    """Run the benchmark and print the JSON summary last."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=1440)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    models = NilmModels(threads=1)
    load_ms = (time.perf_counter() - t0) * 1000
    series = load_csv(EXCERPT)
    n = min(args.minutes, len(series))
    readings = [
        reading("bench-meter", "home", "power", float(series.mains[i]), float(series.ts[i] + 60)) for i in range(n)
    ]

    per_minute: list[float] = []
    for _ in range(args.repeat):
        rt = NilmRuntime(models, meter="bench-meter")
        for r in readings:
            s = time.perf_counter()
            feed_nilm(rt, [r])  # as the agent's nilm processor feeds it
            per_minute.append((time.perf_counter() - s) * 1000)
    warm = sorted(per_minute[models.max_window :])  # once the windows are full: every minute runs every model

    per_window: dict[str, float] = {}
    for name, m in models.models.items():
        x = np.full((1, m.window), 300.0, dtype=np.float64)
        m.run(x)
        s = time.perf_counter()
        for _ in range(2000):
            m.run(x)
        per_window[name] = round((time.perf_counter() - s) / 2000 * 1000, 4)

    states = models.manifest["baselines"]["co"]
    s = time.perf_counter()
    for i in range(n):
        co_predict(series.mains[i : i + 1], states)
    co_ms = (time.perf_counter() - s) / n * 1000

    sizes = {e["file"]: (MODEL_DIR / e["file"]).stat().st_size for e in models.manifest["appliances"].values()}
    med = statistics.median(warm)
    out = {
        "minutes": n,
        "appliances": list(models.appliances),
        "per_minute_ms_median": round(med, 4),
        "per_minute_ms_p95": round(warm[int(0.95 * (len(warm) - 1))], 4),
        "per_window_ms": per_window,
        "co_per_minute_ms": round(co_ms, 4),
        "ratio_vs_co": round(med / co_ms, 2),
        "model_bytes": sizes,
        "model_bytes_total": sum(sizes.values()),
        "params": {k: e["params"] for k, e in models.manifest["appliances"].items()},
        "load_ms": round(load_ms, 1),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

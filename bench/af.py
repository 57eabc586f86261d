"""AF model and health-rules benchmark: per-window latency (ONNX vs scikit-learn) and CPU per person-hour.

    .venv/bin/python bench/af.py [--repeat 2000] [--hours 2]

1. Per-window inference latency of the committed ONNX model (onnxruntime, one thread, one window per call, as
   the runtime calls it), and of the same pipeline in scikit-learn (fitted here on the test excerpts' features:
   latency does not depend on the fit) as the baseline in the same process; plus the feature extraction time.
2. The health pipeline's CPU per person-hour of 1 Hz data: a simulated chest strap (heart_rate at 1 Hz and
   every RR interval) through :class:`models.rules.RulesEngine` and :class:`models.af.AfMonitor`, fed by the
   agent's adapters from Readings (``edge_agent.processors.health``); simulation time is excluded.

The last line is one JSON object: onnx_us_per_window, sklearn_us_per_window, sklearn_over_onnx,
features_us_per_window, pipeline_cpu_s_per_person_hour, pipeline_pct_of_core, readings_per_person_hour.
Needs scikit-learn (the ``train`` extra) for the baseline; without it those fields are null.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_call_us(call: Callable[[np.ndarray], object], x: np.ndarray, repeat: int) -> float:
    """Median wall time of ``call(x)`` in microseconds over ``repeat`` calls (after a warm-up)."""
    for _ in range(50):
        call(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        call(x)
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--hours", type=float, default=2.0)
    args = ap.parse_args()

    from drivers.sim import HeartRateStrap
    from edge_agent.processors.health import feed_af, feed_rules
    from models.af import AfModel, AfMonitor, load_dir, make_windows
    from models.af.features import batch_features, window_features
    from models.rules import JAPAN, RulesEngine

    model = AfModel()
    w = make_windows(load_dir(ROOT / "tests" / "data" / "rr"))
    x, ok = batch_features(w.rr_ms)
    x, y = x[ok], w.is_af[ok]
    one = x[:1].astype(np.float32)

    onnx_us = per_call_us(model.scores, one, args.repeat)
    t = time.perf_counter()
    for i in range(len(w)):
        window_features(w.rr_ms[i])
    feat_us = (time.perf_counter() - t) / len(w) * 1e6

    sk_us: float | None = None
    try:
        from models.af.train import build_classifier

        clf = build_classifier()
        clf.fit(x, y)  # type: ignore[attr-defined]
        sk_us = per_call_us(clf.predict_proba, one.astype(np.float64), args.repeat)  # type: ignore[attr-defined]
    except ImportError:
        print("scikit-learn not installed: no baseline (pip install scikit-learn)", file=sys.stderr)

    # pipeline CPU per person-hour: generate first, then time only the rules + AF monitor
    t0 = 1_700_000_000.0
    strap = HeartRateStrap("bench-p1-hr", "p1", 1)
    readings = strap.readings_between(t0, t0 + args.hours * 3600.0)
    engine, monitor = RulesEngine(JAPAN), AfMonitor(model)
    c = time.process_time()
    for r in readings:  # one at a time, as the agent's health processor feeds them
        feed_rules(engine, [r])
        feed_af(monitor, [r])
    cpu = (time.process_time() - c) / args.hours

    result = {
        "onnx_us_per_window": round(onnx_us, 1),
        "sklearn_us_per_window": None if sk_us is None else round(sk_us, 1),
        "sklearn_over_onnx": None if sk_us is None else round(sk_us / onnx_us, 2),
        "features_us_per_window": round(feat_us, 1),
        "pipeline_cpu_s_per_person_hour": round(cpu, 3),
        "pipeline_pct_of_core": round(cpu / 3600.0 * 100.0, 4),
        "readings_per_person_hour": round(len(readings) / args.hours),
        "af_windows_per_person_hour": round(monitor.windows / args.hours),
    }
    print(
        f"ONNX {onnx_us:.1f} us/window, sklearn {sk_us if sk_us is None else round(sk_us, 1)} us/window, "
        f"features {feat_us:.0f} us/window; pipeline {cpu:.2f} CPU-s per person-hour",
        file=sys.stderr,
        flush=True,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

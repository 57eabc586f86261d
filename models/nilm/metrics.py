"""Disaggregation metrics and the three baselines, implemented once for the CLI, the training report and tests.

Metrics, per appliance, over the scored minutes (:meth:`models.nilm.data.Series.scored`); a minute without a model
estimate (gap rule) counts as a prediction of 0 W:

- ``mae_w``: mean absolute error, W.
- ``sae``: signal aggregate error, ``|sum(pred) - sum(true)| / sum(true)`` (relative error of the total energy).
- ``nde``: normalised disaggregation error, ``sum((pred - true)^2) / sum(true^2)``.
- ``f1_on``: F1 of the on-state, ``power > ON_THRESHOLD_W[appliance]`` for truth and prediction alike.

Baselines: ``always_off`` (0 W), ``mean`` (the appliance's mean power on the training data), and ``co``:
combinatorial optimisation as in NILMTK (Hart 1992; ``nilmtk.disaggregate.CombinatorialOptimisation``): each
appliance gets a few power states from k-means on its training power (the "off" state at 0 W is always one),
and each minute takes the combination of states whose sum is closest to the mains. Like NILMTK's, it has no term
for the unmetered rest of the house.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.nilm.data import APPLIANCES, ON_THRESHOLD_W, FloatArray, Series

#: An estimate is shown (and released) on confidence alone when the model's confidence in the state it reports
#: (``max(p_on, 1 - p_on)``) is at least this. Fixed before the leave-one-house-out protocol first ran; not tuned.
SHOW_CONFIDENCE = 0.9

CO_STATES = 3  # per appliance, including off; NILMTK's default max_num_clusters is 3
_KMEANS_ITERS = 50


def f1_on(pred: FloatArray, true: FloatArray, threshold: float) -> float | None:
    """On-state F1 at ``threshold`` W; ``None`` (undefined) when neither side is ever on."""
    p = pred > threshold
    t = true > threshold
    tp = float(np.sum(p & t))
    denom = float(np.sum(p) + np.sum(t))
    return None if denom == 0 else 2.0 * tp / denom


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def appliance_metrics(pred: FloatArray, true: FloatArray, threshold: float) -> dict[str, float | None]:
    """``mae_w``, ``sae``, ``nde``, ``f1_on`` of one appliance over aligned arrays (a NaN prediction counts as 0).

    A metric that is undefined on the data (no scored minute, an appliance that never draws power) is ``None``,
    which the CLI prints as JSON ``null``.
    """
    pred = np.nan_to_num(np.asarray(pred, dtype=np.float64), nan=0.0)
    true = np.asarray(true, dtype=np.float64)
    err = pred - true
    tot = float(true.sum())
    sq = float(np.sum(true**2))
    return {
        "mae_w": round(float(np.mean(np.abs(err))), 3) if len(true) else None,
        "sae": round(abs(float(pred.sum()) - tot) / tot, 4) if tot > 0 else None,
        "nde": round(float(np.sum(err**2)) / sq, 4) if sq > 0 else None,
        "f1_on": _round(f1_on(pred, true, threshold), 4),
    }


def gated_metrics(pred: FloatArray, true: FloatArray, shown: npt.NDArray[np.bool_]) -> dict[str, float | None]:
    """What the gated output scores: ``shown_fraction`` (share of the minutes with a number shown),
    ``mae_w_shown`` (model MAE over the shown minutes) and ``always_off_mae_w_shown`` (always-off over the same
    minutes, the figure it must beat); the MAEs are ``None`` when nothing was shown."""
    pred = np.nan_to_num(np.asarray(pred, dtype=np.float64), nan=0.0)
    true = np.asarray(true, dtype=np.float64)
    n_shown = int(np.sum(shown))
    return {
        "shown_fraction": round(n_shown / len(true), 4) if len(true) else None,
        "mae_w_shown": round(float(np.mean(np.abs(pred[shown] - true[shown]))), 3) if n_shown else None,
        "always_off_mae_w_shown": round(float(np.mean(np.abs(true[shown]))), 3) if n_shown else None,
    }


def _kmeans_1d(x: FloatArray, k: int) -> FloatArray:
    """Deterministic 1-D k-means (quantile initialisation); returns sorted centroids."""
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(_KMEANS_ITERS):
        lab = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        new = np.array([x[lab == j].mean() if np.any(lab == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


def fit_baselines(train: Sequence[Series], appliances: Iterable[str] = APPLIANCES) -> dict[str, Any]:
    """Fit the ``mean`` and ``co`` baselines on training series (scored minutes only)."""
    means: dict[str, float] = {}
    states: dict[str, list[float]] = {}
    for a in appliances:
        vals = np.concatenate([s.appliances[a][s.scored()] for s in train if a in s.appliances])
        means[a] = round(float(vals.mean()), 3)
        on = vals[vals > 10.0]  # below ~10 W is standby (README caveat 5: standby is zeroed upstream)
        cent = _kmeans_1d(on, CO_STATES - 1) if on.size >= CO_STATES else np.array([])
        states[a] = [0.0, *[round(float(c), 1) for c in cent]]
    return {"mean": means, "co": states}


def co_predict(mains: FloatArray, states: Mapping[str, Sequence[float]]) -> dict[str, FloatArray]:
    """Combinatorial optimisation: per minute, the state combination whose sum is closest to the mains."""
    names = list(states)
    combos = np.array(list(itertools.product(*[states[n] for n in names])), dtype=np.float64)
    sums = combos.sum(axis=1)
    m = np.nan_to_num(np.asarray(mains, dtype=np.float64), nan=0.0)
    order = np.argsort(sums)
    pos = np.clip(np.searchsorted(sums[order], m), 1, len(sums) - 1)
    lo, hi = order[pos - 1], order[pos]
    best = np.where(np.abs(m - sums[lo]) <= np.abs(m - sums[hi]), lo, hi)
    return {n: combos[best, j] for j, n in enumerate(names)}


def evaluate(
    series: Series,
    predictions: Mapping[str, FloatArray],
    baselines: Mapping[str, Any],
    *,
    co_input: FloatArray | None = None,
    confidence: Mapping[str, FloatArray] | None = None,
    show_confidence: float = SHOW_CONFIDENCE,
) -> dict[str, Any]:
    """Metrics of the model and of the three baselines on one series, as the CLI prints them.

    ``predictions`` come from :meth:`models.nilm.model.NilmModels.predict_series` on the same series;
    ``baselines`` from :func:`fit_baselines` on the training data; ``co_input`` is what CO sees as mains
    (default: the series' mains). With ``confidence`` (per appliance, per minute, as
    :meth:`models.nilm.model.NilmModels.predict_series_with_confidence` gives it), each appliance's block also has
    the gated figures of :func:`gated_metrics`, a minute being shown when its confidence is at least
    ``show_confidence``.
    """
    apps = [a for a in predictions if a in series.appliances]
    mask = series.scored()
    co = co_predict(series.mains if co_input is None else co_input, {a: baselines["co"][a] for a in apps})
    out: dict[str, Any] = {"appliances": {}, "baselines": {"always_off": {}, "mean": {}, "co": {}}}
    for a in apps:
        thr = ON_THRESHOLD_W[a]
        true = series.appliances[a][mask]
        out["appliances"][a] = appliance_metrics(predictions[a][mask], true, thr)
        if confidence is not None:
            conf = np.nan_to_num(np.asarray(confidence[a], dtype=np.float64)[mask], nan=0.0)
            out["appliances"][a].update(gated_metrics(predictions[a][mask], true, conf >= show_confidence))
        out["baselines"]["always_off"][a] = appliance_metrics(np.zeros_like(true), true, thr)
        out["baselines"]["mean"][a] = appliance_metrics(np.full_like(true, baselines["mean"][a]), true, thr)
        out["baselines"]["co"][a] = appliance_metrics(co[a][mask], true, thr)
    return out

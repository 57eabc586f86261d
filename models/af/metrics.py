"""Window-level detection metrics (numpy only): confusion counts, sensitivity, specificity, PPV, F1, AUROC."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def auroc(y: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is absent."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.shape[0], dtype=np.float64)
    # average rank (1-based) of each run of equal scores
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [s.shape[0]]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True, slots=True)
class Metrics:
    """Confusion counts of a set of windows and the derived rates (NaN where undefined)."""

    tp: int
    fp: int
    tn: int
    fn: int
    auroc: float

    @classmethod
    def compute(cls, y: npt.NDArray[np.bool_], score: npt.NDArray[np.float64], threshold: float) -> Metrics:
        """Metrics of the decisions ``score >= threshold`` against the truth ``y``."""
        y = np.asarray(y, dtype=bool)
        pred = np.asarray(score) >= threshold
        return cls(
            tp=int(np.count_nonzero(pred & y)),
            fp=int(np.count_nonzero(pred & ~y)),
            tn=int(np.count_nonzero(~pred & ~y)),
            fn=int(np.count_nonzero(~pred & y)),
            auroc=auroc(y, score),
        )

    @property
    def windows(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def af_windows(self) -> int:
        return self.tp + self.fn

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def as_dict(self, digits: int = 4) -> dict[str, float | int | None]:
        """JSON-ready summary; undefined rates become None (JSON null)."""

        def r(x: float) -> float | None:
            return None if math.isnan(x) else round(x, digits)

        return {
            "sensitivity": r(self.sensitivity),
            "specificity": r(self.specificity),
            "ppv": r(self.ppv),
            "f1": r(self.f1),
            "auroc": r(self.auroc),
            "windows": self.windows,
            "af_windows": self.af_windows,
        }

"""Leave-one-record-out at window and person level, with the alert rule chosen inside the training folds.

Needs the ``train`` extra (scikit-learn): each fold refits the classifier of :mod:`models.af.train`.

For each held-out record: (1) the other records' out-of-fold scores (an inner leave-one-record-out) choose the
window threshold (Youden's J) *and* the alert rule (:func:`choose_rule` over :data:`RULE_GRID`); (2) the model is
refitted on the other records; (3) the held-out record, optionally with injected faults
(:func:`models.af.artefacts.inject`) and always through the artefact filter, is scored once: window metrics at
the fold's threshold, and the person-level figures of :mod:`models.af.episodes`. Training never sees a fault.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from models.af.alerting import AlertRule
from models.af.artefacts import Injection, clean_record, inject
from models.af.data import Record
from models.af.episodes import RecordEpisodes, RecordWindows, pooled, replay, runtime_windows, score_record
from models.af.features import batch_features
from models.af.metrics import Metrics

#: The alert parameters searched inside the training folds (clear_s, off_burden and refractory_s stay at the
#: defaults of AlertRule, fixed a priori: 10 min, 20 %, 30 min).
RULE_GRID: tuple[AlertRule, ...] = tuple(
    AlertRule(window_s=w, on_burden=b, confirm=c)
    for w in (600.0, 900.0, 1200.0, 1800.0)
    for b in (0.5, 0.6, 0.7, 0.8)
    for c in (3, 5, 8)
)
#: Among the rules with the fewest errors (false alerts + missed 30-min episodes) on the training records, the
#: slowest whose median delay is at most this (the most conservative one that still leaves margin below 10 min).
DELAY_BUDGET_S = 420.0

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Prepared:
    """One record ready for LORO: its truth, cleaned beats, runtime windows and their features."""

    truth: Record
    windows: RecordWindows
    x: npt.NDArray[np.float64]
    ok: npt.NDArray[np.bool_]


def prepare(truth: Record, faults: Injection | None = None, seed: int = 0) -> Prepared:
    """Inject (optionally), clean, window and featurise one record."""
    rec = inject(truth, faults, seed) if faults is not None else truth
    cleaned, _ = clean_record(rec)
    w = runtime_windows(cleaned)
    x, ok = batch_features(w.rr)
    return Prepared(truth, w, x, ok)


def _episodes(p: Prepared, scores: npt.NDArray[np.float64], threshold: float, rule: AlertRule) -> RecordEpisodes:
    ok = p.ok
    updates = replay(
        rule, p.windows.t_start[ok].tolist(), p.windows.t_end[ok].tolist(), (scores[ok] >= threshold).tolist()
    )
    end = float(p.truth.t_s[-1]) if p.truth.t_s.size else 0.0
    return score_record(p.truth, updates, end)


def choose_rule(
    preps: Sequence[Prepared], scores: Sequence[npt.NDArray[np.float64]], threshold: float
) -> tuple[AlertRule, dict[str, object]]:
    """The rule of :data:`RULE_GRID` for these (training) records' out-of-fold scores (see DELAY_BUDGET_S)."""
    rows: list[tuple[int, float, AlertRule, dict[str, object]]] = []
    for rule in RULE_GRID:
        res = [_episodes(p, s, threshold, rule) for p, s in zip(preps, scores, strict=True)]
        errors = sum(r.false_alerts + (r.episodes - r.caught) for r in res)
        delays = [d for r in res for d in r.delays_s]
        med = statistics.median(delays) if delays else 0.0
        rows.append((errors, med, rule, pooled(res)))
    best = min(e for e, _, _, _ in rows)
    tied = [r for r in rows if r[0] == best]
    within = [r for r in tied if r[1] <= DELAY_BUDGET_S]
    pick = max(within, key=lambda r: r[1]) if within else min(tied, key=lambda r: r[1])
    return pick[2], pick[3]


def run(
    records: Sequence[Record],
    faults: Injection | None = None,
    seed: int = 0,
    progress: Progress = _stderr,
) -> dict[str, object]:
    """The full leave-one-record-out report (window and person level, per record and pooled)."""
    from models.af.train import _fit, _score, youden_threshold

    progress(f"af loro: featurising {len(records)} records")
    clean = [prepare(r) for r in records]
    tested = [prepare(r, faults, seed) for r in records] if faults is not None else clean
    per_record: dict[str, dict[str, object]] = {}
    outcomes: list[RecordEpisodes] = []
    y_all: list[npt.NDArray[np.bool_]] = []
    d_all: list[npt.NDArray[np.float64]] = []
    s_all: list[npt.NDArray[np.float64]] = []
    undecided = 0
    for k, held in enumerate(clean):
        name = held.truth.name
        train = [p for j, p in enumerate(clean) if j != k]
        progress(f"af loro: fold {k + 1}/{len(clean)} (held out {name}): inner folds")
        inner: list[npt.NDArray[np.float64]] = []
        for j, p in enumerate(train):
            rest = [q for i, q in enumerate(train) if i != j]
            clf = _fit(np.concatenate([q.x[q.ok] for q in rest]), np.concatenate([q.windows.is_af[q.ok] for q in rest]))
            s = np.zeros(p.x.shape[0])
            if p.ok.any():
                s[p.ok] = _score(clf, p.x[p.ok])
            inner.append(s)
        y_in = np.concatenate([p.windows.is_af[p.ok] for p in train])
        s_in = np.concatenate([s[p.ok] for s, p in zip(inner, train, strict=True)])
        threshold = youden_threshold(y_in, s_in)
        rule, _train_figs = choose_rule(train, inner, threshold)
        progress(f"af loro: fold {k + 1}: threshold {threshold}, rule {rule.to_json()}")
        clf = _fit(np.concatenate([p.x[p.ok] for p in train]), y_in)
        test = tested[k]
        s = np.zeros(test.x.shape[0])
        if test.ok.any():
            s[test.ok] = _score(clf, test.x[test.ok])
        y = test.windows.is_af
        decided = np.where(test.ok & (s >= threshold), 1.0, 0.0)
        win = Metrics.compute(y, decided, 0.5).as_dict()
        win["auroc"] = Metrics.compute(y, s, 0.5).as_dict()["auroc"]
        ep = _episodes(replace(test), s, threshold, rule)
        outcomes.append(ep)
        y_all.append(y)
        d_all.append(decided)
        s_all.append(s)
        undecided += int((~test.ok).sum())
        per_record[name] = {
            **win,
            "undecided_windows": int((~test.ok).sum()),
            "threshold": threshold,
            "alert_rule": rule.to_json(),
            **ep.as_dict(),
        }
    y_cat, d_cat = np.concatenate(y_all), np.concatenate(d_all)
    pooled_win = Metrics.compute(y_cat, d_cat, 0.5).as_dict()
    # AUROC of the pooled held-out P(AF) (each record scored by its own fold's model)
    pooled_win["auroc"] = Metrics.compute(y_cat, np.concatenate(s_all), 0.5).as_dict()["auroc"]
    return {
        **pooled_win,
        "undecided_windows": undecided,
        "threshold": None,  # one per fold: per_record[...]["threshold"]
        "protocol": "leave-one-record-out; threshold and alert rule chosen by inner LORO on the training records",
        "injected": faults.label() if faults is not None else "",
        "seed": seed,
        **pooled(outcomes),
        "per_record": per_record,
    }

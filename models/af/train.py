"""Train the RR-interval AF classifier, validate it leave-one-record-out, export ``af_rr.onnx``.

    .venv/bin/python -m models.af.train [--data /work/shared/data/rr] [--out models/af/af_rr.onnx]
                                        [--report models/af/loro.json]

Needs the ``train`` extra (scikit-learn, skl2onnx, onnx); the runtime needs none of them.

Protocol (MODEL_CARD.md): the records through the artefact filter (:mod:`models.af.artefacts`), the runtime's
windows (:func:`models.af.episodes.protocol_windows`); features of :mod:`models.af.features`;
a standardised logistic regression with balanced class weights (deterministic lbfgs, no randomness).
Validation is leave-one-record-out: for each held-out record, the decision threshold is chosen by an *inner*
leave-one-record-out over the remaining records only (maximising Youden's J on their out-of-fold scores) and so is
the alert rule (:func:`models.af.loro.choose_rule`), the model is refitted on those records, and the held-out
record is scored once (:mod:`models.af.loro`). The shipped model is fitted on all records, with the threshold and
the alert rule chosen the same way over all records' out-of-fold scores (both stored in the ONNX metadata).

Only the records in ``--data`` are used; the script refuses a directory without ``afdb_*.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.af.data import STEP_BEATS, WINDOW_BEATS, load_dir
from models.af.features import FEATURE_NAMES

#: Version of the model family; the runtime appends the file's SHA-256 prefix.
MODEL_VERSION = "af_rr-1.0"
DEFAULT_DATA = Path("/work/shared/data/rr")
HERE = Path(__file__).resolve().parent
C_REGULARISATION = 1.0
#: Fixed ONNX opsets so the export does not change with the installed onnx's newest opset.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def build_classifier() -> object:
    """The estimator: StandardScaler + LogisticRegression (lbfgs is deterministic: no seed is involved)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C_REGULARISATION, class_weight="balanced", max_iter=5000, tol=1e-8)
    )


def _fit(x: npt.NDArray[np.float64], y: npt.NDArray[np.bool_]) -> object:
    clf = build_classifier()
    clf.fit(x.astype(np.float32).astype(np.float64), y)  # type: ignore[attr-defined]
    return clf


def _score(clf: object, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    prob = clf.predict_proba(x.astype(np.float32).astype(np.float64))  # type: ignore[attr-defined]
    return np.asarray(prob[:, 1], dtype=np.float64)


def youden_threshold(y: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float:
    """Threshold maximising sensitivity + specificity - 1 (midpoint between adjacent distinct scores)."""
    s = np.unique(score)
    cands = np.concatenate([[0.0], (s[1:] + s[:-1]) / 2.0, [1.0]]) if s.size > 1 else np.array([0.5])
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    best_t, best_j = 0.5, -1.0
    for t in cands:
        pred = score >= t
        j = np.count_nonzero(pred & y) / pos + np.count_nonzero(~pred & ~y) / neg - 1.0
        if j > best_j + 1e-12:
            best_t, best_j = float(t), j
    return round(best_t, 4)


def oof_scores(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.bool_], groups: npt.NDArray[np.str_]
) -> npt.NDArray[np.float64]:
    """Out-of-fold P(AF) of every window, each record scored by a model that never saw it."""
    out = np.zeros(y.shape[0], dtype=np.float64)
    for g in np.unique(groups):
        te = groups == g
        out[te] = _score(_fit(x[~te], y[~te]), x[te])
    return out


def export_onnx(clf: object, threshold: float, n_train: int, records: Sequence[str], alert_rule: str) -> bytes:
    """The fitted pipeline as ONNX (float32 input ``features``, no ZipMap) with our metadata."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        clf,
        "kyojo_af_rr",
        initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={id(clf): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.producer_name = "kyojo models/af/train.py"
    onx.producer_version = MODEL_VERSION
    onx.doc_string = "RR-interval AF window classifier (MIT-BIH AFDB subset, ODC-By 1.0); see MODEL_CARD.md"
    meta = {
        "version": MODEL_VERSION,
        "threshold": repr(threshold),
        "alert_rule": alert_rule,
        "features": ",".join(FEATURE_NAMES),
        "window_beats": str(WINDOW_BEATS),
        "step_beats": str(STEP_BEATS),
        "train_records": ",".join(records),
        "train_windows": str(n_train),
        "data_licence": "MIT-BIH AFDB, PhysioNet, ODC-By 1.0 (Moody & Mark 1983; Goldberger et al. 2000)",
    }
    del onx.metadata_props[:]
    for k, v in meta.items():
        p = onx.metadata_props.add()
        p.key, p.value = k, v
    return bytes(onx.SerializeToString())


def main(argv: Sequence[str] | None = None) -> int:
    """Run LORO (window and person level), print the report, write the ONNX model and the JSON report."""
    from models.af import loro as loro_mod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=HERE / "af_rr.onnx")
    ap.add_argument("--report", type=Path, default=HERE / "loro.json")
    args = ap.parse_args(argv)

    records = load_dir(args.data)
    report_loro = loro_mod.run(records)

    # the shipped model: all records; threshold and alert rule from all records' out-of-fold scores
    preps = [loro_mod.prepare(r) for r in records]
    x = np.concatenate([p.x[p.ok] for p in preps])
    y = np.concatenate([p.windows.is_af[p.ok] for p in preps])
    groups = np.concatenate([np.full(int(p.ok.sum()), p.truth.name) for p in preps])
    if sum(int((~p.ok).sum()) for p in preps):
        print("windows without enough clean beats are excluded from training", file=sys.stderr)
    oof = oof_scores(x, y, groups)
    final_threshold = youden_threshold(y, oof)
    per_prep = []
    for p in preps:
        s = np.zeros(p.x.shape[0])
        s[p.ok] = oof[groups == p.truth.name]
        per_prep.append(s)
    rule, rule_figs = loro_mod.choose_rule(preps, per_prep, final_threshold)
    clf = _fit(x, y)
    names = [r.name for r in records]
    blob = export_onnx(clf, final_threshold, int(y.shape[0]), names, rule.to_json())
    args.out.write_bytes(blob)

    report = {
        "model_version": MODEL_VERSION,
        "protocol": {
            "window_beats": WINDOW_BEATS,
            "step_beats": STEP_BEATS,
            "af_if_afib_fraction_at_least": 0.5,
            "artefact_filter": "models/af/artefacts.py RrCleaner",
        },
        "records": names,
        "loro": report_loro,
        "final_threshold": final_threshold,
        "final_alert_rule": json.loads(rule.to_json()),
        "final_alert_rule_out_of_fold": rule_figs,
        "onnx_bytes": len(blob),
    }
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

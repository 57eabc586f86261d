"""The evaluation protocol of MODEL_CARD.md, implemented once: records -> artefact filter -> windows -> features ->
ONNX -> metrics (window level); :func:`evaluate_episodes` adds the person-level figures of :mod:`models.af.episodes`.

Windows whose RR intervals are too corrupted for a decision (fewer than ``MIN_KEPT`` clean intervals) are kept
in the counts and scored 0 (non-AF), so a detector cannot improve its numbers by abstaining.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.af.data import Record
from models.af.features import batch_features
from models.af.metrics import Metrics
from models.af.model import AfModel


@dataclass(frozen=True)
class Evaluation:
    """Pooled metrics over all windows, metrics per record, and how many windows had no decision."""

    pooled: Metrics
    per_record: dict[str, Metrics] = field(default_factory=dict)
    undecided: int = 0
    threshold: float = 0.5
    model_version: str = ""

    def as_dict(self, *, per_record: bool = False) -> dict[str, object]:
        """The JSON object the CLI prints."""
        out: dict[str, object] = dict(self.pooled.as_dict())
        out["undecided_windows"] = self.undecided
        out["threshold"] = self.threshold
        out["model_version"] = self.model_version
        if per_record:
            out["per_record"] = {k: v.as_dict() for k, v in self.per_record.items()}
        return out


def evaluate(records: Sequence[Record], model: AfModel | None = None) -> Evaluation:
    """Score every protocol window of ``records`` with ``model`` (default: the committed one)."""
    from models.af.episodes import protocol_windows

    model = model or AfModel()
    w = protocol_windows(records)
    x, ok = batch_features(w.rr_ms)
    scores = np.zeros(len(w), dtype=np.float64)
    if ok.any():
        scores[ok] = model.scores(x[ok])
    per = {
        str(name): Metrics.compute(w.is_af[w.record == name], scores[w.record == name], model.threshold)
        for name in dict.fromkeys(w.record.tolist())
    }
    return Evaluation(
        pooled=Metrics.compute(w.is_af, scores, model.threshold),
        per_record=per,
        undecided=int((~ok).sum()),
        threshold=model.threshold,
        model_version=model.version,
    )


def evaluate_episodes(
    records: Sequence[Record],
    model: AfModel | None = None,
    *,
    truths: Sequence[Record] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Person-level figures of ``model`` with its threshold and alert rule: pooled, and ``per_record``.

    ``truths`` are the reference records when ``records`` carry injected faults (default: ``records``)."""
    from models.af.artefacts import clean_record
    from models.af.episodes import evaluate_record, pooled

    model = model or AfModel()
    m = model

    def score(rr: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, ok = batch_features(rr)
        p = np.full(rr.shape[0], np.nan)
        if ok.any():
            p[ok] = m.scores(x[ok])
        return p

    res = []
    for r, t in zip(records, truths or records, strict=True):
        if progress is not None:
            progress(f"af eval: alerts of record {r.name}")
        res.append(evaluate_record(t, clean_record(r)[0], score, model.threshold, model.alert_rule))
    out = pooled(res)
    out["alert_rule"] = model.alert_rule.to_json()
    out["per_record"] = {r.name: r.as_dict() for r in res}
    return out

"""Run the AF model on a person's live ``rr_interval`` stream and turn window decisions into episode alerts.

Every :data:`~models.af.data.STEP_BEATS` beats, the last :data:`~models.af.data.WINDOW_BEATS` RR intervals (ms)
are classified (the same features and model as the evaluation protocol). An episode opens after ``on_windows``
consecutive AF windows (3 windows = 120 beats, longer than the 30 s that defines an AF episode) and closes after
``off_windows`` consecutive windows below the lower threshold; see :mod:`models.rules.alert` for the alert
semantics (one id per episode; reopened within the cooldown). A gap in the beat stream (strap off, link lost)
empties the window, so no window ever spans a gap.

The ONNX session is created once per monitor (onnxruntime, one intra-op thread) and shared by all persons.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.af.data import STEP_BEATS, WINDOW_BEATS
from models.af.features import window_features
from models.af.model import AfModel
from models.rules.alert import Alert, EpisodeTracker, Persistence, Severity, State

AF_SOURCE = (
    "Kyojo RR-interval AF classifier, models/af/MODEL_CARD.md (trained on the MIT-BIH AF Database, ODC-By 1.0). "
    "Irregular rhythm screening only: AF is diagnosed on an ECG (Hindricks G et al. 2020 ESC Guidelines for "
    "atrial fibrillation, Eur Heart J 2021;42:373-498: >=30 s of AF on an ECG)"
)
AF_MESSAGE = (
    "Your heart rhythm has been irregular in a way that can be a sign of atrial fibrillation. This is not a "
    "diagnosis: please see a doctor for an ECG."
)


@dataclass
class _Stream:
    rr: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_BEATS))
    last_ts: float | None = None
    since_decision: int = 0
    tracker: EpisodeTracker | None = None


class AfMonitor:
    """AF episodes per person from their RR intervals (:meth:`push`, one beat at a time, or :meth:`push_series`).

    :mod:`edge_agent.processors.health` feeds it the gateway's ``rr_interval`` Readings."""

    def __init__(
        self,
        model: AfModel | None = None,
        *,
        on_windows: int = 3,
        off_windows: int = 4,
        off_margin: float = 0.1,
        max_beat_gap_s: float = 5.0,
        cooldown_s: float = 600.0,
    ) -> None:
        self.model = model or AfModel()
        self.on_threshold = self.model.threshold
        self.off_threshold = max(self.model.threshold - off_margin, 0.0)
        self.persistence = Persistence(
            min_count=on_windows,
            clear_count=off_windows,
            # decisions come every STEP_BEATS beats (<= 45 s at 40 bpm); more than that is a gap
            max_gap_s=2.0 * STEP_BEATS * 60.0 / 40.0,
            cooldown_s=cooldown_s,
        )
        self.max_beat_gap_s = max_beat_gap_s
        self._streams: dict[str, _Stream] = {}
        #: windows classified, and windows skipped for too many artefacts
        self.windows = 0
        self.undecided = 0

    def _stream(self, person: str) -> _Stream:
        s = self._streams.get(person)
        if s is None:
            s = _Stream()
            s.tracker = EpisodeTracker(
                person,
                "atrial_fibrillation",
                metric="rr_interval",
                unit="ms",
                source=AF_SOURCE,
                persistence=self.persistence,
                model_version=self.model.version,
            )
            self._streams[person] = s
        return s

    def push(self, person: str, ts: float, rr_ms: float) -> list[Alert]:
        """Feed one RR interval (ms) of ``person`` beating at ``ts``; returns the AF alerts it opened or closed."""
        s = self._stream(person)
        if s.last_ts is not None and (ts <= s.last_ts - 1e-9 or ts - s.last_ts > self.max_beat_gap_s):
            s.rr.clear()
            s.since_decision = 0
        s.last_ts = ts if s.last_ts is None else max(s.last_ts, ts)
        s.rr.append(rr_ms)
        s.since_decision += 1
        if len(s.rr) < WINDOW_BEATS or s.since_decision < STEP_BEATS:
            return []
        s.since_decision = 0
        feats = window_features(np.fromiter(s.rr, dtype=np.float64, count=len(s.rr)))
        if feats is None:
            self.undecided += 1
            return []
        self.windows += 1
        p = float(self.model.scores(feats[None, :])[0])
        state: State = "on" if p >= self.on_threshold else "clear" if p < self.off_threshold else "between"
        assert s.tracker is not None
        return s.tracker.step(
            ts,
            state,
            p,
            severity=Severity.ADVISORY,
            detail={"threshold": round(self.on_threshold, 4), "window_beats": WINDOW_BEATS},
            message=AF_MESSAGE,
        )

    def push_series(self, person: str, ts: npt.ArrayLike, rr_ms: npt.ArrayLike) -> list[Alert]:
        """Feed ``person``'s beats in order (beat times in UTC s, RR intervals in ms, equal lengths); all alerts
        emitted, in order."""
        t = np.asarray(ts, dtype=np.float64)
        rr = np.asarray(rr_ms, dtype=np.float64)
        if t.shape != rr.shape or t.ndim != 1:
            raise ValueError(f"push_series needs two 1-d arrays of one length, not {t.shape} and {rr.shape}")
        out: list[Alert] = []
        for when, value in zip(t.tolist(), rr.tolist(), strict=True):
            out += self.push(person, when, value)
        return out

    def open_alerts(self) -> list[Alert]:
        """AF episodes still open."""
        return [s.tracker.current for s in self._streams.values() if s.tracker and s.tracker.current]

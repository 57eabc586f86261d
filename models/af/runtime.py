"""Run the AF model on a person's live ``rr_interval`` stream and turn window decisions into episode alerts.

Each beat first goes through the artefact filter (:class:`models.af.artefacts.RrCleaner`: values outside
physiology rejected and counted, extra detections merged, missed beats split). Every
:data:`~models.af.data.STEP_BEATS` cleaned beats, the last :data:`~models.af.data.WINDOW_BEATS` RR intervals (ms)
are classified (the same filter, features and model as the evaluation protocol), and the decision goes to the
alert rule (:class:`models.af.alerting.BurdenRule`: AF burden over a sliding window, a confirmation count, a
refractory period; its parameters come from the model file, chosen by cross-validation in ``train.py``). One
alert per episode, carrying the episode's start estimate, end estimate and burden in ``evidence.detail``
(``episode_start_ms``, ``episode_end_ms``, ``burden``). A gap in the beat stream (strap off, link lost) empties the
window, so no window ever spans a gap.

The ONNX session is created once per monitor (onnxruntime, one intra-op thread) and shared by all persons.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.af.alerting import AlertRule, BurdenRule, EpisodeUpdate
from models.af.artefacts import MAX_GAP_S, CleanerCounts, RrCleaner
from models.af.data import STEP_BEATS, WINDOW_BEATS
from models.af.features import window_features
from models.af.model import AfModel
from models.rules.alert import Alert, Evidence, Severity

AF_KIND = "atrial_fibrillation"

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
    rule: BurdenRule
    cleaner: RrCleaner = field(default_factory=RrCleaner)
    rr: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_BEATS))
    times: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_BEATS))
    last_ts: float | None = None
    since_decision: int = 0
    probs: list[float] = field(default_factory=list)  # P(AF) of the AF windows of the open episode
    current: Alert | None = None


class AfMonitor:
    """AF episodes per person from their RR intervals (:meth:`push`, one beat at a time, or :meth:`push_series`).

    :mod:`edge_agent.processors.health` feeds it the gateway's ``rr_interval`` Readings. ``rule`` overrides the
    alert rule stored in the model file."""

    def __init__(
        self,
        model: AfModel | None = None,
        *,
        rule: AlertRule | None = None,
        max_beat_gap_s: float = MAX_GAP_S,
    ) -> None:
        self.model = model or AfModel()
        self.threshold = self.model.threshold
        self.rule = rule or self.model.alert_rule
        self.max_beat_gap_s = max_beat_gap_s
        self._streams: dict[str, _Stream] = {}
        #: windows classified, and windows skipped for too many artefacts
        self.windows = 0
        self.undecided = 0

    @property
    def artefacts(self) -> CleanerCounts:
        """What the artefact filter did, summed over persons."""
        total = CleanerCounts()
        for s in self._streams.values():
            for k, v in s.cleaner.counts.as_dict().items():
                setattr(total, k, getattr(total, k) + v)
        return total

    def rejected_by_person(self) -> dict[str, int]:
        """RR values rejected by the artefact filter (outside physiology, time backwards), per person."""
        return {p: s.cleaner.counts.rejected for p, s in self._streams.items()}

    def _stream(self, person: str) -> _Stream:
        s = self._streams.get(person)
        if s is None:
            s = _Stream(BurdenRule(self.rule))
            self._streams[person] = s
        return s

    def push(self, person: str, ts: float, rr_ms: float) -> list[Alert]:
        """Feed one RR interval (ms) of ``person`` beating at ``ts``; returns the AF alerts it opened or closed.

        Bad values (NaN, negative, outside physiology, time going backwards) are counted by the artefact filter
        (:attr:`artefacts`) and never raise."""
        s = self._stream(person)
        out: list[Alert] = []
        for t, rr, _ in s.cleaner.push(float(ts), float(rr_ms)):
            out += self._beat(person, s, t, rr)
        return out

    def _beat(self, person: str, s: _Stream, ts: float, rr_ms: float) -> list[Alert]:
        out: list[Alert] = []
        if s.last_ts is not None and ts - s.last_ts > self.max_beat_gap_s:
            s.rr.clear()
            s.times.clear()
            s.since_decision = 0
            out += self._updates(person, s, s.rule.idle(ts))
        s.last_ts = ts
        s.rr.append(rr_ms)
        s.times.append(ts)
        s.since_decision += 1
        if len(s.rr) < WINDOW_BEATS or s.since_decision < STEP_BEATS:
            return out
        s.since_decision = 0
        feats = window_features(np.fromiter(s.rr, dtype=np.float64, count=len(s.rr)))
        if feats is None:
            self.undecided += 1
            return out
        self.windows += 1
        p = float(self.model.scores(feats[None, :])[0])
        af = p >= self.threshold
        start = s.times[0] - s.rr[0] / 1000.0
        if af and s.rule.is_open:
            s.probs.append(p)
        updates = s.rule.step(ts, start, af)
        if af and updates and updates[-1].end is None:
            s.probs.append(p)
        return out + self._updates(person, s, updates)

    def _updates(self, person: str, s: _Stream, updates: list[EpisodeUpdate]) -> list[Alert]:
        out: list[Alert] = []
        for u in updates:
            if u.end is None and not u.reopened:
                s.probs = s.probs[-1:]
            probs = s.probs or [self.threshold]
            end_estimate = u.end if u.end is not None else u.raised
            alert = Alert(
                id=f"{person}:{AF_KIND}:{int(u.alert_start)}",
                person=person,
                kind=AF_KIND,
                severity=Severity.ADVISORY,
                started=u.start,
                ended=u.end,
                evidence=Evidence(
                    "rr_interval",
                    "ms",
                    u.windows,
                    u.start,
                    end_estimate,
                    min(probs),
                    max(probs),
                    sum(probs) / len(probs),
                    {
                        "threshold": round(self.threshold, 4),
                        "window_beats": WINDOW_BEATS,
                        "episode_start_ms": int(u.start * 1000),
                        "episode_end_ms": int(end_estimate * 1000),
                        "burden": round(u.burden, 4),
                        "raised_ms": int(u.raised * 1000),
                    },
                ),
                source=AF_SOURCE,
                message=AF_MESSAGE,
                model_version=self.model.version,
            )
            s.current = alert if u.end is None else None
            out.append(alert)
        return out

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
        return [s.current for s in self._streams.values() if s.current is not None]

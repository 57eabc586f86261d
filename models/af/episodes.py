"""Person-level evaluation of the AF alerts: episodes caught, detection delay, false alerts per person-day.

Per record (one person), the beats go through the artefact filter (:func:`models.af.artefacts.clean_record`),
the windows the runtime would decide (every :data:`STEP_BEATS` beats over the last :data:`WINDOW_BEATS`, a new
window only after a beat gap > :data:`~models.af.artefacts.MAX_GAP_S`, as in :class:`~models.af.runtime.AfMonitor`)
are scored, and the decisions replayed through :class:`~models.af.alerting.BurdenRule`.

Ground truth comes from the record's reference labels (before any injected fault):

- an **AF episode** is a maximal run of ``AFIB`` beats, from the start of its first interval to its last beat;
  episodes of at least :data:`MIN_EPISODE_S` (30 min) are the ones ``episode_sensitivity`` counts;
- an episode is **caught** when an alert is open at some moment of it; the **detection delay** is the time from
  the episode's start to the first such moment (0 when an alert was already open);
- an alert is **false** when none of its open spans [start estimate, end estimate (or end of record)], widened by
  :data:`MATCH_TOLERANCE_S` on both sides, touches an ``AFIB`` beat (an alert on a short AF episode is true:
  it is AF). Atrial flutter and junctional rhythm count as non-AF, as in the window protocol;
- **person-days** = non-AF time (sum of the RR intervals of non-``AFIB`` beats) / 24 h, pooled over records.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.af.alerting import AlertRule, BurdenRule, EpisodeUpdate
from models.af.artefacts import MAX_GAP_S, clean_record
from models.af.data import STEP_BEATS, WINDOW_BEATS, Record, Windows

MIN_EPISODE_S = 1800.0
MATCH_TOLERANCE_S = 60.0


@dataclass(frozen=True)
class RecordWindows:
    """The runtime's windows of one record: beat index of each window's first beat, its start/end time, label."""

    name: str
    first: npt.NDArray[np.int64]
    t_start: npt.NDArray[np.float64]
    t_end: npt.NDArray[np.float64]
    is_af: npt.NDArray[np.bool_]
    rr: npt.NDArray[np.float64]  # (n, WINDOW_BEATS)


def runtime_windows(rec: Record) -> RecordWindows:
    """Windows of ``rec`` exactly where :class:`~models.af.runtime.AfMonitor` decides (gaps restart the count)."""
    n = rec.rr_ms.shape[0]
    breaks = np.flatnonzero(np.diff(rec.t_s) > MAX_GAP_S) + 1 if n else np.zeros(0, dtype=np.int64)
    bounds = np.concatenate([[0], breaks, [n]]).astype(np.int64)
    firsts: list[npt.NDArray[np.int64]] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if b - a >= WINDOW_BEATS:
            firsts.append(np.arange(a, b - WINDOW_BEATS + 1, STEP_BEATS, dtype=np.int64))
    first = np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64)
    idx = first[:, None] + np.arange(WINDOW_BEATS)[None, :]
    rr = rec.rr_ms[idx] if first.size else np.zeros((0, WINDOW_BEATS))
    last = first + WINDOW_BEATS - 1
    t_start = rec.t_s[first] - rec.rr_ms[first] / 1000.0 if first.size else np.zeros(0)
    is_af = rec.is_af[idx].sum(axis=1) * 2 >= WINDOW_BEATS if first.size else np.zeros(0, dtype=bool)
    return RecordWindows(rec.name, first, t_start, rec.t_s[last] if first.size else np.zeros(0), is_af, rr)


def protocol_windows(records: Sequence[Record]) -> Windows:
    """The protocol's windows (training, window-level evaluation): each record through the artefact filter, then
    the runtime's windows (AF when at least half the window's beats carry ``AFIB``)."""
    parts = [runtime_windows(clean_record(r)[0]) for r in records]
    if not parts:
        return Windows(np.zeros((0, WINDOW_BEATS)), np.zeros(0, dtype=bool), np.zeros(0, dtype=str), np.zeros(0))
    return Windows(
        np.concatenate([p.rr for p in parts]).astype(np.float64),
        np.concatenate([p.is_af for p in parts]),
        np.concatenate([np.full(len(p.first), p.name) for p in parts]),
        np.concatenate([p.t_start for p in parts]),
    )


def replay(
    rule: AlertRule, t_start: Sequence[float], t_end: Sequence[float], af: Sequence[bool]
) -> list[EpisodeUpdate]:
    """All alert updates of the rule over one person's decisions (in time order)."""
    r = BurdenRule(rule)
    out: list[EpisodeUpdate] = []
    for a, b, c in zip(t_start, t_end, af, strict=True):
        out += r.step(float(b), float(a), bool(c))
    return out


def af_runs(rec: Record) -> list[tuple[float, float]]:
    """(start, end) in s of each maximal run of ``AFIB`` beats."""
    af = rec.is_af.astype(np.int8)
    if af.size == 0:
        return []
    x = np.diff(np.concatenate([[0], af, [0]]))
    s, e = np.flatnonzero(x == 1), np.flatnonzero(x == -1) - 1
    return [(float(rec.t_s[i] - rec.rr_ms[i] / 1000.0), float(rec.t_s[j])) for i, j in zip(s, e, strict=True)]


@dataclass
class RecordEpisodes:
    """Person-level outcome of one record."""

    name: str
    episodes: int = 0  # AF episodes >= MIN_EPISODE_S
    caught: int = 0
    delays_s: list[float] = field(default_factory=list)
    alerts: int = 0
    false_alerts: int = 0
    non_af_hours: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "af_episodes_30min": self.episodes,
            "episodes_caught": self.caught,
            "episode_sensitivity": round(self.caught / self.episodes, 4) if self.episodes else None,
            "median_detection_delay_s": round(statistics.median(self.delays_s), 1) if self.delays_s else None,
            "detection_delays_s": [round(d, 1) for d in self.delays_s],
            "alerts": self.alerts,
            "false_alerts": self.false_alerts,
            "non_af_hours": round(self.non_af_hours, 3),
            "false_alerts_per_person_day": round(self.false_alerts / (self.non_af_hours / 24.0), 4)
            if self.non_af_hours > 0
            else None,
        }


def score_record(truth: Record, updates: Sequence[EpisodeUpdate], record_end: float) -> RecordEpisodes:
    """Compare one person's alert updates with the reference rhythm of ``truth``."""
    spans: dict[float, list[tuple[float, float]]] = {}
    opened: dict[float, float] = {}
    for u in updates:
        if u.end is None:
            opened[u.alert_start] = u.raised
            spans.setdefault(u.alert_start, [])
        else:
            spans[u.alert_start].append((opened.pop(u.alert_start), u.end))
    for key, raised in opened.items():
        spans[key].append((raised, record_end))
    runs = af_runs(truth)
    out = RecordEpisodes(truth.name, alerts=len(spans))
    out.non_af_hours = float(truth.rr_ms[~truth.is_af].sum()) / 3.6e6
    # an alert is true if one of its spans, from the episode start estimate, touches AF
    starts = {u.alert_start: u.start for u in updates}
    for key, sp in spans.items():
        lo_first = min(starts[key], sp[0][0])
        ok = False
        for k, (a, b) in enumerate(sp):
            lo = lo_first if k == 0 else a
            if any(ra <= b + MATCH_TOLERANCE_S and rb >= lo - MATCH_TOLERANCE_S for ra, rb in runs):
                ok = True
                break
        out.false_alerts += not ok
    open_spans = [s for sp in spans.values() for s in sp]
    for ra, rb in runs:
        if rb - ra < MIN_EPISODE_S:
            continue
        out.episodes += 1
        hits = [max(a, ra) for a, b in open_spans if a <= rb and b >= ra]
        if hits:
            out.caught += 1
            out.delays_s.append(min(hits) - ra)
    return out


def pooled(results: Sequence[RecordEpisodes]) -> dict[str, object]:
    """The person-level figures over all records (delays pooled, person-days = pooled non-AF hours / 24)."""
    eps = sum(r.episodes for r in results)
    caught = sum(r.caught for r in results)
    delays = [d for r in results for d in r.delays_s]
    false = sum(r.false_alerts for r in results)
    hours = sum(r.non_af_hours for r in results)
    return {
        "episode_sensitivity": round(caught / eps, 4) if eps else None,
        "median_detection_delay_s": round(statistics.median(delays), 1) if delays else None,
        "false_alerts_per_person_day": round(false / (hours / 24.0), 4) if hours > 0 else None,
        "af_episodes_30min": eps,
        "episodes_caught": caught,
        "alerts": sum(r.alerts for r in results),
        "false_alerts": false,
        "person_days_non_af": round(hours / 24.0, 3),
    }


def evaluate_record(
    truth: Record,
    cleaned: Record,
    score: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
    threshold: float,
    rule: AlertRule,
) -> RecordEpisodes:
    """One person: windows of the cleaned beats, ``score`` (window RR matrix -> P(AF), NaN = no decision), alert
    rule, scored against ``truth``'s labels."""
    w = runtime_windows(cleaned)
    p = score(w.rr)
    ok = np.isfinite(p)
    updates = replay(rule, w.t_start[ok].tolist(), w.t_end[ok].tolist(), (p[ok] >= threshold).tolist())
    end = float(truth.t_s[-1]) if truth.t_s.size else 0.0
    return score_record(truth, updates, end)

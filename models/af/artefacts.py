"""What chest straps and PPG sensors really send, and the artefact filter that runs before the AF model.

**The filter** (:class:`RrCleaner`, streaming, one beat of look-ahead; :func:`clean_record` runs the same class
over a whole record, so training, evaluation and the gateway see identical beats):

1. *Out of physiology*: an RR that is not a finite number, or outside ``[HARD_MIN_MS, HARD_MAX_MS]`` (200..3000
   ms), or whose beat time is not finite or goes backwards, is rejected and counted (``rejected``). A positive
   interval shorter than ``HARD_MIN_MS`` is an extra detection: its duration is added to the next interval.
2. *Spurious (extra) beat*: an extra detection splits one interval into two. Two successive intervals whose sum
   is within ``MERGE_TOLERANCE`` (20 %) of the reference RR (median of the last ``REF_BEATS`` accepted
   intervals) and whose shorter part is below ``SHORT_FRACTION`` (60 %) of the reference are merged into one
   (``merged``). A premature beat with its compensatory pause sums to ~2 references, so ectopy is not merged.
3. *Missed beat*: a missed detection joins two intervals. An interval within ``MERGE_TOLERANCE`` of *twice* the
   reference is split into two equal halves (``split``).
4. *Gap* (strap slipped, link lost): a beat more than ``MAX_GAP_S`` after the previous one resets the reference
   (``gaps``); the monitor also empties its window, so no window spans a gap.

The reference needs ``MIN_REF`` accepted intervals; before that, beats pass unchanged (but rule 1 applies). The
halves of a split interval do not enter the reference (else it would drift to half the rate and split every
beat). A correction is a rare event: when ``MAX_CORRECTIONS`` of the last ``CORRECTION_SPAN`` beats were already
corrected, the rhythm itself changed (2:1 block, a sudden doubling of the rate, bigeminy): the beats pass
unchanged and the reference follows them.

**Injection** (:func:`inject`): the same four faults, at stated rates of the beats, deterministic for a seed;
used by the tests (``tests/models/test_af_alerts.py``) and ``kyojo models eval af --inject``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from models.af.data import Record

HARD_MIN_MS = 200.0
HARD_MAX_MS = 3000.0
REF_BEATS = 9
MIN_REF = 5
MERGE_TOLERANCE = 0.20
SHORT_FRACTION = 0.60
MAX_GAP_S = 5.0
MAX_CORRECTIONS = 2
CORRECTION_SPAN = 8


@dataclass
class CleanerCounts:
    """What the filter did, for the processor's health and the logs."""

    beats_in: int = 0
    beats_out: int = 0
    rejected: int = 0
    merged: int = 0
    split: int = 0
    gaps: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "beats_in": self.beats_in,
            "beats_out": self.beats_out,
            "rejected": self.rejected,
            "merged": self.merged,
            "split": self.split,
            "gaps": self.gaps,
        }


@dataclass
class RrCleaner:
    """The artefact filter of one person's beat stream (see the module docstring).

    :meth:`push` takes one beat (time in s, RR in ms, and an optional label carried through for evaluation) and
    returns the cleaned beats it releases (0, 1 or 2; one beat of delay). :meth:`flush` releases the held beat.
    """

    counts: CleanerCounts = field(default_factory=CleanerCounts)
    _ref: deque[float] = field(default_factory=lambda: deque(maxlen=REF_BEATS))
    _recent_fix: deque[bool] = field(default_factory=lambda: deque(maxlen=CORRECTION_SPAN))
    _pending: tuple[float, float, str] | None = None
    _last_ts: float | None = None
    _carry: float = 0.0

    def _reference(self) -> float | None:
        if len(self._ref) < MIN_REF:
            return None
        return float(np.median(np.fromiter(self._ref, dtype=np.float64, count=len(self._ref))))

    def _may_correct(self) -> bool:
        return sum(self._recent_fix) < MAX_CORRECTIONS

    def _emit(self, beats: list[tuple[float, float, str]], *, fixed: bool = False) -> list[tuple[float, float, str]]:
        if not fixed:
            for _, rr, _ in beats:
                self._ref.append(rr)
        self._recent_fix.append(fixed)
        self.counts.beats_out += len(beats)
        return beats

    def flush(self) -> list[tuple[float, float, str]]:
        """Release the beat held for look-ahead (end of data, or before a gap)."""
        p, self._pending = self._pending, None
        if p is None:
            return []
        ref = self._reference()
        if ref is not None and abs(p[1] - 2.0 * ref) <= MERGE_TOLERANCE * ref and self._may_correct():
            self.counts.split += 1
            half = p[1] / 2.0
            return self._emit([(p[0] - half / 1000.0, half, p[2]), (p[0], half, p[2])], fixed=True)
        return self._emit([p])

    def push(self, ts: float, rr_ms: float, label: str = "") -> list[tuple[float, float, str]]:
        """One beat in; the cleaned beats released, as ``(ts, rr_ms, label)``."""
        self.counts.beats_in += 1
        if math.isfinite(rr_ms) and math.isfinite(ts) and 0.0 < rr_ms < HARD_MIN_MS:
            # an extra detection too early to be a beat: the next interval started at the previous true beat
            self.counts.rejected += 1
            self._carry += rr_ms
            return []
        if math.isfinite(rr_ms):
            rr_ms += self._carry
        self._carry = 0.0
        if (
            not (math.isfinite(rr_ms) and math.isfinite(ts))
            or not HARD_MIN_MS <= rr_ms <= HARD_MAX_MS
            or (self._last_ts is not None and ts <= self._last_ts)
        ):
            self.counts.rejected += 1
            return []
        out: list[tuple[float, float, str]] = []
        if self._last_ts is not None and ts - self._last_ts > MAX_GAP_S:
            self.counts.gaps += 1
            out += self.flush()
            self._ref.clear()
            self._recent_fix.clear()
        self._last_ts = ts
        p = self._pending
        if p is None:
            self._pending = (ts, rr_ms, label)
            return out
        ref = self._reference()
        if (
            ref is not None
            and abs(p[1] + rr_ms - ref) <= MERGE_TOLERANCE * ref
            and min(p[1], rr_ms) < SHORT_FRACTION * ref
            and self._may_correct()
        ):
            self.counts.merged += 1
            self._pending = None
            # the merged interval ends at this beat; it carries the later beat's label
            return out + self._emit([(ts, p[1] + rr_ms, label)], fixed=True)
        out += self.flush()
        self._pending = (ts, rr_ms, label)
        return out


def clean_record(rec: Record) -> tuple[Record, CleanerCounts]:
    """A whole record through :class:`RrCleaner` (the labels follow their beats)."""
    c = RrCleaner()
    out: list[tuple[float, float, str]] = []
    for t, rr, lab in zip(rec.t_s.tolist(), rec.rr_ms.tolist(), rec.rhythm.tolist(), strict=True):
        out += c.push(t, rr, lab)
    out += c.flush()
    if not out:
        return Record(rec.name, np.zeros(0), np.zeros(0), np.zeros(0, dtype=rec.rhythm.dtype)), c.counts
    t_a, rr_a, lab_a = zip(*out, strict=True)
    return (
        Record(rec.name, np.asarray(t_a, dtype=np.float64), np.asarray(rr_a, dtype=np.float64), np.asarray(lab_a)),
        c.counts,
    )


@dataclass(frozen=True)
class Injection:
    """Fault rates, each a fraction of the beats (``gaps`` per hour, each ``gap_s`` long)."""

    missed: float = 0.0
    spurious: float = 0.0
    nonphysio: float = 0.0
    gaps_per_hour: float = 0.0
    gap_s: float = 60.0

    @classmethod
    def parse(cls, text: str) -> Injection:
        """``"missed=0.03,spurious=0.03"`` -> Injection; keys are the field names."""
        kw: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown fault {key!r}: use {', '.join(cls.__dataclass_fields__)}")
            kw[key] = float(value)
            if not 0.0 <= kw[key] <= (1e6 if key.startswith("gap") else 0.5):
                raise ValueError(f"{key}={value} is out of range")
        return cls(**kw)

    def label(self) -> str:
        """``missed=0.03,spurious=0.03`` (the faults present)."""
        keys = [k for k in ("missed", "spurious", "nonphysio", "gaps_per_hour") if getattr(self, k)]
        if self.gaps_per_hour:
            keys.append("gap_s")
        return ",".join(f"{k}={getattr(self, k)}" for k in keys)


def inject(rec: Record, faults: Injection, seed: int = 0) -> Record:
    """``rec`` with faults injected, deterministic for ``seed``.

    - missed: a fraction of beats is not detected; its interval joins the next one (sum).
    - spurious: a fraction of intervals gets an extra detection at a uniform 15-85 % of the interval.
    - nonphysio: a fraction of RR values is replaced by NaN, a negative value, 0 or 65535 ms (a corrupt frame).
    - gaps: ``gaps_per_hour`` stretches of ``gap_s`` with no beats at all (strap slipped).
    """
    rng = np.random.default_rng(seed)
    t, rr, lab = rec.t_s.copy(), rec.rr_ms.copy(), rec.rhythm.copy()
    n = rr.shape[0]
    if faults.missed > 0 and n > 2:
        drop = np.flatnonzero(rng.random(n - 1) < faults.missed)  # beat i missed: rr[i+1] += rr[i]
        keep = np.ones(n, dtype=bool)
        for i in drop.tolist():
            if keep[i]:
                j = i + 1
                rr[j] += rr[i]
                keep[i] = False
        t, rr, lab = t[keep], rr[keep], lab[keep]
        n = rr.shape[0]
    if faults.spurious > 0 and n > 0:
        idx = np.flatnonzero(rng.random(n) < faults.spurious)
        frac = np.asarray(rng.uniform(0.15, 0.85, size=n), dtype=np.float64)
        first = np.asarray(rr[idx] * frac[idx], dtype=np.float64)
        new_t = t[idx] - (rr[idx] - first) / 1000.0
        rr[idx] = rr[idx] - first
        t = np.insert(t, idx, new_t)
        rr = np.insert(rr, idx, first)
        lab = np.insert(lab, idx, lab[idx])
        n = rr.shape[0]
    if faults.nonphysio > 0 and n > 0:
        where = np.flatnonzero(rng.random(n) < faults.nonphysio)
        bad = np.array([math.nan, -800.0, 0.0, 65535.0])
        rr[where] = bad[rng.integers(0, bad.shape[0], where.shape[0])]
    if faults.gaps_per_hour > 0 and n > 0:
        hours = (t[-1] - t[0]) / 3600.0
        k = rng.poisson(faults.gaps_per_hour * hours)
        keep = np.ones(n, dtype=bool)
        for start in rng.uniform(t[0], t[-1], k).tolist():
            keep &= ~((t >= start) & (t < start + faults.gap_s))
        t, rr, lab = t[keep], rr[keep], lab[keep]
    return replace(rec, t_s=t, rr_ms=rr, rhythm=lab)

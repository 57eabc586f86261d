"""Honest release of NILM estimates: the confidence gate and plug calibration (issue 19).

An appliance's estimate for a minute is *shown* (becomes a Reading, appears on the home page, may be released)
only when there is evidence for this home:

1. **Plug calibration.** While a smart plug measures the appliance, the gateway still runs the model on the mains
   minus the *other* plugs and keeps (estimate, on-probability, plug) per minute. After
   :data:`MIN_ACTIVATIONS` activations (the plug rising above the appliance's on-threshold) it fits a
   :class:`Calibration` on those minutes: an on-probability threshold (from :data:`P_ON_GRID`, the one with the
   lowest MAE) and a power scale (median plug / model power over minutes both call "on"). If the calibrated model
   beats always-off on those minutes (MAE at most :data:`BEAT_RATIO` x always-off's), its estimates are shown once
   the plug is gone; if not, they are withheld for this home whatever the model's confidence.
2. **Confidence** (no calibration yet): shown when the model's confidence in the state it reports,
   ``max(p_on, 1 - p_on)``, is at least :data:`models.nilm.metrics.SHOW_CONFIDENCE` *and* the model's manifest
   entry has ``confidence_release`` (the leave-one-house-out protocol showed that this gate meets the target on
   most held-out houses for that appliance; for the others a confident number was too often wrong in a new home).

Everything else is withheld: the page says "not enough evidence for this home" instead of a number.
Pure numpy, no I/O: the runtime feeds it, the tests drive it directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.nilm.data import ON_THRESHOLD_W, FloatArray
from models.nilm.metrics import SHOW_CONFIDENCE

#: Plug activations needed before a calibration is fitted.
MIN_ACTIVATIONS = 5
#: A calibrated model must reach MAE <= this x always-off's on the calibration minutes to be shown.
BEAT_RATIO = 0.7
#: Candidate on-probability thresholds for the calibration (0.5 = the model's own decision).
P_ON_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
#: A calibrator keeps at most this many minutes (the latest four weeks).
MAX_MINUTES = 28 * 24 * 60
#: The scale is bounded: a plug tells us the rating, but not a 3x different appliance.
SCALE_RANGE = (0.5, 2.0)


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a plug taught the gateway about one appliance in this home."""

    appliance: str
    activations: int
    minutes: int
    p_on_threshold: float
    scale: float
    mae_w: float  # calibrated model on the calibration minutes
    always_off_mae_w: float
    beats_always_off: bool

    def apply(self, power_w: FloatArray, p_on: FloatArray) -> FloatArray:
        """Calibrated power: the scaled estimate where ``p_on`` reaches the threshold, else 0."""
        return np.where(np.asarray(p_on) >= self.p_on_threshold, np.asarray(power_w) * self.scale, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the processor's state file and health)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Back from :meth:`as_dict` (the state file survives restarts)."""
        return cls(
            appliance=str(d["appliance"]),
            activations=int(d["activations"]),
            minutes=int(d["minutes"]),
            p_on_threshold=float(d["p_on_threshold"]),
            scale=float(d["scale"]),
            mae_w=float(d["mae_w"]),
            always_off_mae_w=float(d["always_off_mae_w"]),
            beats_always_off=bool(d["beats_always_off"]),
        )


def p_on_of(power_w: FloatArray, confidence: FloatArray) -> FloatArray:
    """The on-probability back from (power, confidence): the model says "on" (power > 0) iff p_on > 0.5."""
    power_w = np.asarray(power_w, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    return np.where(power_w > 0, confidence, 1.0 - confidence)


def activations(plug_w: FloatArray, threshold_w: float) -> int:
    """Rising edges of ``plug > threshold`` (a run that starts at the first minute counts)."""
    on = np.asarray(plug_w, dtype=np.float64) > threshold_w
    return int(on[0]) + int(np.sum(on[1:] & ~on[:-1])) if on.size else 0


def fit_calibration(appliance: str, power_w: FloatArray, p_on: FloatArray, plug_w: FloatArray) -> Calibration:
    """Fit the threshold and scale on aligned minutes (model estimate, its on-probability, the plug's truth)."""
    power_w = np.asarray(power_w, dtype=np.float64)
    p_on = np.asarray(p_on, dtype=np.float64)
    plug_w = np.asarray(plug_w, dtype=np.float64)
    ok = np.isfinite(power_w) & np.isfinite(p_on) & np.isfinite(plug_w)
    power_w, p_on, plug_w = power_w[ok], p_on[ok], plug_w[ok]
    thr = ON_THRESHOLD_W[appliance]
    off_mae = float(np.mean(np.abs(plug_w))) if plug_w.size else 0.0
    best: tuple[float, float, float] | None = None  # (mae, p_on threshold, scale)
    for t in P_ON_GRID:
        on = (p_on >= t) & (power_w > 0)
        both = on & (plug_w > thr)
        scale = float(np.median(plug_w[both] / power_w[both])) if np.any(both) else 1.0
        scale = float(np.clip(scale, *SCALE_RANGE))
        mae = float(np.mean(np.abs(np.where(on, power_w * scale, 0.0) - plug_w))) if plug_w.size else 0.0
        if best is None or mae < best[0] - 1e-9:
            best = (mae, t, scale)
    assert best is not None
    mae, t, scale = best
    return Calibration(
        appliance=appliance,
        activations=activations(plug_w, thr),
        minutes=int(plug_w.size),
        p_on_threshold=t,
        scale=round(scale, 4),
        mae_w=round(mae, 3),
        always_off_mae_w=round(off_mae, 3),
        beats_always_off=bool(off_mae > 0 and mae <= BEAT_RATIO * off_mae),
    )


@dataclass
class PlugCalibrator:
    """Collects one plugged appliance's minutes and fits a :class:`Calibration` after enough activations."""

    appliance: str
    min_activations: int = MIN_ACTIVATIONS
    power: list[float] = field(default_factory=list)
    p_on: list[float] = field(default_factory=list)
    plug: list[float] = field(default_factory=list)
    _on: bool = False
    seen: int = 0

    def add(self, power_w: float, p_on: float, plug_w: float) -> Calibration | None:
        """One minute; returns a fresh calibration each time enough activations have been seen (refits as more
        come: the latest, fitted on every minute so far, replaces the last)."""
        self.power.append(power_w)
        self.p_on.append(p_on)
        self.plug.append(plug_w)
        if len(self.plug) > MAX_MINUTES:
            del self.power[0], self.p_on[0], self.plug[0]
        on = plug_w > ON_THRESHOLD_W[self.appliance]
        rose = on and not self._on
        self._on = on
        if rose:
            self.seen += 1
            if self.seen >= self.min_activations:
                return fit_calibration(self.appliance, np.array(self.power), np.array(self.p_on), np.array(self.plug))
        return None


def shown(
    confidence: float,
    calibration: Calibration | None,
    show_confidence: float = SHOW_CONFIDENCE,
    *,
    confidence_release: bool = True,
) -> bool:
    """The release rule for one model estimate (see the module docstring)."""
    if calibration is not None:
        return calibration.beats_always_off
    return confidence_release and confidence >= show_confidence

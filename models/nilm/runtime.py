"""Streaming disaggregation over the meter's power samples: one inference per appliance per minute.

Feed every power sample (device, time, watts) to :meth:`NilmRuntime.push` (unknown devices are ignored); it
returns the :class:`Estimate` objects that became available. The agent's processor (``edge_agent/processors/
nilm.py``) feeds it the gateway's ``power`` Readings and turns the estimates into ``power`` (W) and ``energy`` (Wh,
cumulative) Readings marked as estimated.

Timing and binning
    A power sample at ``ts`` is the mean over the interval ending at ``ts`` (the meter and plug convention), so it
    belongs to the minute ``(m, m + 60]`` with ``m = 60 * (ceil(ts / 60) - 1)``; a minute's power is the mean of
    its samples. A minute is closed when a meter sample arrives for a minute at least ``close_lag_min`` later
    (late plug samples get that long to arrive); samples for a closed minute are dropped and counted
    (``stats["late"]``). Each closed minute triggers one ONNX run per appliance, for the minute at the centre of
    that appliance's window, so estimates lag the meter by ``window // 2 + close_lag_min`` minutes (kettle and
    microwave 16, dishwasher and washing machine 61). :meth:`NilmRuntime.flush` closes what is open at the end.

Gaps (the rule in :mod:`models.nilm.windows`, identical to evaluation)
    A minute without a meter sample gets no estimate, and neither does a minute whose window is more than half
    missing: no energy is attributed for such minutes, and the energy counters only advance by
    ``power_w * 60 s`` for minutes that have an estimate. Missing minutes inside an accepted window are held at the
    last measured value for the model input only.

Plug assistance
    ``plugs`` maps plug device ids to what they power. Every plugged load is subtracted from the mains minute by
    minute (floored at 0; a plug minute with no sample subtracts nothing) and the models see the residual. An
    appliance of ours that has a plug is reported from its plug (``source="plug"``) for minutes the plug
    measured, and from its model otherwise.

Estimates are non-negative, at most the (residual) mains of their minute and at most the model's ``max_w``.

Honest release (:mod:`models.nilm.gate`)
    Every model estimate carries its ``confidence`` and a ``shown`` flag: shown when a plug calibration for this
    home says the (calibrated) model beats always-off, or, without one, when the confidence is at least
    :data:`models.nilm.metrics.SHOW_CONFIDENCE`. While an appliance has a plug, the model still runs on the mains
    minus the *other* plugs and a :class:`models.nilm.gate.PlugCalibrator` learns from the pairs; after enough
    activations its :class:`models.nilm.gate.Calibration` (threshold, scale, verdict) applies to the model's later
    estimates (when the plug is gone). ``shown_counts`` / ``withheld_counts`` count per appliance; the energy
    counters advance only over shown minutes (a withheld number is not counted anywhere).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from models.nilm.data import STEP_S, FloatArray
from models.nilm.gate import MIN_ACTIVATIONS, Calibration, PlugCalibrator, p_on_of, shown
from models.nilm.model import NilmModels
from models.nilm.windows import fill_windows

MODEL_SOURCE = "nilm-model"
PLUG_SOURCE = "plug"


@dataclass(frozen=True, slots=True)
class Estimate:
    """One appliance's estimate for one minute ``(ts - 60, ts]``: mean power and the cumulative energy counter."""

    appliance: str
    ts: float
    power_w: float
    energy_wh: float
    source: str
    confidence: float = 1.0
    shown: bool = True


def minute_of(ts: float) -> int:
    """Start (UTC s) of the minute ``(m, m + 60]`` a sample at ``ts`` covers."""
    return STEP_S * (math.ceil(ts / STEP_S) - 1)


@dataclass
class _Bin:
    total: float = 0.0
    count: int = 0

    def add(self, v: float) -> None:
        self.total += v
        self.count += 1

    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


@dataclass
class _Minute:
    meter: _Bin = field(default_factory=_Bin)
    plugs: dict[str, _Bin] = field(default_factory=dict)


class NilmRuntime:
    """Rolling windows over the meter's minutes and per-appliance ONNX inference (sessions created once)."""

    def __init__(
        self,
        models: NilmModels | None = None,
        *,
        meter: str | None = None,
        plugs: Mapping[str, str] | None = None,
        initial_energy_wh: Mapping[str, float] | None = None,
        close_lag_min: int = 1,
        calibrations: Mapping[str, Calibration] | None = None,
        min_activations: int | None = None,
    ) -> None:
        self.models = models if models is not None else NilmModels()
        self.meter = meter
        self.plugs = dict(plugs or {})
        self.close_lag_min = close_lag_min
        self.energy_wh = {a: float((initial_energy_wh or {}).get(a, 0.0)) for a in self.models.appliances}
        self.stats = {"readings": 0, "late": 0, "ignored": 0, "minutes": 0, "inferences": 0, "estimates": 0}
        self.calibrations: dict[str, Calibration] = dict(calibrations or {})
        n_act = MIN_ACTIVATIONS if min_activations is None else min_activations
        self.calibrators = {
            a: PlugCalibrator(a, min_activations=n_act) for a in set(self.plugs.values()) if a in self.models.appliances
        }
        self.shown_counts = dict.fromkeys(self.models.appliances, 0)
        self.withheld_counts = dict.fromkeys(self.models.appliances, 0)
        width = self.models.max_window
        self._ts: deque[int] = deque(maxlen=width)  # closed minutes (start), oldest first
        self._mains: deque[float] = deque(maxlen=width)
        self._resid: deque[float] = deque(maxlen=width)
        self._plug: deque[dict[str, float]] = deque(maxlen=width)  # our appliances' plug power per minute
        self._open: dict[int, _Minute] = {}
        self._next: int | None = None  # start of the next minute to close

    def push(self, device: str, ts: float, power_w: float) -> list[Estimate]:
        """Take one power sample (W, the mean over the interval ending at ``ts``, UTC s) of the meter or of a plug;
        return the estimates it made available (usually none or one per appliance)."""
        is_plug = device in self.plugs
        if not is_plug and self.meter is not None and device != self.meter:
            self.stats["ignored"] += 1
            return []
        self.stats["readings"] += 1
        m = minute_of(ts)
        if self._next is not None and m < self._next:
            self.stats["late"] += 1
            return []
        slot = self._open.setdefault(m, _Minute())
        value = max(float(power_w), 0.0)
        if is_plug:
            slot.plugs.setdefault(device, _Bin()).add(value)
            return []
        slot.meter.add(value)
        if self._next is None:
            self._next = m
        return self._close_until(m - STEP_S * self.close_lag_min)

    def flush(self) -> list[Estimate]:
        """Close every open minute and run out the windows (end of stream): the remaining estimates."""
        if self._next is None:
            return []
        last = max([*self._open, self._next - STEP_S])
        out = self._close_until(last)
        tail = self.models.max_window // 2
        out += self._close_until(last + STEP_S * tail, pad_only=True)
        return out

    def _close_until(self, last: int, *, pad_only: bool = False) -> list[Estimate]:
        """Close minutes from ``self._next`` through ``last`` (gaps become NaN minutes, long gaps are skipped)."""
        out: list[Estimate] = []
        if self._next is None:
            return out
        width = self.models.max_window
        while self._next <= last:
            if (
                not pad_only
                and self._next not in self._open
                and all(not math.isfinite(v) for v in list(self._mains)[-width:])
                and len(self._mains) == width
            ):
                # a long gap: nothing in the buffer can produce an estimate any more; jump to the next data
                later = [k for k in self._open if k >= self._next]
                self._next = min(min(later), last + STEP_S) if later else last + STEP_S
                continue
            slot = self._open.pop(self._next, _Minute())
            out += self._append(self._next, slot)
            self._next += STEP_S
        return out

    def _append(self, minute: int, slot: _Minute) -> list[Estimate]:
        mains = slot.meter.mean()
        plug_means = {dev: b.mean() for dev, b in slot.plugs.items()}
        resid = mains - sum(v for v in plug_means.values() if math.isfinite(v))
        self._ts.append(minute)
        self._mains.append(mains)
        self._resid.append(max(resid, 0.0) if math.isfinite(resid) else float("nan"))
        ours = {self.plugs[d]: v for d, v in plug_means.items() if math.isfinite(v)}
        self._plug.append(ours)
        self.stats["minutes"] += 1
        return self._infer()

    def _window(self, series: FloatArray, w: int) -> FloatArray | None:
        """The last ``w`` minutes of ``series`` filled per the gap rule, or None when the rule gives no estimate."""
        n = series.shape[0]
        win = np.full(w, np.nan)
        take = min(w, n)
        win[w - take :] = series[n - take :]
        filled, ok = fill_windows(win[None, :])
        return filled if ok[0] else None

    def _infer(self) -> list[Estimate]:
        out: list[Estimate] = []
        n = len(self._ts)
        resid = np.fromiter(self._resid, dtype=np.float64, count=n)
        for name, m in self.models.models.items():
            w = m.window
            c = n - 1 - w // 2  # buffer index of this appliance's centre minute
            if c < 0 or not math.isfinite(self._mains[c]):
                continue
            plug = self._plug[c].get(name)
            if plug is not None:
                value, source, conf, show = plug, PLUG_SOURCE, 1.0, True
                cal = self.calibrators.get(name)
                if cal is not None:
                    # the model on the mains minus the *other* plugs, beside this plug's truth
                    own = np.fromiter((p.get(name, 0.0) for p in self._plug), dtype=np.float64, count=n)
                    filled = self._window(resid + own, w)
                    if filled is not None:
                        self.stats["inferences"] += 1
                        pw, cf = m.run_with_confidence(filled)
                        fitted = cal.add(float(pw[0]), float(p_on_of(pw, cf)[0]), plug)
                        if fitted is not None:
                            self.calibrations[name] = fitted
            else:
                filled = self._window(resid, w)
                if filled is None:
                    continue
                self.stats["inferences"] += 1
                pw, cf = m.run_with_confidence(filled)
                value, conf, source = float(pw[0]), float(cf[0]), MODEL_SOURCE
                calib = self.calibrations.get(name)
                if calib is not None:
                    value = float(calib.apply(pw, p_on_of(pw, cf))[0])
                show = shown(conf, calib, confidence_release=m.confidence_release)
            value = max(value, 0.0)
            if show:
                self.energy_wh[name] += value * STEP_S / 3600.0
                self.shown_counts[name] += 1
            else:
                self.withheld_counts[name] += 1
            ts = float(self._ts[c] + STEP_S)
            out.append(Estimate(name, ts, value, self.energy_wh[name], source, conf, show))
        self.stats["estimates"] += len(out)
        return out

"""Model windows from a 1-minute mains series, and the one gap rule shared by training, evaluation and run time.

Gap rule (no energy is invented):

1. A minute with no meter reading is a gap (NaN). No estimate is produced for it, so its energy is not attributed
   to any appliance (the runtime's energy counters do not advance over it).
2. An estimate for minute ``t`` needs the window centred on ``t`` (``window`` minutes, ``t`` at index
   ``window // 2``) to have measured mains at ``t`` and in at least ``1 - MAX_MISSING_FRACTION`` of its minutes;
   otherwise there is no estimate for ``t`` either. Minutes before the first / after the last reading count as
   missing (so the first and last half-window of a stream need real context before estimates appear).
3. Inside an accepted window, missing minutes are filled with the last measured value before them (hold), and
   leading missing minutes with the first measured value; this only shapes the model input, never an output.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from models.nilm.data import FloatArray

#: At most this fraction of a window may be missing for an estimate to be produced.
MAX_MISSING_FRACTION = 0.5

BoolArray = npt.NDArray[np.bool_]


def fill_windows(w: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Fill gaps in windows ``w`` (shape ``(n, window)``, NaN = missing) per the gap rule.

    Returns ``(filled, ok)``: ``filled`` has no NaN (rows with no data are all zero) and ``ok[i]`` says whether row
    ``i`` may produce an estimate (centre measured, enough measured minutes).
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError("windows must be 2-D (n, window)")
    n, width = w.shape
    finite = np.isfinite(w)
    centre = width // 2
    ok = finite[:, centre] & (finite.sum(axis=1) >= np.ceil((1.0 - MAX_MISSING_FRACTION) * width))
    if finite.all():
        return w.copy(), ok
    cols = np.broadcast_to(np.arange(width), (n, width))
    last = np.maximum.accumulate(np.where(finite, cols, -1), axis=1)
    rows = np.arange(n)[:, None]
    filled = w[rows, np.maximum(last, 0)]
    first = np.argmax(finite, axis=1)
    lead = last < 0
    filled = np.where(lead, w[np.arange(n), first][:, None], filled)
    filled = np.where(np.isfinite(filled), filled, 0.0)
    return filled, ok


def series_windows(x: FloatArray, window: int) -> FloatArray:
    """All centred windows of ``x`` (one per minute), NaN-padded at both ends: shape ``(len(x), window)``.

    A read-only view into one padded copy, so it costs ``len(x) + window`` floats until filled.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError("window must be a positive odd number of minutes")
    half = window // 2
    pad = np.full(half, np.nan)
    xp = np.concatenate([pad, np.asarray(x, dtype=np.float64), pad])
    return sliding_window_view(xp, window)

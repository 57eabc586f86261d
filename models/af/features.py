"""Irregularity features of one RR window, with artefact and ectopic-beat filtering (numpy only).

Filtering (applied to every window, identically in training, evaluation and at run time):

1. Artefacts: RR outside ``[RR_MIN_MS, RR_MAX_MS]`` (250..2500 ms, i.e. 240..24 bpm) is a missed or extra QRS
   detection, not a heartbeat interval, and is dropped.
2. Ectopic beats and detection errors: an RR that differs by more than ``ECTOPIC_FRACTION`` (30 %) from the
   running median of the surrounding ``MEDIAN_BEATS`` (9) valid intervals is dropped (the filter the AFDB
   subset's README recommends; a premature beat and its compensatory pause are both removed).

Successive differences are taken only between two *adjacent* kept intervals, so a dropped beat never creates a
spurious jump. Because AF is itself irregular, the filter also removes many AF intervals: the fraction removed is
itself a feature, and the unfiltered normalised RMSSD and CV are kept next to the filtered ones.

Features (:data:`FEATURE_NAMES`), after Dash et al. 2009 (RMSSD, turning points ratio, Shannon entropy),
Lake & Moorman 2011 (sample entropy with m = 1, r = 30 ms) and Tateno & Glass 2001 (RR variability):
``cv``, ``nrmssd``, ``pnn50``, ``prr6``, ``tpr``, ``sampen``, ``shannon``,
``ac1``, ``sd1_sd2``, ``frac_removed``, ``raw_nrmssd``, ``raw_cv``, ``mad_rel``, ``frac_flat``, ``dominant``,
``lorenz_cells``, ``frac_compensated`` (the last four target sinus rhythm with frequent ectopy, see the comments in
the code; ``frac_compensated`` is the fraction of intervals in premature-beat groups whose sum is a whole number of
dominant cycles: the compensatory pause of ectopic beats, which AF lacks).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

RR_MIN_MS = 250.0
RR_MAX_MS = 2500.0
ECTOPIC_FRACTION = 0.30
MEDIAN_BEATS = 9
#: Sample entropy: template length 1, tolerance 30 ms (Lake & Moorman 2011 use m = 1, r = 30 ms for COSEn).
SAMPEN_M = 1
SAMPEN_R_MS = 30.0
SHANNON_BINS = 16
#: |dRR| below this fraction of the median RR counts as "flat" (two near-identical intervals)
FLAT_FRACTION = 0.03
#: RR within this fraction of the window's median belongs to the dominant rhythm
DOMINANT_FRACTION = 0.05
#: cell size of the Lorenz-plot occupancy feature
LORENZ_CELL_MS = 40.0
#: Ectopy signature: a premature interval (< PREMATURE_FRACTION of the median) that starts a group of 2 or 3
#: intervals summing to 2 or 3 median cycles within COMPENSATION_TOLERANCE (the compensatory pause of an atrial or
#: ventricular premature beat, a couplet, bigeminy). In AF, interval sums are not locked to a dominant cycle.
PREMATURE_FRACTION = 0.90
COMPENSATION_TOLERANCE = 0.08
#: A window with fewer kept intervals than this gives no decision (too much artefact).
MIN_KEPT = 20

FEATURE_NAMES: tuple[str, ...] = (
    "cv",
    "nrmssd",
    "pnn50",
    "prr6",
    "tpr",
    "sampen",
    "shannon",
    "ac1",
    "sd1_sd2",
    "frac_removed",
    "raw_nrmssd",
    "raw_cv",
    "mad_rel",
    "frac_flat",
    "dominant",
    "lorenz_cells",
    "frac_compensated",
)
N_FEATURES = len(FEATURE_NAMES)


def keep_mask(rr_ms: FloatArray) -> npt.NDArray[np.bool_]:
    """Which intervals survive the artefact and ectopic filters (see the module docstring)."""
    rr = np.asarray(rr_ms, dtype=np.float64)
    valid = (rr >= RR_MIN_MS) & (rr <= RR_MAX_MS)
    keep = valid.copy()
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return keep
    v = rr[idx]
    half = MEDIAN_BEATS // 2
    padded = np.pad(v, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, MEDIAN_BEATS)
    med = np.median(windows, axis=1)
    keep[idx] = np.abs(v - med) <= ECTOPIC_FRACTION * med
    return keep


def sample_entropy(x: FloatArray, m: int = SAMPEN_M, r: float = SAMPEN_R_MS) -> float:
    """Sample entropy -ln(A/B) with Chebyshev distance, self-matches excluded.

    To stay finite on short windows, one match is added to both counts (-ln((A+1)/(B+1))): with no
    ``m+1``-length match the value is large but bounded.
    """
    n = x.shape[0]
    if n <= m + 1:
        return 0.0
    # templates of length m and m+1 over the same n-m starts (Richman & Moorman 2000)
    tm = np.lib.stride_tricks.sliding_window_view(x, m)[: n - m]
    tm1 = np.lib.stride_tricks.sliding_window_view(x, m + 1)
    dm = np.max(np.abs(tm[:, None, :] - tm[None, :, :]), axis=2)
    dm1 = np.max(np.abs(tm1[:, None, :] - tm1[None, :, :]), axis=2)
    iu = np.triu_indices(n - m, k=1)
    b = int(np.count_nonzero(dm[iu] <= r))
    a = int(np.count_nonzero(dm1[iu] <= r))
    return -math.log((a + 1.0) / (b + 1.0))


def cosen(x: FloatArray) -> float:
    """Coefficient of sample entropy (Lake & Moorman 2011): SampEn + ln(2r) - ln(mean RR), r and RR in seconds.

    Not a model input: it adds -ln(mean RR) to SampEn, and rate dependence cost sensitivity on slow AF in
    leave-one-record-out validation (MODEL_CARD.md); kept for analysis and comparison.
    """
    return sample_entropy(x) + math.log(2.0 * SAMPEN_R_MS / 1000.0) - math.log(float(np.mean(x)) / 1000.0)


def frac_compensated(valid: FloatArray) -> float:
    """Fraction of the intervals that belong to a compensated premature-beat group (see PREMATURE_FRACTION)."""
    med = float(np.median(valid))
    v = valid.tolist()
    n = len(v)
    in_group = 0
    i = 0
    while i < n - 1:
        if v[i] < PREMATURE_FRACTION * med:
            for length, cycles in ((2, 2), (3, 3), (3, 2)):
                if (
                    i + length <= n
                    and abs(sum(v[i : i + length]) - cycles * med) <= COMPENSATION_TOLERANCE * med * cycles
                ):
                    in_group += length
                    i += length
                    break
            else:
                i += 1
            continue
        i += 1
    return in_group / n if n else 0.0


def _adjacent_diffs(rr: FloatArray, keep: npt.NDArray[np.bool_]) -> FloatArray:
    pair = keep[1:] & keep[:-1]
    return np.diff(rr)[pair]


def window_features(rr_ms: npt.ArrayLike) -> FloatArray | None:
    """The :data:`FEATURE_NAMES` vector (float64) of one window of RR intervals in ms.

    Returns None when fewer than :data:`MIN_KEPT` intervals survive filtering (no decision for that window).
    """
    rr = np.asarray(rr_ms, dtype=np.float64)
    keep = keep_mask(rr)
    x = rr[keep]
    k = x.shape[0]
    if k < MIN_KEPT:
        return None
    d = _adjacent_diffs(rr, keep)
    if d.size < 2:
        return None
    mean = float(x.mean())
    std = float(x.std())
    rmssd = float(np.sqrt(np.mean(d * d)))

    # turning points over the kept series (Dash et al.: random series have 2/3 of n-2)
    mid = x[1:-1]
    turns = np.count_nonzero(((mid > x[:-2]) & (mid > x[2:])) | ((mid < x[:-2]) & (mid < x[2:])))
    tpr = turns / (k - 2)

    sampen = sample_entropy(x)

    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        counts, _ = np.histogram(x, bins=SHANNON_BINS, range=(lo, hi))
        p = counts[counts > 0] / k
        shannon = float(-(p * np.log(p)).sum() / math.log(SHANNON_BINS))
    else:
        shannon = 0.0

    xc = x - mean
    denom = float((xc * xc).sum())
    ac1 = float((xc[1:] * xc[:-1]).sum() / denom) if denom > 0 else 1.0

    sd1 = float(np.std(d)) / math.sqrt(2.0)
    sd2_sq = max(2.0 * std * std - sd1 * sd1, 1e-9)
    sd1_sd2 = sd1 / math.sqrt(sd2_sq)

    valid = rr[(rr >= RR_MIN_MS) & (rr <= RR_MAX_MS)]
    raw_mean = float(valid.mean())
    raw_d = np.diff(valid)
    raw_nrmssd = float(np.sqrt(np.mean(raw_d * raw_d))) / raw_mean
    raw_cv = float(valid.std()) / raw_mean
    raw_med = float(np.median(valid))
    # sinus rhythm with ectopy keeps runs of near-identical intervals between the ectopic beats; AF has none
    frac_flat = float(np.mean(np.abs(raw_d) < FLAT_FRACTION * raw_med))
    dominant = float(np.mean(np.abs(valid - raw_med) < DOMINANT_FRACTION * raw_med))
    # Lorenz plot of successive differences (dRR_i, dRR_i+1): ectopy forms a few dense clusters, AF fills it
    # diffusely (the idea of Sarkar et al. 2008's AF evidence); occupied cells per point
    if raw_d.size >= 2:
        cells = np.floor(np.stack([raw_d[:-1], raw_d[1:]], axis=1) / LORENZ_CELL_MS).astype(np.int64)
        lorenz_cells = float(np.unique(cells, axis=0).shape[0]) / cells.shape[0]
    else:
        lorenz_cells = 0.0

    return np.array(
        [
            std / mean,
            rmssd / mean,
            float(np.mean(np.abs(d) > 50.0)),
            float(np.mean(np.abs(d) > 0.0625 * mean)),
            tpr,
            sampen,
            shannon,
            ac1,
            sd1_sd2,
            1.0 - k / rr.shape[0],
            raw_nrmssd,
            raw_cv,
            float(np.median(np.abs(d))) / float(np.median(x)),
            frac_flat,
            dominant,
            lorenz_cells,
            frac_compensated(valid),
        ],
        dtype=np.float64,
    )


def batch_features(rr_windows: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Features of many windows (rows) and which rows had enough clean beats; invalid rows are zeros."""
    n = rr_windows.shape[0]
    out = np.zeros((n, N_FEATURES), dtype=np.float64)
    ok = np.zeros(n, dtype=bool)
    for i in range(n):
        f = window_features(rr_windows[i])
        if f is not None:
            out[i] = f
            ok[i] = True
    return out, ok

"""The shared 1-minute NILM format: loading, the appliances, their on/off thresholds and the scored minutes.

Format (``/work/shared/data/nilm/README.md``): gzip (or plain) CSV with a header
``timestamp,mains_w,kettle_w,microwave_w,dishwasher_w,washing_machine_w``; ``timestamp`` is integer UTC epoch
seconds at the *start* of the minute, powers are means over the minute in W; a row whose power fields are empty is
a gap (not a measurement). Appliance columns may be absent (a file with mains only can still be disaggregated,
but not scored).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Appliances the models disaggregate, in output order. No fridge: the shared 1-minute data has no fridge column.
APPLIANCES: tuple[str, ...] = ("kettle", "microwave", "dishwasher", "washing_machine")

#: On/off thresholds (W) for the on-state F1, as in the data README's activity table.
ON_THRESHOLD_W: Mapping[str, float] = {
    "kettle": 1000.0,
    "microwave": 300.0,
    "dishwasher": 500.0,
    "washing_machine": 300.0,
}

#: REFIT's aggregate is capped upstream at exactly this value (README caveat 4): such minutes are not scored.
MAINS_CAP_W = 6000.0

STEP_S = 60


class NilmDataError(ValueError):
    """A file that is not in the shared NILM format."""


@dataclass(frozen=True)
class Series:
    """A regular 1-minute series: ``ts`` (minute starts, UTC s), ``mains`` (W, NaN in gaps), appliance truth."""

    ts: IntArray
    mains: FloatArray
    appliances: dict[str, FloatArray] = field(default_factory=dict)
    name: str = ""

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def slice(self, start: int, stop: int) -> Series:
        """Rows ``start:stop`` (a contiguous stretch, still regular)."""
        return Series(
            self.ts[start:stop].copy(),
            self.mains[start:stop].copy(),
            {k: v[start:stop].copy() for k, v in self.appliances.items()},
            self.name,
        )

    def scored(self) -> npt.NDArray[np.bool_]:
        """Minutes that count in metrics: mains measured and below the upstream cap, every appliance measured."""
        ok = np.isfinite(self.mains) & (self.mains < MAINS_CAP_W)
        for v in self.appliances.values():
            ok &= np.isfinite(v)
        return ok


def _float(cell: str) -> float:
    return float(cell) if cell.strip() else float("nan")


def load_csv(path: str | Path) -> Series:
    """Load one file of the shared format (``.csv.gz`` or ``.csv``).

    Missing minutes in the timestamp grid are inserted as gaps (NaN), so the result is always regular.
    Raises :class:`NilmDataError` on a wrong header, a non-integer or decreasing timestamp or a non-60 s grid.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    reader = csv.reader(io.StringIO(raw.decode("utf-8")))
    try:
        header = next(reader)
    except StopIteration:
        raise NilmDataError(f"{p}: empty file") from None
    header = [h.strip() for h in header]
    if header[:2] != ["timestamp", "mains_w"]:
        raise NilmDataError(f"{p}: header must start with timestamp,mains_w; got {header[:2]}")
    cols = {name: i for i, name in enumerate(header)}
    apps = [a for a in APPLIANCES if f"{a}_w" in cols]
    ts_l: list[int] = []
    mains_l: list[float] = []
    app_l: dict[str, list[float]] = {a: [] for a in apps}
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            ts_l.append(int(row[0]))
            mains_l.append(_float(row[1]))
            for a in apps:
                app_l[a].append(_float(row[cols[f"{a}_w"]]))
        except (ValueError, IndexError) as err:
            raise NilmDataError(f"{p}:{lineno}: {err}") from None
    if not ts_l:
        raise NilmDataError(f"{p}: no rows")
    ts = np.asarray(ts_l, dtype=np.int64)
    d = np.diff(ts)
    if np.any(d <= 0) or np.any(d % STEP_S) or ts[0] % STEP_S:
        raise NilmDataError(f"{p}: timestamps must increase on a 60 s grid")
    idx = (ts - ts[0]) // STEP_S
    n = int(idx[-1]) + 1
    full_ts = ts[0] + STEP_S * np.arange(n, dtype=np.int64)

    def regular(values: list[float]) -> FloatArray:
        out = np.full(n, np.nan)
        out[idx] = np.asarray(values, dtype=np.float64)
        return out

    return Series(full_ts, regular(mains_l), {a: regular(app_l[a]) for a in apps}, p.name)


def write_csv(series: Series, path: str | Path) -> None:
    """Write a series in the shared format (gzip if the name ends in ``.gz``); NaN rows become empty fields."""
    p = Path(path)
    apps = [a for a in APPLIANCES if a in series.appliances]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timestamp", "mains_w", *[f"{a}_w" for a in apps]])
    for i in range(len(series)):
        vals = [series.mains[i], *[series.appliances[a][i] for a in apps]]
        w.writerow([int(series.ts[i]), *["" if not np.isfinite(v) else f"{v:.2f}" for v in vals]])
    data = buf.getvalue().encode()
    p.write_bytes(gzip.compress(data, mtime=0) if p.name.endswith(".gz") else data)

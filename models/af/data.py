"""RR-interval records in the shared AFDB format, and the evaluation protocol's windowing.

File format (``/work/shared/data/rr/README.md``): CSV with header ``beat_sample,t_s,rr_ms,rhythm``, one row per
beat; ``rr_ms`` is the interval ending at that beat, ``rhythm`` the reference rhythm in force at the beat
(``N``, ``AFIB``, ``AFL``, ``J``). Data: MIT-BIH Atrial Fibrillation Database (PhysioNet, ODC-By 1.0; cite Moody &
Mark 1983 and Goldberger et al. 2000).

Protocol (implemented here once, used by training, the CLI and the tests): windows of :data:`WINDOW_BEATS` beats
every :data:`STEP_BEATS` beats; a window is AF when at least half its beats carry the ``AFIB`` label; windows with
``AFL`` or ``J`` beats are kept and count as non-AF unless half their beats are ``AFIB``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Beats per window and step between window starts (the protocol of MODEL_CARD.md).
WINDOW_BEATS = 60
STEP_BEATS = 30
#: The rhythm label that is the positive class; AFL and J count as non-AF.
AF_LABEL = "AFIB"
RHYTHMS = ("N", "AFIB", "AFL", "J")
_COLUMNS = ["beat_sample", "t_s", "rr_ms", "rhythm"]


class RecordFormatError(ValueError):
    """A file that is not in the shared RR format (``path``, ``line`` and a ``reason``)."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


@dataclass(frozen=True)
class Record:
    """One record: per-beat time (s from record start), RR interval ending at the beat (ms), rhythm label."""

    name: str
    t_s: npt.NDArray[np.float64]
    rr_ms: npt.NDArray[np.float64]
    rhythm: npt.NDArray[np.str_]

    @property
    def is_af(self) -> npt.NDArray[np.bool_]:
        """Per-beat binary target (``rhythm == "AFIB"``)."""
        return np.asarray(self.rhythm == AF_LABEL)


def load_record(path: Path | str) -> Record:
    """Read one ``afdb_<record>.csv``; the record name is the part after ``afdb_``."""
    p = Path(path)
    t: list[float] = []
    rr: list[float] = []
    rh: list[str] = []
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != _COLUMNS:
            raise RecordFormatError(p, 1, f"header must be {','.join(_COLUMNS)}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(_COLUMNS):
                raise RecordFormatError(p, lineno, f"expected {len(_COLUMNS)} fields, got {len(row)}")
            try:
                t.append(float(row[1]))
                rr.append(float(row[2]))
            except ValueError as err:
                raise RecordFormatError(p, lineno, "t_s and rr_ms must be numbers") from err
            if row[3] not in RHYTHMS:
                raise RecordFormatError(p, lineno, f"unknown rhythm {row[3]!r}")
            rh.append(row[3])
    name = p.stem.removeprefix("afdb_")
    return Record(name, np.asarray(t, dtype=np.float64), np.asarray(rr, dtype=np.float64), np.asarray(rh))


def load_dir(directory: Path | str) -> list[Record]:
    """Every ``afdb_*.csv`` in ``directory``, sorted by name."""
    paths = sorted(Path(directory).glob("afdb_*.csv"))
    if not paths:
        raise FileNotFoundError(f"no afdb_*.csv in {directory}")
    return [load_record(p) for p in paths]


def window_starts(n_beats: int, size: int = WINDOW_BEATS, step: int = STEP_BEATS) -> npt.NDArray[np.int64]:
    """Start indices of the complete windows of ``size`` beats every ``step`` beats."""
    if n_beats < size:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_beats - size + 1, step, dtype=np.int64)


@dataclass(frozen=True)
class Windows:
    """The protocol's windows of one or more records: RR matrix, labels and which record each came from."""

    rr_ms: npt.NDArray[np.float64]  # (n, WINDOW_BEATS)
    is_af: npt.NDArray[np.bool_]  # (n,)
    record: npt.NDArray[np.str_]  # (n,)
    start_s: npt.NDArray[np.float64]  # (n,) time of the window's first beat

    def __len__(self) -> int:
        return int(self.is_af.shape[0])


def make_windows(records: Iterable[Record], size: int = WINDOW_BEATS, step: int = STEP_BEATS) -> Windows:
    """Cut every record into windows; label AF when at least half the window's beats are ``AFIB``."""
    rr_parts: list[npt.NDArray[np.float64]] = []
    af_parts: list[npt.NDArray[np.bool_]] = []
    rec_parts: list[npt.NDArray[np.str_]] = []
    t_parts: list[npt.NDArray[np.float64]] = []
    for rec in records:
        starts = window_starts(len(rec.rr_ms), size, step)
        idx = starts[:, None] + np.arange(size)[None, :]
        rr_parts.append(rec.rr_ms[idx])
        af_parts.append(rec.is_af[idx].sum(axis=1) * 2 >= size)
        rec_parts.append(np.full(len(starts), rec.name))
        t_parts.append(rec.t_s[starts] if len(starts) else np.zeros(0))
    if not rr_parts:
        return Windows(np.zeros((0, size)), np.zeros(0, dtype=bool), np.zeros(0, dtype=str), np.zeros(0))
    return Windows(
        np.concatenate(rr_parts).astype(np.float64),
        np.concatenate(af_parts),
        np.concatenate(rec_parts),
        np.concatenate(t_parts),
    )

"""What every simulator shares: the contract, counter-based randomness and local-time helpers.

Every simulated value is a *pure function* of ``(seed, device id, time)``: randomness comes from a counter-based
generator (SplitMix64 applied to ``key + index * golden_gamma``), never from a stateful RNG advanced by calls.
That is what makes ``readings_between`` split-invariant (``[a,b] + [b,c] == [a,c]``) and identical across fresh
instances with the same seed, so tests can compute ground truth independently of how time was sliced.
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from kyojo.contract.vocab import ID_PATTERN, Reading, reading, valid_id

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Device ids the platform accepts: :data:`kyojo.contract.vocab.ID_PATTERN` (kept for callers that match with it; the
#: simulators check with :func:`kyojo.contract.vocab.valid_id`, a full match).
DEVICE_ID_RE = re.compile(ID_PATTERN)

DAY_S = 86_400.0
HOUR_S = 3_600.0
#: Japan Standard Time, UTC+9 (no daylight saving): the default local time of every simulator.
JST_OFFSET_H = 9.0
#: Where cumulative counters (energy) start from zero: 2020-01-01T00:00:00Z. Simulated time must not precede it.
COUNTER_ORIGIN = 1_577_836_800.0

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: the SplitMix64 increment
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


@runtime_checkable
class Simulator(Protocol):
    """A deterministic simulated device.

    ``readings_between(t0, t1)`` returns every reading with ``t0 < ts <= t1`` (POSIX seconds, UTC), sorted by
    ``ts`` (ties in the order of ``metrics``). It is a pure function of the seed, the device and the range, so
    consecutive ranges concatenate to the whole range and fresh instances with the same seed agree.
    """

    device_id: str
    subject: str
    kind: str
    metrics: tuple[str, ...]

    def readings_between(self, t0: float, t1: float) -> list[Reading]: ...


def _splitmix_int(x: int) -> int:
    """SplitMix64 finaliser on a Python int (used to derive per-stream keys)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser, vectorised (uint64 arithmetic wraps modulo 2^64, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(_M1)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def stable_key(*parts: object) -> int:
    """A 64-bit key from the parts' text, stable across processes (unlike the salted built-in ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


class CounterRng:
    """Counter-based random numbers: each value is ``f(key, stream, index)``, with no state between calls.

    ``stream`` separates independent quantities of one device (e.g. heart-rate noise vs. bout start times);
    ``index`` is usually a time-step, day or event number.
    """

    def __init__(self, key: int) -> None:
        self.key = key & _MASK64

    def bits(self, stream: int, index: npt.ArrayLike, lane: int = 0) -> npt.NDArray[np.uint64]:
        """64 random bits per index."""
        s = _splitmix_int(self.key ^ _splitmix_int((stream << 4) + lane + 1))
        i = np.asarray(index, dtype=np.int64).astype(np.uint64)
        with np.errstate(over="ignore"):
            return _mix64(np.uint64(s) + (i + np.uint64(1)) * np.uint64(_GAMMA))

    def uniform(self, stream: int, index: npt.ArrayLike) -> FloatArray:
        """Uniform in [0, 1), 53 bits."""
        return (self.bits(stream, index) >> np.uint64(11)).astype(np.float64) * (2.0**-53)

    def normal(self, stream: int, index: npt.ArrayLike) -> FloatArray:
        """Standard normal (Box-Muller on two independent lanes)."""
        u1 = (self.bits(stream, index, 1) >> np.uint64(11)).astype(np.float64) * (2.0**-53)
        u2 = (self.bits(stream, index, 2) >> np.uint64(11)).astype(np.float64) * (2.0**-53)
        return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2)

    def smooth(self, stream: int, t: npt.ArrayLike, scale_s: float) -> FloatArray:
        """Smooth noise of roughly unit amplitude: normal knots every ``scale_s`` seconds, smoothstep between."""
        x = np.asarray(t, dtype=np.float64) / scale_s
        j = np.floor(x)
        f = x - j
        ji = j.astype(np.int64)
        a = self.normal(stream, ji)
        b = self.normal(stream, ji + 1)
        w = f * f * (3.0 - 2.0 * f)
        return a + (b - a) * w


def local_day(t: npt.ArrayLike, tz_offset_h: float) -> IntArray:
    """Index of the local calendar day (days since 1970-01-01 local) containing each instant."""
    return np.floor((np.asarray(t, dtype=np.float64) + tz_offset_h * HOUR_S) / DAY_S).astype(np.int64)


def local_hour(t: npt.ArrayLike, tz_offset_h: float) -> FloatArray:
    """Local time of day in hours, [0, 24)."""
    return np.mod(np.asarray(t, dtype=np.float64) + tz_offset_h * HOUR_S, DAY_S) / HOUR_S


def day_start(day: npt.ArrayLike, tz_offset_h: float) -> FloatArray:
    """UTC instant of local midnight starting each local day index."""
    return np.asarray(day, dtype=np.float64) * DAY_S - tz_offset_h * HOUR_S


def step_candidates(t0: float, t1: float, period_s: float) -> IntArray:
    """Step indices ``k`` whose instant ``k * period_s`` may fall in ``(t0, t1]`` (a superset; callers filter)."""
    return np.arange(math.floor(t0 / period_s), math.floor(t1 / period_s) + 2, dtype=np.int64)


class BaseSimulator(ABC):
    """Base of the simulators: validation, the counter RNG, and turning arrays into sorted Readings.

    Subclasses set ``kind`` and ``metrics`` and implement :meth:`_generate`, which returns per-metric arrays of
    timestamps and values covering *at least* ``(t0, t1]``; the base keeps exactly ``t0 < ts <= t1`` and sorts.
    """

    kind: str = ""
    metrics: tuple[str, ...] = ()

    def __init__(self, device_id: str, subject: str, seed: int, *, tz_offset_h: float = JST_OFFSET_H) -> None:
        if not valid_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}")
        if not valid_id(subject):
            raise ValueError(f"invalid subject {subject!r}")
        self.device_id = device_id
        self.subject = subject
        self.seed = seed
        self.tz_offset_h = float(tz_offset_h)
        self.rng = CounterRng(stable_key("kyojo-sim", seed, device_id))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device_id!r}, subject={self.subject!r}, seed={self.seed})"

    @abstractmethod
    def _generate(self, t0: float, t1: float) -> list[tuple[str, FloatArray, FloatArray]]:
        """``(metric, ts, values)`` arrays covering at least ``(t0, t1]``."""

    def readings_between(self, t0: float, t1: float) -> list[Reading]:
        """Every reading with ``t0 < ts <= t1``, sorted by ts (ties in ``metrics`` order)."""
        t0, t1 = float(t0), float(t1)
        if not t1 > t0:
            return []
        parts = self._generate(t0, t1)
        if not parts:
            return []
        order_of = {m: i for i, m in enumerate(self.metrics)}
        ts = np.concatenate([p[1] for p in parts])
        vals = np.concatenate([p[2] for p in parts])
        midx = np.concatenate([np.full(len(p[1]), order_of[p[0]], dtype=np.int64) for p in parts])
        keep = (ts > t0) & (ts <= t1)
        ts, vals, midx = ts[keep], vals[keep], midx[keep]
        order = np.lexsort((midx, ts))
        names = self.metrics
        dev, subj = self.device_id, self.subject
        return [
            reading(dev, subj, names[m], v, t)
            for m, v, t in zip(midx[order].tolist(), vals[order].tolist(), ts[order].tolist(), strict=True)
        ]

"""Watch-over (見守り) from the home's own electricity use: learn when this home is usually active, and say when it
has been quiet for longer than is normal for that time of day (stdlib only; no knowledge of the agent).

Signals. An *activity minute* is a minute in which somebody evidently did something: the whole-home meter's
1-minute mean power stepped by at least ``step_w`` (a kettle, a hob, a shower, lights and a TV together), or a
plug on a strong-signal appliance (kettle, microwave, TV, rice cooker) switched on. Autonomous loads (fridge,
heating on a timer) step less than ``step_w`` in 1-minute means, or recur at night too, where the profile learns
them as normal.

Profile. For each 15-minute slot of the local day, separately for weekdays and weekends, the share of the last
``history_days`` complete days that had an activity minute in that slot (``p``, with a Jeffreys prior, capped at
``p_cap`` so one slot never decides alone).

Evidence. While the home is quiet, every unmeasured-free minute adds ``-ln(1 - p_slot) / 15`` to a score ``E``:
quiet at an hour when this home is nearly always active weighs a lot, quiet at night nothing. ``E`` is the
log-likelihood, were slots independent, of "this much quiet" under the home's own rhythm; since slots are not
independent, it is calibrated per home instead of read as a probability.

Calibration (per home, daily). The threshold is the ``quantile`` of the home's own daily maxima of ``E`` over the
history, counting only quiet spans that ended within ``max_span_s`` (a longer span is the household being away,
which the household tells the gateway with away mode, not a rhythm to learn). An *absence* is raised when ``E``
passes the threshold and the home has been quiet at least ``min_quiet_s``; it turns *urgent* at ``urgent_factor``
times the threshold; *resumed* follows at the next activity. Nothing is raised before ``learn_days`` complete days
were seen (the profile) and then ``calibrate_days`` more (the threshold), nor while away mode is on.

The evaluation protocol and its figures are in models/watchover/MODEL_CARD.md (``kyojo models eval watchover``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median
from zoneinfo import ZoneInfo

SLOT_MIN = 15
SLOTS = 24 * 60 // SLOT_MIN
#: a day counts in the profile when this many of its minutes were measured
COMPLETE_MIN = 23 * 60


@dataclass(frozen=True, slots=True)
class Params:
    step_w: float = 250.0
    history_days: int = 56
    learn_days: int = 14
    calibrate_days: int = 14
    quantile: float = 0.97
    factor: float = 1.0
    p_cap: float = 0.9
    min_quiet_s: float = 3600.0
    max_span_s: float = 20 * 3600.0
    urgent_factor: float = 2.0
    floor: float = 1.0


@dataclass(slots=True)
class Day:
    """One local day: which slots had activity, how many minutes were measured, the largest calibrated score."""

    weekend: bool
    slots: bytearray = field(default_factory=lambda: bytearray(SLOTS))
    measured: int = 0
    max_e: float = 0.0
    scored: bool = False  # the profile was ready all day, so max_e means something

    @property
    def complete(self) -> bool:
        return self.measured >= COMPLETE_MIN

    @property
    def active(self) -> bool:
        return any(self.slots)


@dataclass(frozen=True, slots=True)
class Finding:
    """``kind`` absence | urgent | resumed; ``at`` POSIX s; ``since`` the last activity (POSIX s)."""

    kind: str
    at: float
    since: float
    score: float
    threshold: float
    usual: tuple[int, ...]  # local hours in the quiet span when this home is usually active (p >= 0.5)
    signal: str | None  # what the last activity was (``meter`` or a plug's appliance)

    @property
    def quiet_s(self) -> float:
        return self.at - self.since


class Watch:
    """One home's rhythm and its quiet-time score; feed it every minute in order with :meth:`push`."""

    def __init__(self, tz: str | ZoneInfo = "Asia/Tokyo", params: Params | None = None) -> None:
        self.tz = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        self.params = params or Params()
        self.days: dict[int, Day] = {}
        self.last_activity: float | None = None
        self.last_signal: str | None = None
        self.score = 0.0
        self.open: Finding | None = None  # the absence raised and not yet resumed
        self.away_until: float | None = None
        self.threshold: float | None = None
        self._p: list[float] | None = None
        self._today: int | None = None
        self._slot_end = -math.inf
        self._slot = 0
        self._day: tuple[int, bool] = (0, False)
        self._usual: set[int] = set()
        self.findings = 0

    # -- time ----------------------------------------------------------------------------------------------
    def _locate(self, ts: float) -> tuple[int, int, bool]:
        """(local day ordinal, slot, weekend) of ``ts``; the zone is consulted once per slot."""
        if ts >= self._slot_end or ts < self._slot_end - SLOT_MIN * 60:
            local = datetime.fromtimestamp(ts, self.tz)
            minute = local.hour * 60 + local.minute
            self._slot = minute // SLOT_MIN
            self._slot_end = ts - (minute % SLOT_MIN) * 60 - local.second + SLOT_MIN * 60
            self._day = (local.toordinal(), local.weekday() >= 5)
        return self._day[0], self._slot, self._day[1]

    def _roll(self, ordinal: int, weekend: bool) -> None:
        """A new local day: forget days past the history, refit the profile and the threshold."""
        p = self.params
        for old in [d for d in self.days if d <= ordinal - p.history_days]:
            del self.days[old]
        today = self.days[ordinal] = Day(weekend)
        past = [d for o, d in self.days.items() if o < ordinal and d.complete]
        self._today = ordinal
        if len(past) < p.learn_days:
            self._p, self.threshold = None, None
            return
        today.scored = True
        same = [d for d in past if d.weekend == weekend]
        use = same if len(same) >= 6 else past
        counts = [0] * SLOTS
        for d in use:
            for i, v in enumerate(d.slots):
                counts[i] += v
        self._p = [min((c + 0.5) / (len(use) + 1), p.p_cap) for c in counts]
        maxima = sorted(d.max_e for d in past if d.scored)
        enough = len(maxima) >= p.calibrate_days
        self.threshold = max(_quantile(maxima, p.quantile) * p.factor, p.floor) if enough else None

    def profile(self) -> list[float] | None:
        """Today's p per slot (None while learning)."""
        return None if self._p is None else list(self._p)

    @property
    def today(self) -> int | None:
        """The local day (ordinal) of the last minute pushed."""
        return self._today

    @property
    def learning(self) -> bool:
        return self._p is None

    # -- minutes -------------------------------------------------------------------------------------------
    def push(self, ts: float, *, measured: bool, active: bool, signal: str | None = None) -> list[Finding]:
        """One minute starting at ``ts``: was it measured, was there activity (and from which signal)."""
        ordinal, slot, weekend = self._locate(ts)
        if ordinal != self._today:
            self._roll(ordinal, weekend)
        if not measured:
            return []  # no evidence either way: a gap neither adds to the score nor resets it
        day = self.days[ordinal]
        day.measured += 1
        out: list[Finding] = []
        if active:
            day.slots[slot] = 1
            if self.last_activity is not None and ts - self.last_activity < self.params.max_span_s:
                day.max_e = max(day.max_e, self.score)
            if self.open is not None:
                out.append(self._finding("resumed", ts))
                self.open = None
            self.last_activity, self.last_signal, self.score = ts, signal, 0.0
            self._usual.clear()
            return out
        if self._p is None or self.last_activity is None:
            return out
        pv = self._p[slot]
        self.score += -math.log1p(-pv) / SLOT_MIN
        if pv >= 0.5:
            self._usual.add(slot * SLOT_MIN // 60)  # the slot is local time already
        if self.away_until is not None and ts < self.away_until:
            self.score = 0.0  # away: the quiet counts from the household's return
            day.scored = False  # and a day partly away does not calibrate the threshold
            return out
        th = self.threshold
        if th is None or ts - self.last_activity < self.params.min_quiet_s:
            return out
        if self.open is None and self.score >= th:
            self.open = self._finding("absence", ts)
            out.append(self.open)
        elif self.open is not None and self.open.kind == "absence" and self.score >= th * self.params.urgent_factor:
            self.open = self._finding("urgent", ts)
            out.append(self.open)
        return out

    def _finding(self, kind: str, ts: float) -> Finding:
        assert self.last_activity is not None
        self.findings += 1
        usual = tuple(sorted(self._usual))
        return Finding(kind, ts, self.last_activity, self.score, self.threshold or 0.0, usual, self.last_signal)

    # -- persistence -------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, object]:
        return {
            "v": 1,
            "days": {
                str(o): {
                    "weekend": d.weekend,
                    "slots": d.slots.hex(),
                    "measured": d.measured,
                    "max_e": d.max_e,
                    "scored": d.scored,
                }
                for o, d in self.days.items()
            },
            "last_activity": self.last_activity,
            "last_signal": self.last_signal,
            "score": self.score,
            "open": None if self.open is None else {"kind": self.open.kind, "at": self.open.at},
            "away_until": self.away_until,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object], tz: str | ZoneInfo, params: Params | None = None) -> Watch:
        """Restore a saved state (a wrong document raises ``ValueError``/``KeyError``/``TypeError``)."""
        w = cls(tz, params)
        days = doc["days"]
        if not isinstance(days, dict):
            raise TypeError("days must be an object")
        for o, d in days.items():
            slots = bytearray.fromhex(d["slots"])
            if len(slots) != SLOTS:
                raise ValueError("a day has the wrong number of slots")
            w.days[int(o)] = Day(bool(d["weekend"]), slots, int(d["measured"]), float(d["max_e"]), bool(d["scored"]))
        last = doc.get("last_activity")
        w.last_activity = float(last) if isinstance(last, int | float) else None
        sig = doc.get("last_signal")
        w.last_signal = sig if isinstance(sig, str) else None
        score = doc.get("score")
        w.score = float(score) if isinstance(score, int | float) else 0.0
        away = doc.get("away_until")
        w.away_until = float(away) if isinstance(away, int | float) else None
        opened = doc.get("open")
        if isinstance(opened, dict) and w.last_activity is not None:
            w.open = Finding(str(opened["kind"]), float(opened["at"]), w.last_activity, w.score, 0.0, (), w.last_signal)
        return w


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted ``values`` (numpy's default method)."""
    if not values:
        return 0.0
    pos = (len(values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class ActivityDetector:
    """Minute means of the meter's power in, activity minutes out (a step of at least ``step_w`` W)."""

    def __init__(self, step_w: float) -> None:
        self.step_w = step_w
        self.previous: float | None = None

    def minute(self, mean_w: float | None) -> bool:
        """The next minute's mean (None: not measured; the next measured minute is then compared with nothing)."""
        prev, self.previous = self.previous, mean_w
        return mean_w is not None and prev is not None and abs(mean_w - prev) >= self.step_w


def usual_start(days: Iterable[tuple[bool, bytearray]], weekend: bool, after_slot: int) -> int | None:
    """The median first active slot at or after ``after_slot`` over days of the same type (None: never)."""
    firsts = []
    for we, slots in days:
        if we != weekend:
            continue
        first = next((i for i in range(after_slot, SLOTS) if slots[i]), None)
        if first is not None:
            firsts.append(first)
    return round(median(firsts)) if firsts else None


def local_midnight(ts: float, tz: ZoneInfo) -> float:
    local = datetime.fromtimestamp(ts, tz)
    return datetime(local.year, local.month, local.day, tzinfo=tz).timestamp()


def next_local_midnight(ts: float, tz: ZoneInfo) -> float:
    local = datetime.fromtimestamp(ts, tz)
    nxt = datetime(local.year, local.month, local.day, tzinfo=tz) + timedelta(days=1)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()

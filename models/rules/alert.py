"""The Alert every health rule and model emits, and the episode tracker that makes one episode one alert.

An alert is identified by ``id`` (person, kind and the episode's start): the tracker emits it when the episode
opens, again (same id) when its severity escalates, and once more (same id, ``ended`` set) when it closes.
Consumers upsert by ``id``; an episode that recurs within the cooldown reopens the same alert instead of creating
a new one. Pure code: time comes only from the readings' ``ts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Literal

State = Literal["on", "clear", "between"]


class Severity(IntEnum):
    """How urgently a person should act; ordered, so escalation is ``new > old``."""

    INFO = 1  # worth knowing (e.g. elevated blood pressure)
    ADVISORY = 2  # see a doctor / ask for a test when convenient (screening ranges)
    WARNING = 3  # see a doctor soon
    URGENT = 4  # seek care now (hypertensive crisis)

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Evidence:
    """Summary of the readings that made the alert (values in the metric's fixed unit)."""

    metric: str
    unit: str
    n: int
    first_ts: float
    last_ts: float
    min: float
    max: float
    mean: float
    detail: Mapping[str, str | float | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """One episode of one condition of one person.

    ``started``/``ended`` are POSIX seconds of the first evidence reading and of the first reading that
    cleared the condition (``None`` while open). ``source`` cites the guideline or model card behind the rule;
    ``model_version`` is set for model-based alerts (rhythm).
    """

    id: str
    person: str
    kind: str
    severity: Severity
    started: float
    ended: float | None
    evidence: Evidence
    source: str
    message: str
    model_version: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ended is None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (severity as its lower-case name)."""
        ev = self.evidence
        return {
            "id": self.id,
            "person": self.person,
            "kind": self.kind,
            "severity": str(self.severity),
            "started": self.started,
            "ended": self.ended,
            "evidence": {
                "metric": ev.metric,
                "unit": ev.unit,
                "n": ev.n,
                "first_ts": ev.first_ts,
                "last_ts": ev.last_ts,
                "min": ev.min,
                "max": ev.max,
                "mean": ev.mean,
                "detail": dict(ev.detail),
            },
            "source": self.source,
            "message": self.message,
            "model_version": self.model_version,
        }


@dataclass(frozen=True, slots=True)
class Persistence:
    """How long a condition must hold to open an episode, and the clear condition to close it.

    An episode opens when "on" readings span at least ``min_duration_s`` over at least ``min_count`` readings
    with no reading of another state and no gap longer than ``max_gap_s`` in between; it closes when "clear"
    readings do the same with ``clear_duration_s``/``clear_count``. "between" readings (inside the hysteresis
    band) break both runs. A gap longer than ``max_gap_s`` ends an open episode at its last "on" reading. An
    onset within ``cooldown_s`` of the previous episode's end of the same kind reopens that alert.
    """

    min_duration_s: float = 0.0
    min_count: int = 1
    clear_duration_s: float = 0.0
    clear_count: int = 1
    max_gap_s: float = float("inf")
    cooldown_s: float = 0.0


@dataclass
class _Run:
    start: float
    last: float
    n: int = 0
    lo: float = float("inf")
    hi: float = float("-inf")
    total: float = 0.0

    def add(self, ts: float, value: float) -> None:
        self.last = ts
        self.n += 1
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)
        self.total += value


class EpisodeTracker:
    """The persistence / hysteresis / cooldown / de-duplication state machine of one (person, kind)."""

    def __init__(
        self,
        person: str,
        kind: str,
        *,
        metric: str,
        unit: str,
        source: str,
        persistence: Persistence,
        model_version: str | None = None,
    ) -> None:
        self.person, self.kind, self.metric, self.unit = person, kind, metric, unit
        self.source, self.persistence, self.model_version = source, persistence, model_version
        self.current: Alert | None = None  # open alert
        self.last_closed: Alert | None = None
        self._onset: _Run | None = None
        self._clear: _Run | None = None
        self._evidence: _Run | None = None
        self._last_ts: float | None = None
        self._last_on: float | None = None
        self._severity = Severity.INFO
        self._detail: Mapping[str, str | float | int] = {}
        self._message = ""

    def _build(self, ended: float | None) -> Alert:
        ev = self._evidence
        assert ev is not None
        started = self.current.started if self.current else ev.start
        alert_id = self.current.id if self.current else f"{self.person}:{self.kind}:{int(started)}"
        return Alert(
            id=alert_id,
            person=self.person,
            kind=self.kind,
            severity=self._severity,
            started=started,
            ended=ended,
            evidence=Evidence(
                self.metric, self.unit, ev.n, ev.start, ev.last, ev.lo, ev.hi, ev.total / ev.n, dict(self._detail)
            ),
            source=self.source,
            message=self._message,
            model_version=self.model_version,
        )

    def interrupt(self) -> list[Alert]:
        """The data stopped being usable (gap, or outside the rule's time window): end at the last "on" reading."""
        self._onset = None
        self._clear = None
        if self.current is None or self._last_on is None:
            return []
        return [self._close(self._last_on)]

    def _close(self, ended: float) -> Alert:
        alert = self._build(ended)
        self.last_closed = alert
        self.current = None
        self._clear = None
        return alert

    def step(
        self,
        ts: float,
        state: State,
        value: float,
        *,
        severity: Severity = Severity.WARNING,
        detail: Mapping[str, str | float | int] | None = None,
        message: str = "",
    ) -> list[Alert]:
        """Feed one evaluated reading; returns the alerts opened, escalated or closed by it (usually none)."""
        p = self.persistence
        out: list[Alert] = []
        if self._last_ts is not None and ts - self._last_ts > p.max_gap_s:
            out += self.interrupt()
        self._last_ts = ts
        if self.current is None:
            if state != "on":
                self._onset = None
                return out
            if self._onset is None:
                self._onset = _Run(ts, ts)
            self._onset.add(ts, value)
            self._severity = max(self._severity, severity) if self._onset.n > 1 else severity
            self._detail, self._message = detail or {}, message
            run = self._onset
            if run.last - run.start >= p.min_duration_s and run.n >= p.min_count:
                self._onset = None
                self._last_on = ts
                prev = self.last_closed
                if prev is not None and prev.ended is not None and run.start - prev.ended <= p.cooldown_s:
                    # the same episode resumed: reopen the same alert, keep its evidence
                    self.current = replace(prev, ended=None)
                    old = self._evidence
                    if old is not None:
                        old.last, old.n, old.total = run.last, old.n + run.n, old.total + run.total
                        old.lo, old.hi = min(old.lo, run.lo), max(old.hi, run.hi)
                    else:
                        self._evidence = run
                    self._severity = max(self._severity, prev.severity)
                else:
                    self.current = None
                    self._evidence = run
                self.current = self._build(None)
                out.append(self.current)
            return out
        # an episode is open
        if state == "on":
            self._clear = None
            self._last_on = ts
            assert self._evidence is not None
            self._evidence.add(ts, value)
            if severity > self._severity:
                self._severity = severity
                self._detail, self._message = detail or self._detail, message or self._message
                self.current = self._build(None)
                out.append(self.current)
            return out
        if state == "between":
            self._clear = None
            return out
        if self._clear is None:
            self._clear = _Run(ts, ts)
        self._clear.add(ts, value)
        run = self._clear
        if run.last - run.start >= p.clear_duration_s and run.n >= p.clear_count:
            out.append(self._close(run.start))
        return out

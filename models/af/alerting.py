"""The AF alert rule: from window decisions (one every 30 beats) to one alert per episode.

A person receives alerts, not windows. The rule (:class:`BurdenRule`, parameters :class:`AlertRule`):

- **Burden**: the fraction of the decided windows *ending* in the last ``window_s`` that the model calls AF
  (P(AF) >= the model's threshold).
- **Onset**: an alert opens when the burden is at least ``on_burden``, the window is covered by at least
  ``min_decisions`` decisions (a strap that was off most of the time cannot alert), and the last ``confirm``
  decisions are all AF (the confirmation count: consecutive irregular readings, as commercial irregular-rhythm
  notifications require several before notifying).
- **Offset**: an open alert closes when the burden over the last ``clear_s`` falls below ``off_burden``, or when no
  decision came for ``clear_s`` (strap off: the episode ends at its last AF window). The *end estimate* is the end
  of the last AF window.
- **Refractory period**: an onset within ``refractory_s`` of the previous alert's end reopens that alert (same id,
  no new notification): a paroxysm interrupted by a few minutes of sinus rhythm is one episode, one alert.
- The alert carries the **episode start estimate** (start of the first AF window of the run that opened it: the
  earliest AF window in the burden window after which no ``confirm`` non-AF windows in a row occurred), the end
  estimate and the **burden** over the episode (AF windows / decided windows between start and end).

Pure code, no clock: time is the beats' ``ts``. The runtime (:mod:`models.af.runtime`) and the person-level
evaluation (:mod:`models.af.episodes`) run this same class.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Parameters of :class:`BurdenRule` (durations in s)."""

    window_s: float = 900.0
    on_burden: float = 0.6
    confirm: int = 4
    min_decisions: int = 10
    clear_s: float = 600.0
    off_burden: float = 0.2
    refractory_s: float = 1800.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AlertRule:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("alert rule must be a JSON object")
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class EpisodeUpdate:
    """An alert opened (``end is None``), reopened (``reopened``), or closed (``end`` set)."""

    alert_start: float  # the alert's identity: the first episode start estimate of this alert
    start: float  # episode start estimate (s)
    raised: float  # when the rule decided (s): the notification time
    end: float | None  # end estimate, None while open
    burden: float  # AF windows / decided windows between start and end (or now)
    windows: int  # decided windows in the episode so far
    reopened: bool = False


@dataclass(slots=True)
class _Decision:
    end: float
    start: float
    af: bool


class BurdenRule:
    """The state machine of one person (see the module docstring); :meth:`step` per window decision."""

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self._recent: deque[_Decision] = deque()
        self._open: EpisodeUpdate | None = None
        self._last_closed: EpisodeUpdate | None = None
        self._ep_af = 0
        self._ep_n = 0
        self._trailing = 0  # non-AF windows after the episode's last AF window
        self._last_af_end: float | None = None
        self._last_ts: float | None = None

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def _trim(self, now: float) -> None:
        horizon = now - max(self.rule.window_s, self.rule.clear_s)
        while self._recent and self._recent[0].end < horizon:
            self._recent.popleft()

    def _burden(self, now: float, span: float) -> tuple[float, int]:
        sel = [d for d in self._recent if d.end > now - span]
        if not sel:
            return 0.0, 0
        return sum(d.af for d in sel) / len(sel), len(sel)

    def _close(self, end: float) -> EpisodeUpdate:
        assert self._open is not None
        upd = EpisodeUpdate(
            self._open.alert_start,
            self._open.start,
            self._open.raised,
            end,
            self._ep_af / max(self._ep_n - self._trailing, 1),
            self._ep_n - self._trailing,
        )
        self._ep_n -= self._trailing
        self._trailing = 0
        self._last_closed, self._open = upd, None
        return upd

    def idle(self, now: float) -> list[EpisodeUpdate]:
        """No decision for a while (strap off): close an open alert once ``clear_s`` passed since the last one."""
        if self._open is not None and self._last_ts is not None and now - self._last_ts >= self.rule.clear_s:
            end = self._last_af_end if self._last_af_end is not None else self._last_ts
            return [self._close(end)]
        return []

    def step(self, end: float, start: float, af: bool) -> list[EpisodeUpdate]:
        """One decided window (its first and last beat times, whether the model called it AF)."""
        r = self.rule
        out = self.idle(end)
        self._last_ts = end
        self._recent.append(_Decision(end, start, af))
        self._trim(end)
        if self._open is not None:
            self._ep_n += 1
            self._ep_af += af
            if af:
                self._last_af_end = end
                self._trailing = 0
            else:
                self._trailing += 1
            burden, n = self._burden(end, r.clear_s)
            if burden < r.off_burden and n >= 1:
                last_af = self._last_af_end if self._last_af_end is not None else end
                out.append(self._close(last_af))
            return out
        burden, n = self._burden(end, r.window_s)
        tail = list(self._recent)[-r.confirm :]
        if n < r.min_decisions or burden < r.on_burden or len(tail) < r.confirm or not all(d.af for d in tail):
            return out
        # episode start: walk back from now over the AF run, tolerating fewer than `confirm` non-AF windows
        sel = [d for d in self._recent if d.end > end - r.window_s]
        ep_start, misses = sel[-1].start, 0
        count_af, count_n = 0, 0
        for d in reversed(sel):
            if d.af:
                ep_start, misses = d.start, 0
            else:
                misses += 1
                if misses >= r.confirm:
                    break
        for d in sel:
            if d.start >= ep_start:
                count_n += 1
                count_af += d.af
        prev = self._last_closed
        self._last_af_end = end
        if prev is not None and prev.end is not None and ep_start - prev.end <= r.refractory_s:
            self._open = EpisodeUpdate(prev.alert_start, prev.start, end, None, 0.0, 0, reopened=True)
            self._ep_af += count_af
            self._ep_n += count_n
        else:
            self._open = EpisodeUpdate(ep_start, ep_start, end, None, 0.0, 0)
            self._ep_af, self._ep_n = count_af, count_n
        self._trailing = 0
        self._open = EpisodeUpdate(
            self._open.alert_start,
            self._open.start,
            end,
            None,
            self._ep_af / max(self._ep_n, 1),
            self._ep_n,
            self._open.reopened,
        )
        out.append(self._open)
        return out

"""Which time the pipeline may act on when the wall clock jumps.

A Raspberry Pi has no real-time clock: it boots on the time it last saved, then NTP moves it, sometimes by hours;
an RTC read in the wrong zone is 9 hours off. Closing windows, expiring consents and pruning raw data act for good,
so they must not follow a clock that just jumped: a wrong +9 h would release nine hours of empty windows (and every
reading of the next nine hours would then be "late" and never released), expire consents and prune raw data.

:class:`ClockGuard` compares the wall clock with the monotonic clock (which never jumps) and with the newest
watermark (what was already released):

- While they agree, the trusted time is the wall clock.
- When the wall clock moves away from where the monotonic clock says it should be by more than ``tolerance_s`` of
  real time, the guard holds: the trusted time waits where the clocks last agreed (readings stamped meanwhile may
  belong before it once the jump is undone, so no window after it may close yet), and never goes backwards. If
  the jump is undone (the wall clock comes back within tolerance), nothing happened. If it lasts ``confirm_s`` of
  real time it is taken as the new truth (NTP set the clock) and the guard follows it from there.
- Readings the drivers stamp while the guard holds are not stored as they come (their time is on a clock that may
  be wrong): the agent keeps them with the jump they were stamped under (:meth:`held_offset`) and stores them when
  the guard decides: shifted back onto the old timeline when the jump was undone, as stamped when it was confirmed.
  Nothing is released twice and nothing is lost either way.

Times are the agent's (simulated under a scaled clock, ``speed`` x real time); tolerance and confirmation are real
seconds (a demo at a simulated hour per second must not take a second's stall for a jump).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: how far the wall clock may drift from the monotonic one before it counts as a jump (real s)
TOLERANCE_S = 120.0
#: how long a jump must last to be taken as the new truth (real s)
CONFIRM_S = 900.0


@dataclass
class Jump:
    """A jump the guard is holding for: how far (wall - expected, s) and since when (monotonic)."""

    offset_s: float
    since_mono: float


class ClockGuard:
    def __init__(
        self,
        wall: float,
        *,
        speed: float = 1.0,
        released_until: float | None = None,
        tolerance_s: float = TOLERANCE_S,
        confirm_s: float = CONFIRM_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.speed, self.tolerance_s, self.confirm_s = speed, tolerance_s, confirm_s
        self._mono = monotonic
        self._anchor_wall, self._anchor_mono = wall, monotonic()
        self.trusted = wall
        self.jump: Jump | None = None
        self.jumps_undone = 0
        self.jumps_confirmed = 0
        if released_until is not None and wall < released_until - self._tolerance():
            # the clock is behind what was already released (a reboot on a wrong RTC): hold until it catches up
            # or the difference has lasted long enough to be the truth
            self._anchor_wall = released_until
            self.trusted = released_until
            self.jump = Jump(wall - released_until, self._anchor_mono)
            log.warning(
                "the clock (%.0f) is %.0f s behind what this gateway already released: windows, consent expiry and "
                "pruning wait until it catches up or the difference lasts %.0f s",
                wall,
                released_until - wall,
                confirm_s,
            )

    def _tolerance(self) -> float:
        return self.tolerance_s * self.speed

    def expected(self) -> float:
        """Where the wall clock should be by the monotonic clock since the last agreement."""
        return self._anchor_wall + (self._mono() - self._anchor_mono) * self.speed

    def observe(self, wall: float) -> str | None:
        """Take the wall clock's reading; returns "jumped", "undone" or "confirmed" when that happened."""
        mono = self._mono()
        expected = self.expected()
        offset = wall - expected
        event = None
        if abs(offset) <= self._tolerance():
            if self.jump is not None:
                self.jump, event = None, "undone"
                self.jumps_undone += 1
                log.warning("the clock is back where it should be: the jump is undone")
            self._anchor_wall, self._anchor_mono = wall, mono
            self.trusted = max(self.trusted, wall)
            return event
        if self.jump is None or abs(offset - self.jump.offset_s) > self._tolerance():
            self.jump, event = Jump(offset, mono), "jumped"
            log.warning(
                "the clock jumped by %+.0f s: windows, consent expiry and pruning wait until it "
                "comes back or the jump lasts %.0f s",
                offset,
                self.confirm_s,
            )
        elif mono - self.jump.since_mono >= self.confirm_s:
            log.warning("the clock's jump by %+.0f s lasted %.0f s: taken as the new time", offset, self.confirm_s)
            self.jump, event = None, "confirmed"
            self.jumps_confirmed += 1
            self._anchor_wall, self._anchor_mono = wall, mono
            self.trusted = max(self.trusted, wall)
            return event
        return event  # held: the trusted time waits where the clocks last agreed

    def held_offset(self) -> float | None:
        """The jump readings stamped now are off by (None while the clock agrees)."""
        return None if self.jump is None else self.jump.offset_s

    def status(self) -> dict[str, object]:
        return {
            "trusted": self.trusted,
            "jump_s": None if self.jump is None else round(self.jump.offset_s, 1),
            "jumps_undone": self.jumps_undone,
            "jumps_confirmed": self.jumps_confirmed,
        }

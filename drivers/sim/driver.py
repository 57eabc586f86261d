"""``SimDriver``: runs any simulator as a :class:`kyojo.contract.vocab.Driver` on an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from drivers.sim.base import Simulator
from kyojo.contract.vocab import Clock, Reading


class SimDriver:
    """Polls a simulator every ``tick_s`` simulated seconds and yields what happened since the last poll.

    ``readings()`` keeps ``last`` (``start``, or the clock's time when iteration begins), then loops: sleep
    ``tick_s`` on the clock, read ``now``, yield every reading of ``sim.readings_between(last, now)`` and move
    ``last`` to ``now``. Because simulators are split-invariant, the stream is the same whatever the tick or
    the clock speed (e.g. :class:`drivers.clock.ScaledClock` at speed 3600: an hour per real second).
    """

    def __init__(self, sim: Simulator, clock: Clock, *, tick_s: float = 1.0, start: float | None = None) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be > 0")
        self.sim = sim
        self.device_id = sim.device_id
        self.clock = clock
        self.tick_s = tick_s
        self.start = start
        self.emitted = 0
        self.polls = 0
        self.last_ts: float | None = None
        self.covered_until: float | None = None

    async def readings(self) -> AsyncIterator[Reading]:
        """The simulated device's readings, in time order, as simulated time passes."""
        last = self.start if self.start is not None else self.clock.now()
        self.covered_until = last
        while True:
            await self.clock.sleep(self.tick_s)
            now = self.clock.now()
            if now <= last:
                continue
            batch = self.sim.readings_between(last, now)
            self.polls += 1
            last = now
            self.covered_until = now
            for r in batch:
                self.emitted += 1
                self.last_ts = r.ts
                yield r

    def health(self) -> Mapping[str, object]:
        """Counters for the agent's status: readings emitted, last reading time, time covered so far."""
        return {
            "device": self.device_id,
            "kind": self.sim.kind,
            "ok": True,
            "readings_emitted": self.emitted,
            "polls": self.polls,
            "last_ts": self.last_ts,
            "covered_until": self.covered_until,
        }

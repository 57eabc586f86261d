"""Clocks: the wall clock, and a scaled clock that runs simulated time faster than real time."""

from __future__ import annotations

import asyncio
import time


class SystemClock:
    """Real UTC time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time starting at ``start`` and running ``speed`` times faster than the wall clock.

    ``speed=3600`` passes one simulated hour per real second. Sleeps are scaled the same way, so drivers and
    the agent written against :class:`kyojo.contract.vocab.Clock` behave the same as in real time, only faster.
    """

    def __init__(self, start: float, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = start
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

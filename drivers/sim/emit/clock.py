"""The emitters' clock: simulated time pinned to the wall clock, so another process can share it.

A gateway agent runs on :class:`drivers.clock.ScaledClock`, which starts counting when the agent process
builds it. Emitters in another process (the demo's) must put a device's state for simulated time ``t`` on the
wire when the *agent's* clock reads ``t``; otherwise the driver, which stamps what it receives with the agent's
clock, would file it under another time. :class:`AnchoredClock` is a scaled clock defined by one pair
(simulated time, wall time) and the speed, and :func:`clock_of_agent` builds it from the ``clock`` and ``at``
fields the agent writes into its status file every second.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path


class AnchoredClock:
    """Simulated time ``sim_at`` at wall time ``wall_at`` (POSIX s), running ``speed`` times faster than real time.

    Implements :class:`kyojo.contract.vocab.Clock`. Uses ``time.time()`` (not monotonic time) because the anchor is
    shared between processes.
    """

    def __init__(self, sim_at: float, wall_at: float, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.sim_at = float(sim_at)
        self.wall_at = float(wall_at)
        self.speed = float(speed)

    def now(self) -> float:
        """The simulated time now."""
        return self.sim_at + (time.time() - self.wall_at) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)


def clock_of_agent(status_path: Path, speed: float, *, timeout_s: float = 30.0) -> AnchoredClock:
    """The clock of a running agent, from its status file (``clock`` = its simulated time at wall time ``at``).

    Waits up to ``timeout_s`` for the agent to write the file; raises TimeoutError if it does not.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            doc = json.loads(status_path.read_text(encoding="utf-8"))
            return AnchoredClock(float(doc["clock"]), float(doc["at"]), speed)
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no agent status in {status_path} after {timeout_s:.0f} s") from None
            time.sleep(0.05)

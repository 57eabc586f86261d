"""Reconnect backoff, one implementation for every transport (MQTT publisher, serial, BLE, drivers).

Exponential with jitter: the n-th delay is drawn uniformly from [d/2, d], d = min(cap, base * 2**n). The jitter
keeps a city's gateways from reconnecting in lock-step after a broker restart; the lower half keeps a flapping
link from retrying in a tight loop.
"""

from __future__ import annotations

import random


class Backoff:
    """Use statefully (``next()`` / ``reset()``) or statelessly (``delay(attempt)``)."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base, self.cap, self.attempt = base, cap, 0
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        d = min(self.cap, self.base * 2.0 ** min(attempt, 30))
        return d / 2 + self._rng.uniform(0, d / 2)

    def next(self) -> float:
        """The delay for the next retry; each call doubles the ceiling up to ``cap``."""
        d = self.delay(self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return d

    def reset(self) -> None:
        """After a success: the next failure starts from ``base`` again."""
        self.attempt = 0

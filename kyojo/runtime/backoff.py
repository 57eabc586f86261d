"""Exponential backoff with full jitter: the one implementation for every retry loop (stdlib only).

The delay before retry number ``n`` (0-based) is drawn uniformly from ``[0, d]``, ``d = min(cap, base *
multiplier**n)``: "full jitter" in Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015),
``sleep = random_between(0, min(cap, base * 2 ** attempt))``. Of the schemes compared there (none, equal jitter
``[d/2, d]``, full, decorrelated), full jitter spreads the clients' retries best and costs the least total work
and time to drain a contended server, which is our case: a city's gateways (or a fleet of ingesters) all losing
the broker or the database at the same instant must not come back in lock-step. A delay near zero is possible
but not a tight loop: the ceiling doubles with every failure, so ``k`` short waits in a row have probability
about ``2**-k``. The random source is injectable (``rng``) so tests can pin the delays.

Users: the drivers' reconnects (BLE, GNSS serial and gpsd) and the agent's supervisor and publisher
(:class:`Backoff`), the ingester's write retries (``cloud_ingest.writer.RetryPolicy``) and the lean MQTT client's
reconnects (``cloud_ingest.leanclient``), the last two through :func:`jittered`.
"""

from __future__ import annotations

import random

#: the exponent is capped so ``multiplier**n`` never overflows; ``cap`` bounds the delay long before that
MAX_EXPONENT = 64

_RNG = random.Random()


def ceiling(attempt: int, base: float, cap: float, *, multiplier: float = 2.0) -> float:
    """The upper bound of the delay before retry number ``attempt``: ``min(cap, base * multiplier**attempt)``."""
    return min(cap, base * multiplier ** min(attempt, MAX_EXPONENT))


def jittered(
    attempt: int, base: float, cap: float, *, multiplier: float = 2.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in ``[0, ceiling(attempt, ...)]``."""
    return ceiling(attempt, base, cap, multiplier=multiplier) * (rng or _RNG).random()


class Backoff:
    """Use statefully (``next()`` / ``reset()``) or statelessly (``delay(attempt)``)."""

    def __init__(
        self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None, *, multiplier: float = 2.0
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        if multiplier < 1.0:
            raise ValueError("backoff needs multiplier >= 1")
        self.base, self.cap, self.attempt, self.multiplier = base, cap, 0, multiplier
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return jittered(attempt, self.base, self.cap, multiplier=self.multiplier, rng=self._rng)

    def next(self) -> float:
        """The delay for the next retry; each call multiplies the ceiling up to ``cap``."""
        d = self.delay(self.attempt)
        self.attempt = min(self.attempt + 1, MAX_EXPONENT)
        return d

    def reset(self) -> None:
        """After a success: the next failure starts from ``base`` again."""
        self.attempt = 0

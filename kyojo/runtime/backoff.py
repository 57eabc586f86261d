"""Exponential backoff with jitter, one implementation for every retry loop (stdlib only).

The n-th delay is drawn uniformly from ``[d * (1 - jitter), d]``, ``d = min(cap, base * multiplier**n)``.
``jitter=1.0`` is full jitter (``[0, d]``); ``jitter=0.5`` (the default, what every caller uses today) keeps the
lower half, so a flapping link does not retry in a tight loop; ``jitter=0`` is plain exponential. The jitter
keeps a city's gateways (or a fleet of ingesters) from reconnecting in lock-step after a broker or database
restart. The random source is injectable (``rng``) so tests can pin the delays.

Users: the drivers' and the agent's reconnects (:class:`Backoff`, re-exported by ``drivers.backoff``), the
ingester's write retries (``cloud_ingest.writer.RetryPolicy``) and the lean MQTT client's reconnects
(``cloud_ingest.leanclient``).
"""

from __future__ import annotations

import random

#: the exponent is capped so ``multiplier**n`` never overflows; ``cap`` bounds the delay long before that
MAX_EXPONENT = 64

_RNG = random.Random()


def jittered(
    attempt: int,
    base: float,
    cap: float,
    *,
    multiplier: float = 2.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in ``[d * (1 - jitter), d]``."""
    d = min(cap, base * multiplier ** min(attempt, MAX_EXPONENT))
    return d * (1.0 - jitter) + d * jitter * (rng or _RNG).random()


class Backoff:
    """Use statefully (``next()`` / ``reset()``) or statelessly (``delay(attempt)``)."""

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        rng: random.Random | None = None,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.5,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("backoff needs 0 <= jitter <= 1")
        self.base, self.cap, self.attempt = base, cap, 0
        self.multiplier, self.jitter = multiplier, jitter
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return jittered(attempt, self.base, self.cap, multiplier=self.multiplier, jitter=self.jitter, rng=self._rng)

    def next(self) -> float:
        """The delay for the next retry; each call multiplies the ceiling up to ``cap``."""
        d = self.delay(self.attempt)
        self.attempt = min(self.attempt + 1, MAX_EXPONENT)
        return d

    def reset(self) -> None:
        """After a success: the next failure starts from ``base`` again."""
        self.attempt = 0

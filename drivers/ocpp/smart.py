"""Solar-surplus charging: surplus series -> current limits (pure), and the OCPP 1.6 TxProfile that carries them.

OCPP 1.6 Smart Charging facts: a ``TxProfile`` applies to one running transaction (``transactionId`` required
when sent with SetChargingProfile during a transaction) and overrides ``TxDefaultProfile``; ``chargingRateUnit``
``A`` limits the current per phase, ``W`` the power; ``limit`` has at most one decimal (schema ``multipleOf 0.1``);
a ``Relative`` schedule starts when it is received. IEC 61851-1: an EV cannot charge below 6 A (PWM duty 10 %), so a
limit under the floor means "pause" (0 A), not "charge slowly".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SurplusPolicy:
    """How surplus turns into a limit.

    ``floor_a``: never go below this while charging (``min_a`` 6 A by IEC 61851); ``keep_floor``: charge at the
    floor even without surplus (household says "always at least slowly") instead of pausing;
    ``hysteresis_a``: a change smaller than this is not sent (chargers and cars dislike constant changes), and
    resuming from a pause needs ``floor_a + hysteresis_a`` of surplus.
    """

    phases: int = 1
    voltage_v: float = 230.0
    floor_a: float = 6.0
    max_a: float = 16.0
    hysteresis_a: float = 1.0
    keep_floor: bool = False

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if not 0 < self.floor_a <= self.max_a:
            raise ValueError("need 0 < floor_a <= max_a")
        if self.hysteresis_a < 0 or self.voltage_v <= 0:
            raise ValueError("hysteresis_a must be >= 0 and voltage_v > 0")


def _tenth_down(a: float) -> float:
    return math.floor(a * 10 + 1e-9) / 10


def surplus_limits(
    surplus_w: Sequence[float],
    policy: SurplusPolicy = SurplusPolicy(),  # frozen: a safe default
    *,
    override_a: float | None = None,
    start_a: float = 0.0,
) -> list[float]:
    """Current limit (A per phase, 0 = pause) for each surplus sample (W available for the car).

    ``override_a``: the household's manual setting wins over the surplus (clamped to ``max_a``; 0 pauses).
    ``start_a``: the limit in force before the first sample. Non-finite surplus counts as no surplus.
    """
    if override_a is not None:
        fixed = 0.0 if override_a <= 0 else _tenth_down(min(max(override_a, policy.floor_a), policy.max_a))
        return [fixed for _ in surplus_w]
    per_amp = policy.voltage_v * policy.phases
    idle = policy.floor_a if policy.keep_floor else 0.0
    current = start_a
    out: list[float] = []
    for w in surplus_w:
        target = (w / per_amp) if math.isfinite(w) and w > 0 else 0.0
        target = min(target, policy.max_a)
        if current < policy.floor_a:  # paused (or at the kept floor): resume only with margin
            want = target if target >= policy.floor_a + policy.hysteresis_a else idle
        elif target < policy.floor_a:
            want = idle
        else:
            want = target
        want = _tenth_down(want)
        if want == 0.0 or want == idle or abs(want - current) >= policy.hysteresis_a or want >= policy.max_a:
            current = want
        out.append(current)
    return out


def tx_profile(transaction_id: int, limit_a: float, *, profile_id: int = 1, stack_level: int = 1) -> dict[str, Any]:
    """The ``csChargingProfiles`` of SetChargingProfile.req (snake_case keys, as the ``ocpp`` library wants)."""
    return {
        "charging_profile_id": profile_id,
        "transaction_id": transaction_id,
        "stack_level": stack_level,
        "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": _tenth_down(max(limit_a, 0.0))}],
        },
    }

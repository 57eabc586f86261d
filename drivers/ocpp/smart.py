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


def next_limit(surplus_w: float, current_a: float, policy: SurplusPolicy) -> float:
    """One step of the surplus rule: the limit (A per phase, 0 = pause) after ``current_a`` for ``surplus_w`` W
    available for the car. Non-finite surplus counts as no surplus.

    Paused (below the floor): resume only with ``floor_a + hysteresis_a`` of surplus (or stay at the kept floor).
    Charging: follow the surplus down to the floor, then pause (or keep the floor); a change smaller than
    ``hysteresis_a`` is not made, except to the pause/floor and up to ``max_a``.
    """
    per_amp = policy.voltage_v * policy.phases
    idle = policy.floor_a if policy.keep_floor else 0.0
    target = (surplus_w / per_amp) if math.isfinite(surplus_w) and surplus_w > 0 else 0.0
    target = min(target, policy.max_a)
    if current_a < policy.floor_a:  # paused (or at the kept floor): resume only with margin
        want = target if target >= policy.floor_a + policy.hysteresis_a else idle
    elif target < policy.floor_a:
        want = idle
    else:
        want = target
    want = _tenth_down(want)
    if want == 0.0 or want == idle or abs(want - current_a) >= policy.hysteresis_a or want >= policy.max_a:
        return want
    return current_a


def fixed_limit(override_a: float, policy: SurplusPolicy) -> float:
    """The household's fixed setting as a limit: 0 pauses, anything else clamped to ``floor_a..max_a``."""
    return 0.0 if override_a <= 0 else _tenth_down(min(max(override_a, policy.floor_a), policy.max_a))


def surplus_limits(
    surplus_w: Sequence[float],
    policy: SurplusPolicy = SurplusPolicy(),  # frozen: a safe default
    *,
    override_a: float | None = None,
    start_a: float = 0.0,
) -> list[float]:
    """Current limit (A per phase, 0 = pause) for each surplus sample (W available for the car): :func:`next_limit`
    applied in turn.

    ``override_a``: the household's manual setting wins over the surplus (clamped to ``max_a``; 0 pauses).
    ``start_a``: the limit in force before the first sample. Non-finite surplus counts as no surplus.
    """
    if override_a is not None:
        fixed = fixed_limit(override_a, policy)
        return [fixed for _ in surplus_w]
    current = start_a
    out: list[float] = []
    for w in surplus_w:
        current = next_limit(w, current, policy)
        out.append(current)
    return out


def surplus_for_car(car_w: float, net_w: float) -> float:
    """The power available for the car (W): the car's own draw minus the net power at the grid connection.

    A smart meter's 0xE7 is the net power at the connection point (import positive, export negative) and includes
    what the car draws, so the surplus the car could take is what it takes now plus what is exported.
    """
    return car_w - net_w


def phases_from(power_w: float, current_a: float, voltage_v: float) -> int | None:
    """The number of phases a charging car uses, from the charger's own meter values (total power, the highest
    phase current, the line-to-neutral voltage): about 1 or about 3 times ``current x voltage``. None when the
    values say nothing (no current flowing, or an implausible ratio)."""
    if not (math.isfinite(power_w) and math.isfinite(current_a) and math.isfinite(voltage_v)):
        return None
    if current_a < 1.0 or voltage_v < 50.0 or power_w <= 0:
        return None
    ratio = power_w / (current_a * voltage_v)
    if 0.6 <= ratio <= 1.6:
        return 1
    if 2.2 <= ratio <= 3.4:
        return 3
    return None


def tx_profile(
    transaction_id: int,
    limit_a: float,
    *,
    profile_id: int = 1,
    stack_level: int = 1,
    number_phases: int | None = None,
) -> dict[str, Any]:
    """The ``csChargingProfiles`` of SetChargingProfile.req (snake_case keys, as the ``ocpp`` library wants).

    ``Relative`` with no ``startSchedule``, ``validFrom`` or ``validTo``: the schedule starts when the charger
    receives it, so a charger whose clock is wrong applies it all the same. ``number_phases``: the phases the
    limit is meant for (OCPP 1.6 default 3 when absent).
    """
    period: dict[str, Any] = {"start_period": 0, "limit": _tenth_down(max(limit_a, 0.0))}
    if number_phases is not None:
        period["number_phases"] = number_phases
    return {
        "charging_profile_id": profile_id,
        "transaction_id": transaction_id,
        "stack_level": stack_level,
        "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "charging_schedule_period": [period],
        },
    }

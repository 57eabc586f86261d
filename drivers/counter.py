"""Monotonic energy counters over device counters that reset or roll over (pure, no I/O).

A device's energy counter is not monotonic in practice: Shelly Gen1 watt-minute counters restart at 0 on reboot,
Zigbee2MQTT TS011F energy can be reset from the dev console, a Shelly Gen2 ``aenergy.total`` restarts after a
factory reset, and the smart meter's cumulative register rolls over at ``10**digits`` (ECHONET Lite 0xD7).
Downstream, ``energy`` is a cumulative counter whose deltas are summed: a decrease would count as negative energy,
and restarting from the raw value after a reset would count the old total twice once offsets are re-applied.

:class:`MonotonicCounter` keeps the device's raw counter and an offset: after a reset (raw drops) the offset grows
by the last raw value; after a roll-over (``modulus`` known) by the modulus. The cumulative value never
decreases and never jumps by more than what the device counted (the energy used between the last report before a
reset and the reset itself is unknowable and is lost, never invented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class MonotonicCounter:
    """One device counter made monotonic. Values are in the caller's unit (Wh for plugs, raw units for meters).

    ``modulus``: the raw value at which the counter wraps to 0 (None: it only ever resets to 0).
    ``tolerance``: a decrease up to this much is rounding noise, not a reset (the cumulative value holds).
    """

    modulus: float | None = None
    tolerance: float = 1e-6
    last_raw: float | None = None
    offset: float = 0.0
    resets: int = 0

    def update(self, raw: float) -> float:
        """Feed the device's current raw counter; return the monotonic cumulative value."""
        if raw < 0:
            raise ValueError(f"negative counter {raw}")
        last = self.last_raw
        if last is None or raw >= last:
            self.last_raw = raw
            return self.offset + raw
        if last - raw <= self.tolerance:
            return self.offset + last
        # Decreased: a roll-over past the modulus, or a reset to zero.
        if self.modulus is not None:
            self.offset += self.modulus
        else:
            self.offset += last
        self.resets += 1
        self.last_raw = raw
        return self.offset + raw

    @property
    def value(self) -> float | None:
        """The last cumulative value (None before the first update)."""
        return None if self.last_raw is None else self.offset + self.last_raw

    def to_dict(self) -> dict[str, Any]:
        """State to persist across restarts (so an offset is not lost with the process)."""
        return {"last_raw": self.last_raw, "offset": self.offset, "resets": self.resets}

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`to_dict` saved (unknown or malformed fields are ignored)."""
        last = state.get("last_raw")
        if isinstance(last, int | float) and last >= 0:
            self.last_raw = float(last)
        offset = state.get("offset")
        if isinstance(offset, int | float) and offset >= 0:
            self.offset = float(offset)
        resets = state.get("resets")
        if isinstance(resets, int) and resets >= 0:
            self.resets = resets

"""The simulated whole-home meter behind the emulated BP35A1 (:mod:`drivers.meter.emulator`).

:class:`SimulatedMeter` is the emulator's :class:`~drivers.meter.emulator.MeterModel`: each Get is answered
with the :class:`~drivers.sim.energy.Meter` simulator's state at the moment of the Get on ``clock``:

- 0xE7 instantaneous power (W, integer): the simulator's power of its latest step (a meter refreshes 0xE7
  every few seconds; the simulator's step is ``period_s``);
- 0xE0 cumulative energy: the exact counter (Wh) at that instant, truncated to the unit, as a register counts;
- 0xD3 coefficient 1, 0xE1 unit ``unit_code`` (default 0x02 = 0.01 kWh), 0xD7 ``digits`` effective digits
  (default 8: 0.01 kWh x 10**8 never wraps in a simulated lifetime);
- 0xE8 currents of a single-phase three-wire (100/200 V) supply: half the load on each of R and T at 100 V,
  0.1 A steps.

:func:`serve_meter` puts it on a pty (optionally behind a stable symlink) for a ``kind = "bmeter"`` entry.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from drivers.meter.echonet import UNIT_KWH
from drivers.meter.emulator import PtyEmulator, Scenario
from drivers.sim.energy import Meter
from kyojo.contract.vocab import Clock


class SimulatedMeter:
    """A :class:`~drivers.meter.emulator.MeterModel` answering from the ``meter`` simulator at ``clock.now()``."""

    def __init__(self, meter: Meter, clock: Clock, *, unit_code: int = 0x02, digits: int = 8) -> None:
        if unit_code not in UNIT_KWH:
            raise ValueError(f"unknown 0xE1 unit code {unit_code:#04x}")
        self.meter = meter
        self.clock = clock
        self.unit_code = unit_code
        self.unit_wh = UNIT_KWH[unit_code] * 1000.0
        self.digits = digits
        self.gets = 0

    def power_w(self, t: float) -> float:
        """The simulator's power (W) of the step containing ``t`` (its latest report at ``t``)."""
        p = self.meter.period_s
        step = math.floor(t / p) * p
        for r in self.meter.readings_between(step - p, step):
            if r.metric == "power":
                return r.value
        raise AssertionError("the meter simulator reports power every step")

    def count(self, t: float) -> int:
        """Register 0xE0 at ``t``: the energy counter in units, truncated, modulo ``10**digits``."""
        wh = float(self.meter.energy_at(np.array([t]))[0])
        return int(math.floor(wh / self.unit_wh) % 10**self.digits)

    def edt(self, epc: int) -> bytes | None:
        """The property values at the moment of the Get."""
        t = self.clock.now()
        if epc == 0xD3:
            return (1).to_bytes(4, "big")
        if epc == 0xD7:
            return bytes([self.digits])
        if epc == 0xE1:
            return bytes([self.unit_code])
        if epc == 0xE7:
            return struct.pack(">i", round(self.power_w(t)))
        if epc == 0xE8:
            amps = round(self.power_w(t) / 2.0 / 100.0 / 0.1)
            return struct.pack(">hh", amps, amps)
        if epc == 0xE0:
            return self.count(t).to_bytes(4, "big")
        return None

    def after_get(self, epcs: tuple[int, ...]) -> None:
        """Count the Gets answered."""
        self.gets += 1

    def first_inf(self) -> bytes | None:
        """No unsolicited INF (the 30-minute 0xEA push is not simulated)."""
        return None


def serve_meter(meter: Meter, clock: Clock, *, link: str | None = None) -> PtyEmulator:
    """The emulated BP35A1 with ``meter`` behind it, on a new pty (close it when done)."""
    return PtyEmulator(Scenario(), model=SimulatedMeter(meter, clock), link=link)

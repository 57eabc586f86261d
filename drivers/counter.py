"""Monotonic energy counters over device counters that roll over, reset, repeat and glitch (pure, no I/O).

A device's energy counter is not monotonic in practice: Shelly Gen1 watt-minute counters restart at 0 on reboot,
Zigbee2MQTT TS011F energy can be reset from the dev console, a Shelly Gen2 ``aenergy.total`` restarts after a
factory reset, OCPP chargers that predate errata 3.9 restart their register per session, and the smart meter's
cumulative register rolls over at ``10**digits`` (ECHONET Lite 0xD7). Registers are also re-read, answered late
or out of order (a reading one count below the one before), and occasionally read wrong. Downstream, ``energy``
is a cumulative counter whose deltas are summed, so each of these must be told apart: a decrease taken for a
roll-over adds the whole modulus (issue 22: one re-read added 1 GWh to a home's meter).

:class:`MonotonicCounter` keeps the last accepted raw value (the *base* ``b``), its time and the cumulative
total, and classifies each new raw value ``r`` with ``bound = max_rate x dt + slack`` (``dt``: seconds since the
base was read; no bound when the rate or either time is unknown):

- accepted, ``0 <= r - b <= bound``: the value grows by ``r - b``.
- ``noise``, ``b - tolerance <= r < b`` (register rounding): held, not counted.
- ``rollover``, the modulus ``M`` is known, ``b - r > M/2`` (RFC 1982 serial-number order: ``r`` comes after
  ``b`` only across the wrap, so ``b`` was near ``M`` and ``r`` near 0) and the implied delta ``M - b + r <=
  bound``: the value grows by that delta.
- ``reset``, ``r < b/2``, ``b - r > slack`` and ``r <= bound`` (the device restarted at 0 within ``dt``, so it
  cannot have counted more than ``bound`` since): the value grows by ``r``. The energy
  between the last report and the reset is unknowable and lost, never invented. Only where ``can_reset``: a
  smart meter's register only wraps.
- ``backwards``, any other decrease (a re-read, a late or reordered answer), and ``jump``, ``r - b > bound``
  (more than the supply could deliver): held.
- ``rebased``: ``confirm`` consecutive held readings that agree with each other (non-decreasing, within the
  rate of the first) make the last one the base *without adding energy*: a counter that really restarted
  somewhere other than 0, or was replaced, is followed again, and what it counted while held is lost.

A held reading moves nothing: the cumulative value stays, the base stays, and callers drop the reading
(:attr:`MonotonicCounter.held`). The cumulative value therefore never decreases, and from its first reading it
never grows by more than ``max_rate`` x the time elapsed (plus ``slack`` per step). What no rule can tell apart
stays bounded by that: a stale pre-reset value read long after the reset looks like growth. Every cause is
counted in :attr:`MonotonicCounter.causes`, which the drivers put in ``health()["counters"]`` and the agent in
``kyojo agent status`` (``counters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from kyojo.contract.vocab import ParseError

#: Causes counted in :attr:`MonotonicCounter.causes` (``invalid``: a raw value no register holds).
CAUSES = ("rollover", "reset", "backwards", "jump", "rebased", "invalid")


class CounterError(ParseError):
    """A raw counter value that no register can hold (negative, not finite, not below the modulus); reason
    ``counter_invalid``."""


@dataclass(slots=True)
class MonotonicCounter:
    """One device counter made monotonic. Values are in the caller's unit (Wh for plugs, raw counts for meters).

    ``modulus``: the raw value at which the counter wraps to 0 (None: it only ever resets to 0).
    ``tolerance``: a decrease up to this much is rounding noise (held, not counted).
    ``max_rate``: the most the raw counter can grow per second (caller's unit/s; None: no rate bound), from the
    device family's power ceiling (:data:`kyojo.contract.vocab.MAX_POWER_W`).
    ``slack``: added to every rate bound: the register's resolution (a truncated register can be one step
    ahead of the energy really delivered), and the timing jitter between reading and timestamp.
    ``confirm``: how many consecutive, mutually consistent held readings make a new base.
    ``can_reset``: False for a register that only wraps (a smart meter's 0xE0): a drop to near zero is held.
    """

    modulus: float | None = None
    tolerance: float = 1e-6
    max_rate: float | None = None
    slack: float = 0.0
    confirm: int = 3
    can_reset: bool = True
    last_raw: float | None = None
    last_ts: float | None = None
    #: the cumulative value: only ever grows by a non-negative amount, so rounding cannot make it decrease
    total: float = 0.0
    resets: int = 0  # roll-overs + resets accepted (kept under this name for saved state and extras)
    causes: dict[str, int] = field(default_factory=dict)
    #: whether the last :meth:`update` was held (the caller should not emit it)
    held: bool = field(default=False, init=False, compare=False)
    #: the last update's cause (None: an ordinary increase)
    last_cause: str | None = field(default=None, init=False, compare=False)
    #: the current run of held readings (raw, ts), oldest first
    _pending: list[tuple[float, float | None]] = field(default_factory=list, init=False, repr=False, compare=False)

    def bound(self, since: float | None, ts: float | None) -> float:
        """The most the raw counter can have grown between ``since`` and ``ts`` (inf when unknown)."""
        if self.max_rate is None or since is None or ts is None:
            return math.inf
        return self.max_rate * max(ts - since, 0.0) + self.slack

    def update(self, raw: float, ts: float | None = None) -> float:
        """Feed the device's raw counter read at ``ts`` (POSIX s; None: no rate check); return the cumulative
        value (unchanged when the reading is held, see :attr:`held`). Raises :class:`CounterError` (counted as
        ``invalid``) for a value no register holds: negative, not finite, or not below the modulus."""
        if not math.isfinite(raw) or raw < 0 or (self.modulus is not None and raw >= self.modulus):
            self._count("invalid")
            raise CounterError("counter_invalid", detail=f"raw counter {raw!r} (modulus {self.modulus})")
        last = self.last_raw
        if last is None:
            self.total += raw
            self._accept(raw, ts, None)
            return self.total
        limit = self.bound(self.last_ts, ts)
        d = raw - last
        if 0 <= d <= limit:
            self.total += d
            self._accept(raw, ts, None)
        elif -self.tolerance <= d < 0:
            self.held, self.last_cause = True, "noise"
        elif d > 0:
            self._hold(raw, ts, "jump")
        elif (m := self.modulus) is not None and last - raw > m / 2 and m - last + raw <= limit:
            self.total += m - last + raw
            self.resets += 1
            self._accept(raw, ts, "rollover")
        elif self.can_reset and raw < last / 2 and last - raw > self.slack and raw <= limit:
            self.total += raw
            self.resets += 1
            self._accept(raw, ts, "reset")
        else:
            self._hold(raw, ts, "backwards")
        return self.total

    def _count(self, cause: str) -> None:
        self.causes[cause] = self.causes.get(cause, 0) + 1

    def _accept(self, raw: float, ts: float | None, cause: str | None) -> None:
        # The base's time never moves back: a reading stamped earlier must not widen the next rate bound.
        if ts is not None and self.last_ts is not None:
            ts = max(ts, self.last_ts)
        self.last_raw, self.last_ts = raw, ts
        self.held, self.last_cause = False, cause
        self._pending.clear()
        if cause is not None:
            self._count(cause)

    def _hold(self, raw: float, ts: float | None, cause: str) -> None:
        self._count(cause)
        self.held, self.last_cause = True, cause
        p = self._pending
        if p:
            first_raw, first_ts = p[0]
            prev_raw = p[-1][0]
            if not (raw >= prev_raw - self.tolerance and raw - first_raw <= self.bound(first_ts, ts)):
                p.clear()  # does not continue the held run: a new run starts here
        p.append((raw, ts))
        if len(p) >= self.confirm:
            # The device has settled on a new level: adopt it as the base without adding energy.
            self._accept(raw, ts, "rebased")

    @property
    def value(self) -> float | None:
        """The last cumulative value (None before the first update)."""
        return None if self.last_raw is None else self.total

    @property
    def offset(self) -> float:
        """Cumulative value minus the device's raw value (negative after a base rebased upwards)."""
        return self.total - (self.last_raw or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """State to persist across restarts (so the total is not lost with the process). A held run is not
        kept: after a restart it has to be confirmed again."""
        return {
            "last_raw": self.last_raw,
            "last_ts": self.last_ts,
            "offset": self.offset,  # what state saved before issue 22 holds; restore() prefers "total"
            "total": self.total,
            "resets": self.resets,
            "causes": dict(self.causes),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`to_dict` saved; fields missing from older state keep their defaults, malformed ones
        are ignored. The offset may be negative (a base rebased upwards)."""
        last = state.get("last_raw")
        if _number(last) and last >= 0:
            self.last_raw = float(last)
        ts = state.get("last_ts")
        if _number(ts):
            self.last_ts = float(ts)
        total, offset = state.get("total"), state.get("offset")
        if _number(total):
            self.total = float(total)
        elif _number(offset):
            self.total = float(offset) + (self.last_raw or 0.0)
        resets = state.get("resets")
        if isinstance(resets, int) and not isinstance(resets, bool) and resets >= 0:
            self.resets = resets
        causes = state.get("causes")
        if isinstance(causes, dict):
            self.causes = {
                k: v for k, v in causes.items() if k in CAUSES and isinstance(v, int) and not isinstance(v, bool)
            }


def _number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

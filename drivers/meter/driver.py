"""``BRouteMeter``: the async :class:`kyojo.contract.vocab.Driver` for a smart meter behind a Wi-SUN module.

The SKSTACK session is blocking serial I/O, so each step (open, poll) runs in a worker thread while the event
loop stays free; between polls the driver sleeps on the injected clock. Stopping (cancel / ``aclose``) aborts
the step in flight, ends the PANA session (SKTERM) and closes the port.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar

from drivers.logs import LogLimiter
from drivers.meter.skstack import BRouteSession, SerialLike, SkStack, SkStackError
from drivers.meter.smartmeter import MeterDecoder
from kyojo.contract.vocab import MAX_POWER_W, Clock, ParseError, Reading

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Asked once after joining: 0xD3 coefficient, 0xD7 effective digits, 0xE1 unit of cumulative energy.
SETUP_EPCS = (0xD3, 0xD7, 0xE1)
#: Asked every poll: 0xE7 instantaneous power, 0xE8 instantaneous currents, 0xE0 cumulative energy (normal).
POLL_EPCS = (0xE7, 0xE8, 0xE0)
#: Added with ``export``: 0xE3 cumulative energy (reverse direction, sold to the grid).
EXPORT_EPC = 0xE3


class BRouteMeter:
    """Reads one smart meter. ``port_factory`` opens the serial port (tests pass a pseudo-terminal)."""

    def __init__(
        self,
        device_id: str,
        subject: str,
        *,
        port_factory: Callable[[], SerialLike],
        rbid: str,
        password: str,
        clock: Clock,
        poll_interval_s: float = 30.0,
        export: bool = False,
        tz_offset_h: float = 9.0,
        session_options: Mapping[str, Any] | None = None,
        command_timeout_s: float = 5.0,
        max_power_w: float = MAX_POWER_W["meter"],
    ) -> None:
        self.device_id = device_id
        self.subject = subject
        self._port_factory = port_factory
        self._rbid = rbid
        self._password = password
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.export = export
        self.tz_offset_h = tz_offset_h
        self._session_options = dict(session_options or {})
        self._command_timeout_s = command_timeout_s
        self.max_power_w = max_power_w
        self.session: BRouteSession | None = None
        self.decoder: MeterDecoder | None = None
        self.polls = 0
        self.emitted = 0
        self.last_ts: float | None = None
        self.parse_errors: Counter[str] = Counter()
        self._log_limited = LogLimiter(log)
        self._step: asyncio.Future[Any] | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        self._step = loop.run_in_executor(None, fn, *args)
        result: T = await self._step
        return result

    def _decode(self, frames: list[Any], decoder: MeterDecoder) -> list[Reading]:
        out: list[Reading] = []
        now = self.clock.now()
        for frame in frames:
            before = dict(decoder.reserved)
            try:
                out += decoder.readings(frame, now)
            except ParseError as err:
                self.parse_errors[err.reason] += 1
            for cause, count in decoder.reserved.items():
                if count != before.get(cause, 0):
                    self._log_limited(logging.INFO, cause, "%s: reserved value %s (kept)", self.device_id, cause)
        return out

    async def readings(self) -> AsyncGenerator[Reading, None]:
        """Join the meter, read its unit and coefficient, then poll power, currents and energy forever."""
        port = await self._call(self._port_factory)
        sk = SkStack(port, timeout=self._command_timeout_s)
        session = BRouteSession(sk, self._rbid, self._password, **self._session_options)
        decoder = MeterDecoder(
            self.device_id, self.subject, tz_offset_h=self.tz_offset_h, export=self.export, max_power_w=self.max_power_w
        )
        if (old := self.decoder) is not None:
            # A restarted session reads the same register: keep its base, total and counts, so a roll-over
            # seen before the restart is not undone and a stale first answer is still held.
            decoder.normal, decoder.reverse, decoder.last_energy_ts = old.normal, old.reverse, old.last_energy_ts
        self.session, self.decoder = session, decoder
        epcs = (*POLL_EPCS, EXPORT_EPC) if self.export else POLL_EPCS
        try:
            await self._call(session.open)
            for _ in range(3):
                self._decode(await self._call(session.poll, SETUP_EPCS), decoder)
                if decoder.ready or decoder.unit_reserved:
                    break  # a reserved unit code: poll anyway (power and currents), energy is withheld
            else:
                raise SkStackError("the meter did not report its energy unit (0xE1)")
            while True:
                frames = await self._call(session.poll, epcs)
                self.polls += 1
                for r in self._decode(frames, decoder):
                    self.emitted += 1
                    self.last_ts = r.ts
                    yield r
                await self.clock.sleep(self.poll_interval_s)
        finally:
            await self._shutdown(sk, session)

    async def _shutdown(self, sk: SkStack, session: BRouteSession) -> None:
        step = self._step
        if step is not None and not step.done():
            sk.abort()
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.shield(step)
            except Exception as err:  # the step's own error is irrelevant now: we are stopping
                log.debug("step ended with %r while stopping", err)
        sk._abort = False
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, session.close)
        try:
            async with asyncio.timeout(5.0):
                await fut
        except (SkStackError, OSError, TimeoutError) as err:
            log.debug("SKTERM on stop failed: %s", err)
        finally:
            sk.close()

    def counter_causes(self) -> dict[str, dict[str, int]]:
        """Energy registers' roll-overs, resets and held readings by cause (:mod:`drivers.counter`), per device."""
        d = self.decoder
        if d is None:
            return {}
        out = {self.device_id: dict(d.normal.causes)}
        if self.export:
            out[f"{self.device_id}-export"] = dict(d.reverse.causes)
        return out

    def health(self) -> Mapping[str, object]:
        """Session state and counters (no secrets)."""
        s, d = self.session, self.decoder
        return {
            "device": self.device_id,
            "kind": "bmeter",
            "ok": bool(s and s.joined),
            "module_version": s.version if s else "",
            "channel": s.channel if s else None,
            "pan_id": s.pan_id if s else None,
            "joins": s.joins if s else 0,
            "join_failures": s.join_failures if s else 0,
            "sessions_lost": s.sessions_lost if s else 0,
            "timeouts": s.timeouts if s else 0,
            "bad_lines": s.bad_lines if s else 0,
            "parse_errors": dict(self.parse_errors),
            "reserved_values": dict(d.reserved) if d else {},
            "unit_kwh": d.unit_kwh if d else None,
            "coefficient": d.coefficient if d else None,
            "digits": d.digits if d else None,
            "polls": self.polls,
            "readings_emitted": self.emitted,
            "counters": self.counter_causes(),
            "last_ts": self.last_ts,
        }

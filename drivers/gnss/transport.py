"""I/O around the sans-IO NMEA decoder: a serial receiver (pyserial) and gpsd's JSON socket.

Both sources expose ``fixes()`` (an async iterator of :class:`Fix`) and ``health()``, reconnect on their own
with exponential backoff, and never block the event loop: serial reads run in a worker thread
(``asyncio.to_thread``) with a short timeout, gpsd is read with asyncio streams.

Serial ports: on a Raspberry Pi configure the stable udev name, not ``/dev/ttyACM0``/``/dev/ttyUSB0`` (those
renumber when a receiver is replugged or a second USB-serial device appears). udev creates
``/dev/serial/by-id/usb-<vendor>_<product>_<serial>-if00[-port0]`` for every USB serial device, e.g.
``/dev/serial/by-id/usb-u-blox_AG_-_www.u-blox.com_u-blox_7_-_GPS_GNSS_Receiver-if00`` or
``/dev/serial/by-id/usb-Prolific_Technology_Inc._USB-Serial_Controller-if00-port0`` (the BU-353 puck). It is a
symlink that disappears on unplug and comes back (possibly to another ttyACMn) on replug; the source reopens
the *path* each time, so it follows the symlink. A GPIO HAT on the Pi's UART is ``/dev/serial0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import date
from typing import Any, Literal, Protocol

import serial

from drivers.gnss.gpsd_json import WATCH_COMMAND, GpsdDecoder, GpsdError
from drivers.gnss.nmea import Fix, NmeaDecoder, NmeaReader
from drivers.logs import LogLimiter
from kyojo.runtime.backoff import Backoff

log = logging.getLogger(__name__)

#: baud rates tried by auto-detection: NMEA 0183's standard 4800, then the common receiver defaults
#: (9600: u-blox, MediaTek, SiRF pucks; 38400: u-blox high-rate and SkyTraq; 115200: ZED-F9P, fast HATs)
AUTO_BAUDS: tuple[int, ...] = (4800, 9600, 38400, 115200)


class SerialLike(Protocol):
    """The part of ``serial.Serial`` the source uses (tests may pass a fake)."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def close(self) -> None: ...


def open_serial(port: str, baud: int, timeout: float) -> SerialLike:
    """Open ``port`` 8N1 without flow control (what GNSS receivers speak); raises ``serial.SerialException``."""
    port_: SerialLike = serial.Serial(port=port, baudrate=baud, timeout=timeout, exclusive=True)
    return port_


def _read_chunk(port: SerialLike) -> bytes:
    """Block until at least one byte or the port's timeout, then take what else is waiting."""
    data = port.read(1)
    if data:
        waiting = port.in_waiting
        if waiting:
            data += port.read(waiting)
    return data


class SerialNmeaSource:
    """Fixes from an NMEA receiver on a serial port, reconnecting when it is unplugged and plugged back.

    ``baud="auto"`` probes :data:`AUTO_BAUDS` (the last good rate first): a rate is right when
    ``probe_s`` seconds of input yield at least one sentence with a valid checksum. Once open, the source reads
    in a worker thread; ``idle_flush_s`` of silence closes the epoch in progress (so the last fix is not held
    back), ``stale_s`` of silence counts as a dead receiver and reopens the port. Errors opening or reading
    (``SerialException``/``OSError``: gone device, EIO from a closed pty) are logged once per cause, counted,
    and followed by a backoff before the next attempt.
    """

    def __init__(
        self,
        port: str,
        baud: int | Literal["auto"] = "auto",
        *,
        date_floor: date | None = None,
        read_timeout_s: float = 0.2,
        probe_s: float = 1.5,
        idle_flush_s: float = 1.5,
        stale_s: float = 10.0,
        backoff: Backoff | None = None,
        opener: Callable[[str, int, float], SerialLike] = open_serial,
        bauds: Sequence[int] = AUTO_BAUDS,
    ) -> None:
        self.port = port
        self.baud = baud
        self.read_timeout_s = read_timeout_s
        self.probe_s = probe_s
        self.idle_flush_s = idle_flush_s
        self.stale_s = stale_s
        self.backoff = backoff or Backoff()
        self.opener = opener
        self.bauds = tuple(bauds)
        self._limited = LogLimiter(log)
        self.reader = (
            NmeaReader(on_unknown=self._note_unknown)
            if date_floor is None
            else NmeaReader(date_floor=date_floor, on_unknown=self._note_unknown)
        )
        self.current_baud: int | None = None
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        self.fixes_out = 0
        self._logged: set[str] = set()

    # -- connection -------------------------------------------------------------------------------------

    def _note_unknown(self, name: str, value: str) -> None:
        # A value NMEA 0183 does not define (the sentence was kept): health() counts them under
        # nmea.reserved_values; the log says so at most once a minute per field.
        self._limited(logging.INFO, name, "gnss %s: unknown %s=%r kept", self.port, name, value)

    def _note_error(self, cause: str, err: BaseException) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1
        self.last_error = f"{cause}: {err}"
        if cause not in self._logged:  # once per cause; health() carries the counts
            self._logged.add(cause)
            log.warning("gnss %s: %s: %s", self.port, cause, err)

    def _candidates(self) -> list[int]:
        if self.baud != "auto":
            return [self.baud]
        order = list(self.bauds)
        if self.current_baud in order:
            order.remove(self.current_baud)
            order.insert(0, self.current_baud)
        return order

    def _open_blocking(self) -> tuple[SerialLike, int, bytes]:
        """Open the port; with auto baud, probe rates until one speaks NMEA. Returns (port, baud, first bytes)."""
        last_exc: Exception | None = None
        for baud in self._candidates():
            port = self.opener(self.port, baud, self.read_timeout_s)
            if self.baud != "auto":
                return port, baud, b""
            probe = NmeaDecoder()
            seen = bytearray()
            deadline = time.monotonic() + self.probe_s
            try:
                while time.monotonic() < deadline:
                    chunk = _read_chunk(port)
                    seen += chunk
                    probe.feed(chunk)
                    if probe.stats.sentences or sum(probe.stats.unsupported.values()):
                        return port, baud, bytes(seen)
            except (serial.SerialException, OSError) as exc:
                port.close()
                raise exc
            port.close()
            last_exc = serial.SerialException(f"no NMEA at {baud} baud")
        raise last_exc or serial.SerialException("no baud rate to try")

    # -- reading ----------------------------------------------------------------------------------------

    async def fixes(self) -> AsyncIterator[Fix]:
        """Fixes as they complete, forever; reconnects with backoff."""
        while True:
            try:
                port, baud, first = await asyncio.to_thread(self._open_blocking)
            except (serial.SerialException, OSError, ValueError) as err:
                self._note_error("open", err)
                await asyncio.sleep(self.backoff.next())
                continue
            self.current_baud = baud
            self.connected = True
            self.connects += 1
            log.info("gnss %s open at %d baud", self.port, baud)
            try:
                for fix in self.reader.feed(first):
                    yield self._out(fix)
                quiet_since = time.monotonic()
                flushed = False
                while True:
                    try:
                        chunk = await asyncio.to_thread(_read_chunk, port)
                    except (serial.SerialException, OSError) as err:
                        self._note_error("read", err)
                        break
                    now = time.monotonic()
                    if chunk:
                        self.backoff.reset()
                        quiet_since, flushed = now, False
                        for fix in self.reader.feed(chunk):
                            yield self._out(fix)
                        continue
                    if not flushed and now - quiet_since >= self.idle_flush_s:
                        flushed = True
                        for fix in self.reader.flush():
                            yield self._out(fix)
                    if now - quiet_since >= self.stale_s:
                        self._note_error("stale", TimeoutError(f"no data for {self.stale_s:.0f} s"))
                        break
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    port.close()
            # the line went away mid-stream: keep what was complete, drop the partial line
            self.disconnects += 1
            for fix in self.reader.flush():
                yield self._out(fix)
            self.reader.reset()
            await asyncio.sleep(self.backoff.next())

    def _out(self, fix: Fix) -> Fix:
        self.fixes_out += 1
        return fix

    def health(self) -> Mapping[str, object]:
        """Connection state, baud, reconnects, errors by cause and the decoder's counters."""
        return {
            "source": "serial",
            "port": self.port,
            "connected": self.connected,
            "baud": self.current_baud,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "errors": dict(self.errors),
            "last_error": self.last_error,
            "fixes": self.fixes_out,
            "nmea": self.reader.summary(),
        }


class GpsdSource:
    """Fixes from a running gpsd (its JSON socket, default ``127.0.0.1:2947``), for installs that already
    run gpsd for the receiver. Sends ``?WATCH``, turns TPV reports into fixes, reconnects with backoff."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2947,
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 5.0,
        stale_s: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.backoff = backoff or Backoff()
        self.connect_timeout_s = connect_timeout_s
        self.stale_s = stale_s
        self.decoder = GpsdDecoder()
        self.connected = False
        self.connects = 0
        self.errors: dict[str, int] = {}
        self.rejects: dict[str, int] = {}
        self.last_error: str | None = None
        self.fixes_out = 0
        self._logged: set[str] = set()

    def _note_error(self, cause: str, err: BaseException) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1
        self.last_error = f"{cause}: {err}"
        if cause not in self._logged:
            self._logged.add(cause)
            log.warning("gpsd %s:%d: %s: %s", self.host, self.port, cause, err)

    async def fixes(self) -> AsyncIterator[Fix]:
        """Fixes from gpsd's TPV reports, forever; reconnects with backoff."""
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, w = await asyncio.open_connection(self.host, self.port)
                writer = w
                w.write(WATCH_COMMAND)
                await w.drain()
                self.connected = True
                self.connects += 1
                while True:
                    async with asyncio.timeout(self.stale_s):
                        line = await reader.readline()
                    if not line:
                        raise ConnectionError("gpsd closed the connection")
                    try:
                        fix = self.decoder.line(line)
                    except GpsdError as err:
                        self.rejects[err.reason] = self.rejects.get(err.reason, 0) + 1
                        continue
                    self.backoff.reset()
                    if fix is not None:
                        self.fixes_out += 1
                        yield fix
            except (OSError, ConnectionError, TimeoutError, ValueError) as err:
                self._note_error(type(err).__name__, err)
            finally:
                self.connected = False
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            await asyncio.sleep(self.backoff.next())

    def health(self) -> Mapping[str, Any]:
        """Connection state, reconnects, errors and rejected lines by cause."""
        return {
            "source": "gpsd",
            "address": f"{self.host}:{self.port}",
            "connected": self.connected,
            "connects": self.connects,
            "errors": dict(self.errors),
            "rejects": dict(self.rejects),
            "last_error": self.last_error,
            "fixes": self.fixes_out,
        }

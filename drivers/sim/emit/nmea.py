"""The simulated garbage truck as an NMEA 0183 receiver on a serial line (a pseudo-terminal).

Every simulated second of the truck's shift, :class:`NmeaEmitter` writes one epoch -- ``$GPGGA``, ``$GPRMC`` and
``$GPVTG`` with correct checksums, positions as ``ddmm.mmmm`` / ``dddmm.mmmm`` (4 decimals of minutes, ~0.2 m),
speed in knots (3 decimals) and km/h, course in degrees true (2 decimals) -- into the master side of a pty; the
real :class:`~drivers.gnss.transport.SerialNmeaSource` reads the slave side through a stable symlink, as it
reads ``/dev/serial/by-id/...`` on a truck. Outside the shift the receiver is off (it is powered with the
ignition) and the line is silent.

The sentences say what they are: GGA quality 8 and mode ``S`` (simulator) in RMC and VTG, as a receiver in
simulation mode reports; the gateway's ``kind = "gnss"`` entry must set ``accept_simulated = true`` to use
them (a real receiver's simulated output is otherwise refused). Times are the simulated UTC time, so the
driver stamps each fix with exactly the simulator's instant.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import tty
from collections import defaultdict
from types import TracebackType
from typing import Self

from drivers.sim.gnss import GarbageTruck
from kyojo.contract.vocab import Clock

KNOT_MPS = 1852.0 / 3600.0
#: decimals of the minutes in the position fields
MINUTE_DECIMALS = 4


def checksum(body: str) -> str:
    """The two hex digits of the XOR of the characters between ``$`` and ``*``."""
    x = 0
    for c in body.encode("ascii"):
        x ^= c
    return f"{x:02X}"


def sentence(body: str) -> str:
    """``$<body>*hh`` + CR LF."""
    return f"${body}*{checksum(body)}\r\n"


def _coord(value: float, deg_digits: int, hemis: str) -> tuple[str, str]:
    hemi = hemis[0] if value >= 0 else hemis[1]
    v = abs(value)
    scale = 10**MINUTE_DECIMALS
    total = round(v * 60.0 * scale)  # in 1/scale minutes, rounded once (no 60.0000 minutes)
    deg, minutes = divmod(total, 60 * scale)
    whole, frac = divmod(minutes, scale)
    return f"{deg:0{deg_digits}d}{whole:02d}.{frac:0{MINUTE_DECIMALS}d}", hemi


def _time(ts: float) -> tuple[str, str]:
    t = dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.strftime("%H%M%S.") + f"{t.microsecond // 10_000:02d}", t.strftime("%d%m%y")


def epoch(ts: float, lat: float, lon: float, speed_mps: float, course_deg: float) -> str:
    """GGA + RMC + VTG of one fix at ``ts`` (a simulator's output, so quality 8 / mode S)."""
    hms, dmy = _time(ts)
    la, ns = _coord(lat, 2, "NS")
    lo, ew = _coord(lon, 3, "EW")
    knots = f"{speed_mps / KNOT_MPS:.3f}"
    kmh = f"{speed_mps * 3.6:.3f}"
    cog = f"{round(course_deg, 2) % 360.0:.2f}"  # 359.996 is 0.00, never 360.00
    return (
        sentence(f"GPGGA,{hms},{la},{ns},{lo},{ew},8,09,0.9,40.0,M,36.7,M,,")
        + sentence(f"GPRMC,{hms},A,{la},{ns},{lo},{ew},{knots},{cog},{dmy},,,S")
        + sentence(f"GPVTG,{cog},T,,M,{knots},N,{kmh},K,S")
    )


def truck_epochs(truck: GarbageTruck, t0: float, t1: float) -> list[tuple[float, str]]:
    """The epochs of ``(t0, t1]`` (only within the shift), with their instants."""
    by_ts: dict[float, dict[str, float]] = defaultdict(dict)
    for r in truck.readings_between(t0, t1):
        by_ts[r.ts][r.metric] = r.value
    return [(ts, epoch(ts, v["latitude"], v["longitude"], v["speed"], v["course"])) for ts, v in sorted(by_ts.items())]


class PtyLine:
    """A serial line: a pty whose slave is reachable at ``link`` (a stable symlink, if given).

    The slave is held open here too, so writes never fail with EIO while the reader reopens the port; the
    master is non-blocking and what does not fit in the line's buffer (nobody reading) is dropped and counted,
    as bytes on a real serial line nobody listens to are lost. Close it (or use ``with``) to release both fds
    and remove the link.
    """

    def __init__(self, link: str | None = None) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.link = link
        if link is not None:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(self.path, link)
        self.written = 0
        self.dropped = 0

    @property
    def port(self) -> str:
        """What a driver should open: the link if there is one, else the slave's path."""
        return self.link if self.link is not None else self.path

    def write(self, data: bytes) -> None:
        """Write what fits; count the rest as dropped."""
        try:
            n = os.write(self.master, data)
        except BlockingIOError:
            n = 0
        self.written += n
        self.dropped += len(data) - n

    def close(self) -> None:
        """Close both ends and remove the link (idempotent)."""
        if self.master >= 0:
            os.close(self.master)
            os.close(self.slave)
            self.master = self.slave = -1
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NmeaEmitter:
    """Writes ``truck``'s epochs into ``line`` as simulated time passes on ``clock`` (1 Hz simulated).

    Epochs carry their own time, so when the emitter wakes late it writes every epoch it owes (a receiver
    buffers nothing, but the time in each sentence keeps the stream exact); ``epochs`` counts them.
    """

    def __init__(self, truck: GarbageTruck, line: PtyLine, clock: Clock, *, batch_s: float = 1.0) -> None:
        self.truck = truck
        self.line = line
        self.clock = clock
        self.batch_s = batch_s
        self.epochs = 0
        self.last_ts: float | None = None

    async def run(self) -> None:
        """Emit until cancelled."""
        last = math.floor(self.clock.now())
        while True:
            await self.clock.sleep(self.batch_s)
            now = math.floor(self.clock.now())
            if now <= last:
                continue
            for ts, text in truck_epochs(self.truck, last, now):
                self.line.write(text.encode("ascii"))
                self.epochs += 1
                self.last_ts = ts
            last = now

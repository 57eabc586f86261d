"""An emulated ROHM BP35A1 Wi-SUN module with a low-voltage smart meter behind it, on a pseudo-terminal.

For tests and the demo only: it stands where the USB/UART module would be, on the master side of a pty, while
the real :mod:`drivers.meter.skstack` code opens the slave side with pyserial.

The emulator answers as the BP35A1 command reference documents: it echoes each command, answers ``OK`` /
``FAIL ER04``..., ``EVER``, ``OK 01`` to ROPT, ``EVENT 20`` + ``EPANDESC`` + ``EVENT 22`` to SKSCAN, the
link-local address to SKLL64, ``EVENT 25`` (or ``EVENT 24``) after SKJOIN, and ``EVENT 21`` + ``OK`` + ``ERXUDP``
with the meter's hex ECHONET Lite Get_Res (or Get_SNA when a property has no value) to SKSENDTO.

What the meter answers comes from a :class:`MeterModel`: by default the fixed :class:`Scenario` values (504 W,
a raw count that grows by 7 per Get); :mod:`drivers.sim.emit.meter` plugs in the deterministic simulator.
:class:`Scenario` knobs make the module fail joins, hide the meter from short scans, drop the PANA session
(``EVENT 29``) and silence the meter (``mute``: Gets go out, no answer comes back).
"""

from __future__ import annotations

import os
import select
import threading
import tty
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from drivers.meter.echonet import CONTROLLER, ESV, SMART_METER, Frame, Property, decode_frame, encode_frame
from drivers.meter.skstack import link_local

__all__ = [
    "METER_IP",
    "METER_MAC",
    "OWN_IP",
    "PWD",
    "RBID",
    "Emulator",
    "MeterModel",
    "PtyEmulator",
    "Scenario",
]

#: B-route credentials the emulated meter accepts (any well-formed pair works; these are the test defaults).
RBID = "00112233445566778899AABBCCDDEEFF"
PWD = "0123456789AB"  # noqa: S105 - the emulator's documented test password
METER_MAC = "001C6400030C12A4"
METER_IP = link_local(METER_MAC)
OWN_IP = "FE80:0000:0000:0000:021D:1290:1234:5678"


class MeterModel(Protocol):
    """What the emulated meter reports: the EDT of a property (None or ``b""``: no value, Get_SNA)."""

    def edt(self, epc: int) -> bytes | None:
        """The property value to answer for ``epc`` in this Get."""
        ...

    def after_get(self, epcs: tuple[int, ...]) -> None:
        """Called once a Get for ``epcs`` has been answered (a model may advance its state)."""
        ...

    def first_inf(self) -> bytes | None:
        """An ECHONET Lite INF frame to push before the first Get's answer (None: none)."""
        ...


@dataclass
class Scenario:
    """Fixed meter values plus fault knobs; also the default :class:`MeterModel`."""

    join_failures: int = 0  # EVENT 24 for the first n SKJOINs
    empty_scans: int = 0  # the first n scans hear no beacon
    drop_after_gets: int | None = None  # EVENT 29 instead of the n-th+1 Get answer
    auto_reauth: bool = False  # after EVENT 29 the module re-authenticates by itself (EVENT 25)
    mute: bool = False  # the meter stops answering: the module sends (EVENT 21 00, OK) but no ERXUDP comes back
    power_w: int = 504
    count: int = 999_990  # 0xE0 raw count; grows by 7 per Get; 0xD7 = 6 digits -> wraps at 10**6

    def edt(self, epc: int) -> bytes | None:
        """The canned values: coefficient 1, 6 digits, 0.1 kWh, ``power_w``, R 12.3 A / T none, ``count``."""
        return {
            0xD3: (1).to_bytes(4, "big"),
            0xD7: b"\x06",
            0xE1: b"\x01",  # 0.1 kWh
            0xE7: self.power_w.to_bytes(4, "big", signed=True),
            0xE8: bytes.fromhex("007B7FFE"),  # R 12.3 A, T no data (single-phase 2-wire)
            0xE0: self.count.to_bytes(4, "big"),
        }.get(epc)

    def after_get(self, epcs: tuple[int, ...]) -> None:
        """The register grows by 7 counts per Get of 0xE0 (and wraps at 10**6)."""
        if 0xE0 in epcs:
            self.count = (self.count + 7) % 1_000_000

    def first_inf(self) -> bytes | None:
        """A 30-minute INF of 0xEA (2025-06-02 12:30, count 1), as a meter may push at any time."""
        prop = Property(0xEA, bytes.fromhex("07E906020C1E0000000001"))
        return encode_frame(Frame(0, SMART_METER, CONTROLLER, ESV.INF, (prop,)))


@dataclass
class Emulator:
    """A BP35A1 on the master side of a pty (``fd``), with a smart meter behind it (``model``, default ``sc``)."""

    fd: int
    sc: Scenario
    model: MeterModel | None = None
    commands: list[str] = field(default_factory=list)
    joined: bool = False
    joins: int = 0
    scans: int = 0
    gets: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    buf: bytearray = field(default_factory=bytearray)

    @property
    def meter(self) -> MeterModel:
        """The model answering Gets."""
        return self.model if self.model is not None else self.sc

    def send(self, *lines: str) -> None:
        """Write lines (CRLF-terminated) towards the host."""
        os.write(self.fd, "".join(line + "\r\n" for line in lines).encode())

    def run(self) -> None:
        """Serve until :attr:`stop` is set or the pty goes away (run it in a thread)."""
        while not self.stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.02)
            if not r:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            self.buf += chunk
            try:
                self._drain()
            except OSError:
                return

    def _drain(self) -> None:
        while True:
            if self.buf.startswith(b"SKSENDTO "):
                # SKSENDTO <handle> <ip> <port> <sec> <len hex4> <binary>: the length delimits the data.
                parts = bytes(self.buf).split(b" ", 6)
                if len(parts) < 7 or len(parts[6]) < int(parts[5], 16):
                    return
                n = int(parts[5], 16)
                data = parts[6][:n]
                header = b" ".join(parts[:6]).decode()
                consumed = len(header) + 1 + n
                del self.buf[:consumed]
                self._sendto(header, data)
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                return
            line = self.buf[:nl].decode()
            del self.buf[: nl + 2]
            if line:
                self._command(line)

    def _command(self, line: str) -> None:
        self.commands.append(line)
        self.send(line)  # echo
        verb, *args = line.split()
        if verb == "SKVER":
            self.send("EVER 1.2.10", "OK")
        elif verb == "ROPT":
            self.send("OK 01")
        elif verb == "SKSETPWD":
            ok = len(args) == 2 and int(args[0], 16) == len(args[1])
            self.send("OK" if ok else "FAIL ER06")
        elif verb == "SKSETRBID":
            self.send("OK" if len(args) == 1 and len(args[0]) == 32 else "FAIL ER06")
        elif verb == "SKSCAN":
            if len(args) != 3:
                self.send("FAIL ER05")
                return
            self.scans += 1
            self.send("OK")
            if self.scans > self.sc.empty_scans:
                self.send(
                    f"EVENT 20 {METER_IP}", "EPANDESC", "  Channel:21", "  Channel Page:09", "  Pan ID:8888",
                    f"  Addr:{METER_MAC}", "  LQI:E1", "  PairID:00AABBCC",
                )  # fmt: skip
            self.send(f"EVENT 22 {OWN_IP}")
        elif verb == "SKSREG":
            self.send("OK" if len(args) == 2 and args[0] in ("S2", "S3", "SFE") else "FAIL ER06")
        elif verb == "SKLL64":
            self.send(link_local(args[0]))  # SKLL64 answers the address only, no OK
        elif verb == "SKJOIN":
            self.send("OK", f"EVENT 21 {args[0]} 00", f"EVENT 02 {args[0]}")
            self.joins += 1
            if self.joins <= self.sc.join_failures:
                self.send(f"EVENT 24 {args[0]}")
            else:
                self.joined = True
                self.send(f"EVENT 25 {args[0]}")
        elif verb == "SKTERM":
            self.joined = False
            self.send("OK", f"EVENT 27 {METER_IP}")
        else:
            self.send("FAIL ER04")

    def _sendto(self, header: str, data: bytes) -> None:
        self.commands.append(header)
        os.write(self.fd, header.encode() + b" " + data + b"\r\n")  # echo, binary included
        ip = header.split()[2]
        if not self.joined:
            self.send(f"EVENT 21 {ip} 01", "OK")
            return
        self.send(f"EVENT 21 {ip} 00", "OK")
        if self.sc.mute:
            return
        self.gets += 1
        if self.sc.drop_after_gets is not None and self.gets == self.sc.drop_after_gets + 1:
            self.joined = False
            self.send(f"EVENT 29 {METER_IP}")
            if self.sc.auto_reauth:
                self.joined = True
                self.send(f"EVENT 25 {METER_IP}")
            return
        req = decode_frame(data)
        meter = self.meter
        props = [Property(p.epc, meter.edt(p.epc) or b"") for p in req.props]
        meter.after_get(tuple(p.epc for p in req.props))
        esv = ESV.GET_SNA if any(not p.edt for p in props) else ESV.GET_RES
        res = encode_frame(Frame(req.tid, SMART_METER, CONTROLLER, esv, tuple(props)))
        if self.gets == 1 and (inf := meter.first_inf()) is not None:
            self.send(self._erxudp(inf))
        self.send(self._erxudp(res))

    @staticmethod
    def _erxudp(frame: bytes) -> str:
        return f"ERXUDP {METER_IP} {OWN_IP} 0E1A 0E1A {METER_MAC} 1 {len(frame):04X} {frame.hex().upper()}"


class PtyEmulator:
    """An :class:`Emulator` on a fresh pty, served by a thread; ``path`` is the slave (what the driver opens).

    ``link``: also create this symlink to the slave (a stable name, like ``/dev/serial/by-id/...``). The slave
    stays open here too, so the master never sees EIO while the driver closes and reopens the port. Use as a
    context manager (or call :meth:`close`): it stops the thread, closes both fds and removes the link.
    """

    def __init__(self, sc: Scenario | None = None, *, model: MeterModel | None = None, link: str | None = None) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.link = link
        if link is not None:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(self.path, link)
        self.emulator = Emulator(self.master, sc or Scenario(), model)
        self._thread = threading.Thread(target=self.emulator.run, name="bp35a1-emulator", daemon=True)
        self._thread.start()

    @property
    def port(self) -> str:
        """What to configure as the serial port: the link when there is one, else the slave's path."""
        return self.link if self.link is not None else self.path

    def close(self) -> None:
        """Stop serving, close the pty and remove the link (idempotent)."""
        if self._thread.is_alive():
            self.emulator.stop.set()
            self._thread.join(2.0)
        if self.master >= 0:
            os.close(self.master)
            os.close(self.slave)
            self.master = self.slave = -1
        if self.link is not None and os.path.islink(self.link):
            os.unlink(self.link)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

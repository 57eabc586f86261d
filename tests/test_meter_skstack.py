"""The real SKSTACK/serial code through a pseudo-terminal, against an emulated BP35A1 and smart meter.

The emulator answers as the ROHM BP35A1 command reference documents: it echoes each command, answers
``OK`` / ``FAIL ER04``..., ``EVER``, ``OK 01`` to ROPT, ``EVENT 20`` + ``EPANDESC`` + ``EVENT 22`` to SKSCAN,
the link-local address to SKLL64, ``EVENT 25`` (or ``EVENT 24``) after SKJOIN, and ``EVENT 21`` + ``OK`` +
``ERXUDP`` with the meter's hex ECHONET Lite Get_Res to SKSENDTO. Scenario knobs make it fail joins, hide the
meter from short scans and drop the PANA session (``EVENT 29``).
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import serial

from drivers.base import Reading
from drivers.meter.driver import BRouteMeter
from drivers.meter.echonet import CONTROLLER, ESV, SMART_METER, Frame, Property, decode_frame, encode_frame
from drivers.meter.skstack import BRouteSession, JoinFailed, NoMeterFound, SkStack, SkStackError, link_local

RBID = "00112233445566778899AABBCCDDEEFF"
PWD = "0123456789AB"
METER_MAC = "001C6400030C12A4"
METER_IP = link_local(METER_MAC)
OWN_IP = "FE80:0000:0000:0000:021D:1290:1234:5678"


@dataclass
class Scenario:
    join_failures: int = 0  # EVENT 24 for the first n SKJOINs
    empty_scans: int = 0  # the first n scans hear no beacon
    drop_after_gets: int | None = None  # EVENT 29 instead of the n-th+1 Get answer
    auto_reauth: bool = False  # after EVENT 29 the module re-authenticates by itself (EVENT 25)
    power_w: int = 504
    count: int = 999_990  # 0xE0 raw count; grows by 7 per Get; 0xD7 = 6 digits -> wraps at 10**6


@dataclass
class Emulator:
    """A BP35A1 on the master side of a pty, with a low-voltage smart meter behind it."""

    fd: int
    sc: Scenario
    commands: list[str] = field(default_factory=list)
    joined: bool = False
    joins: int = 0
    scans: int = 0
    gets: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    buf: bytearray = field(default_factory=bytearray)

    def send(self, *lines: str) -> None:
        os.write(self.fd, "".join(line + "\r\n" for line in lines).encode())

    def run(self) -> None:
        while not self.stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.02)
            if not r:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            self.buf += chunk
            self._drain()

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
        self.gets += 1
        if self.sc.drop_after_gets is not None and self.gets == self.sc.drop_after_gets + 1:
            self.joined = False
            self.send(f"EVENT 29 {METER_IP}")
            if self.sc.auto_reauth:
                self.joined = True
                self.send(f"EVENT 25 {METER_IP}")
            return
        req = decode_frame(data)
        props = []
        for p in req.props:
            edt = {
                0xD3: (1).to_bytes(4, "big"),
                0xD7: b"\x06",
                0xE1: b"\x01",  # 0.1 kWh
                0xE7: self.sc.power_w.to_bytes(4, "big", signed=True),
                0xE8: bytes.fromhex("007B7FFE"),  # R 12.3 A, T no data (single-phase 2-wire)
                0xE0: self.sc.count.to_bytes(4, "big"),
            }.get(p.epc, b"")
            props.append(Property(p.epc, edt))
        if any(p.epc == 0xE0 for p in req.props):
            self.sc.count = (self.sc.count + 7) % 1_000_000
        esv = ESV.GET_SNA if any(not p.edt for p in props) else ESV.GET_RES
        res = encode_frame(Frame(req.tid, SMART_METER, CONTROLLER, esv, tuple(props)))
        # A 30-minute INF of 0xEA may arrive at any time: send one before the answer on the first Get.
        if self.gets == 1:
            inf = encode_frame(
                Frame(0, SMART_METER, CONTROLLER, ESV.INF, (Property(0xEA, bytes.fromhex("07E906020C1E0000000001")),))
            )
            self.send(self._erxudp(inf))
        self.send(self._erxudp(res))

    @staticmethod
    def _erxudp(frame: bytes) -> str:
        return f"ERXUDP {METER_IP} {OWN_IP} 0E1A 0E1A {METER_MAC} 1 {len(frame):04X} {frame.hex().upper()}"


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(master)
        os.close(slave)


def start(master: int, sc: Scenario) -> tuple[Emulator, threading.Thread]:
    emu = Emulator(master, sc)
    t = threading.Thread(target=emu.run, daemon=True)
    t.start()
    return emu, t


@pytest.fixture
def emulated(pty_pair: tuple[int, str]) -> Iterator[tuple[Emulator, str, Scenario]]:
    sc = Scenario()
    emu, t = start(pty_pair[0], sc)
    yield emu, pty_pair[1], sc
    emu.stop.set()
    t.join(2)


def open_port(path: str) -> serial.Serial:
    return serial.Serial(path, 115200, timeout=0.02)


def session(path: str, **kw: object) -> BRouteSession:
    sk = SkStack(open_port(path), timeout=2.0)
    opts: dict[str, object] = {"join_timeout_s": 2.0, "response_timeout_s": 1.0, "rejoin_grace_s": 0.2, **kw}
    return BRouteSession(sk, RBID, PWD, **opts)  # type: ignore[arg-type]


def test_open_scan_join_get(emulated: tuple[Emulator, str, Scenario]) -> None:
    emu, path, sc = emulated
    sc.empty_scans = 1  # the first, shortest scan hears nothing: the next duration finds the meter
    s = session(path, scan_durations=(3, 4))
    try:
        s.open()
        assert (s.version, s.channel, s.pan_id, s.mac, s.ipv6) == ("1.2.10", 0x21, 0x8888, METER_MAC, METER_IP)
        assert s.joined and s.joins == 1
        frames = s.poll((0xE7, 0xE8, 0xE0))
        assert [f.esv for f in frames] == [ESV.INF, ESV.GET_RES]  # the INF met on the way is kept
        assert frames[1].prop(0xE7) == (504).to_bytes(4, "big")
    finally:
        s.close()
        s.sk.close()
    sent = [c.split()[0] + (" " + c.split()[1] if c.startswith("SKSREG") else "") for c in emu.commands]
    assert sent[:9] == [
        "SKVER",
        "ROPT",
        "SKSETPWD",
        "SKSETRBID",
        "SKSCAN",
        "SKSCAN",
        "SKSREG S2",
        "SKSREG S3",
        "SKLL64",
    ]
    assert emu.commands[4:6] == ["SKSCAN 2 FFFFFFFF 3", "SKSCAN 2 FFFFFFFF 4"]
    assert "SKSREG S2 21" in emu.commands and "SKSREG S3 8888" in emu.commands and emu.commands[-1] == "SKTERM"


def test_join_failure_event_24(emulated: tuple[Emulator, str, Scenario]) -> None:
    _, path, sc = emulated
    sc.join_failures = 1
    s = session(path)
    try:
        with pytest.raises(JoinFailed):
            s.open()
        assert s.join_failures == 1 and not s.joined
        s.join()  # second attempt succeeds
        assert s.joined
    finally:
        s.close()
        s.sk.close()


def test_no_meter_and_fail_codes(emulated: tuple[Emulator, str, Scenario]) -> None:
    _, path, sc = emulated
    sc.empty_scans = 10
    s = session(path, scan_durations=(2, 3))
    try:
        with pytest.raises(NoMeterFound):
            s.open()
        with pytest.raises(SkStackError) as info:
            s.sk.command("SKBOGUS")
        assert info.value.code == "ER04"
    finally:
        s.sk.close()


def test_session_expiry_event_29_rejoins(emulated: tuple[Emulator, str, Scenario]) -> None:
    emu, path, sc = emulated
    sc.drop_after_gets = 1
    s = session(path)
    try:
        s.open()
        assert s.poll((0xE7,))[-1].esv == ESV.GET_RES
        frames = s.poll((0xE7,))  # EVENT 29 instead of an answer -> SKJOIN -> EVENT 25 -> Get again
        assert frames[-1].esv == ESV.GET_RES and s.sessions_lost == 1 and s.joins == 2 and emu.joins == 2
    finally:
        s.close()
        s.sk.close()


def test_session_expiry_with_module_reauth(emulated: tuple[Emulator, str, Scenario]) -> None:
    emu, path, sc = emulated
    sc.drop_after_gets, sc.auto_reauth = 1, True
    s = session(path, rejoin_grace_s=1.0)
    try:
        s.open()
        s.poll((0xE7,))
        assert s.poll((0xE7,))[-1].esv == ESV.GET_RES
        assert s.sessions_lost == 1 and emu.joins == 1  # no second SKJOIN was needed
    finally:
        s.close()
        s.sk.close()


class FastClock:
    """Wall time, but poll-interval sleeps last only a moment."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0.01)


def test_driver_readings_through_pty(emulated: tuple[Emulator, str, Scenario]) -> None:
    """The async driver: setup props, then power/currents/energy; the counter wraps at 10**6 (0xD7 = 6) and
    the session drops once (EVENT 29) on the way; energy stays monotonic."""
    emu, path, sc = emulated
    sc.drop_after_gets = 3

    async def run() -> tuple[list[Reading], BRouteMeter]:
        drv = BRouteMeter(
            "home1-meter", "home1", port_factory=lambda: open_port(path), rbid=RBID, password=PWD,
            clock=FastClock(), poll_interval_s=30.0, command_timeout_s=2.0,
            session_options={"join_timeout_s": 2.0, "response_timeout_s": 1.0, "rejoin_grace_s": 0.2},
        )  # fmt: skip
        out: list[Reading] = []
        agen = drv.readings()
        try:
            async for r in agen:
                out.append(r)
                if len([x for x in out if x.metric == "energy" and x.device == "home1-meter"]) >= 4:
                    break
        finally:
            await agen.aclose()
        return out, drv

    out, drv = asyncio.run(asyncio.wait_for(run(), 20))
    energy = [r.value for r in out if r.metric == "energy" and r.device == "home1-meter"]
    # 0.1 kWh per count: 999990 -> 999997 -> 4 (wrapped) -> 11; the 0xEA INF (count 1) is older: skipped
    assert energy == [99_999_000.0, 99_999_700.0, 100_000_400.0, 100_001_100.0]
    assert {(r.device, r.metric, r.value) for r in out if r.metric != "energy"} == {
        ("home1-meter", "power", 504.0),
        ("home1-meter-r", "current", 12.3),
    }
    h = drv.health()
    assert h["sessions_lost"] == 1 and h["unit_kwh"] == 0.1 and h["digits"] == 6
    assert PWD not in repr(h) and RBID not in repr(h)
    assert emu.commands[-1] == "SKTERM"  # the session is ended on stop


def test_config_validation_and_secrets() -> None:
    from pydantic import ValidationError

    from drivers.meter.device import Config

    base = {"kind": "bmeter", "id": "home1-meter", "household": "home1", "rbid": RBID, "password": PWD}
    cfg = Config.model_validate(base)
    assert cfg.poll_interval.total_seconds() == 30 and PWD not in repr(cfg) and RBID not in repr(cfg)
    for bad in ({"password": "short"}, {"rbid": "x" * 31}, {"poll_interval": 1}, {"colour": "red"}):
        with pytest.raises(ValidationError):
            Config.model_validate({**base, **bad})


def test_build_from_config_reads_through_pty(emulated: tuple[Emulator, str, Scenario], tmp_path: object) -> None:
    from pathlib import Path

    from drivers.meter import device
    from drivers.registry import BuildContext

    emu, path, _ = emulated
    cfg = device.Config.model_validate(
        {"kind": "bmeter", "id": "home1-meter", "household": "home1", "rbid": RBID, "password": PWD,
         "serial_port": path, "scan_durations": [6]}
    )  # fmt: skip
    (drv,) = device.build(cfg, BuildContext("gw1", FastClock(), 1.0, Path(str(tmp_path))))

    async def first() -> Reading:
        agen = drv.readings()
        try:
            return await agen.__anext__()
        finally:
            await agen.aclose()  # type: ignore[attr-defined]

    r = asyncio.run(asyncio.wait_for(first(), 20))
    assert (r.device, r.subject, r.metric, r.value) == ("home1-meter", "home1", "power", 504.0)
    assert "SKSCAN 2 FFFFFFFF 6" in emu.commands and emu.commands[-1] == "SKTERM"

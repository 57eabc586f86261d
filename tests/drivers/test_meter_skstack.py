"""The real SKSTACK/serial code through a pseudo-terminal, against an emulated BP35A1 and smart meter.

The emulator (:mod:`drivers.meter.emulator`, shared with the demo) answers as the ROHM BP35A1 command reference
documents; Scenario knobs make it fail joins, hide the meter from short scans and drop the PANA session
(``EVENT 29``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import tty
from collections.abc import Iterator

import pytest
import serial

from drivers.meter.driver import BRouteMeter
from drivers.meter.echonet import ESV
from drivers.meter.emulator import METER_IP, METER_MAC, PWD, RBID, Emulator, Scenario
from drivers.meter.skstack import BRouteSession, JoinFailed, NoMeterFound, SkStack, SkStackError
from kyojo.contract.vocab import Reading


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
    """Wall time plus every poll interval slept so far, but each sleep lasts only a moment: polls are
    ``poll_interval_s`` apart on this clock, as the counter's rate check expects of a real meter."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def now(self) -> float:
        return time.time() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.skipped += seconds
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


class RereadMeter:
    """The demo's meter (0.01 kWh units, 8 digits: wraps at 1 GWh) whose third 0xE0 answer is the register one
    count below the second, as a re-read or late answer gives; the setup Gets answer 0xD3/0xD7/0xE1."""

    def __init__(self) -> None:
        self.counts = [1_888_000, 1_888_001, 1_888_000, 1_888_002, 1_888_003, 1_888_004]

    def edt(self, epc: int) -> bytes | None:
        table = {0xD3: (1).to_bytes(4, "big"), 0xD7: b"\x08", 0xE1: b"\x02", 0xE7: (250).to_bytes(4, "big")}
        if epc == 0xE0:
            return self.counts[0].to_bytes(4, "big")
        return table.get(epc)

    def after_get(self, epcs: tuple[int, ...]) -> None:
        if 0xE0 in epcs and len(self.counts) > 1:
            self.counts.pop(0)

    def first_inf(self) -> bytes | None:
        return None


def test_driver_reread_through_pty_does_not_spike() -> None:
    """End to end over the pty: a re-read one count lower is held (counted as ``backwards``), not taken for a
    roll-over by the 10**8 modulus; energy rises by the 40 Wh the register really counted."""
    from drivers.meter.emulator import PtyEmulator

    async def run(port: str) -> tuple[list[float], BRouteMeter]:
        drv = BRouteMeter(
            "home1-meter", "home1", port_factory=lambda: open_port(port), rbid=RBID, password=PWD,
            clock=FastClock(), poll_interval_s=10.0, command_timeout_s=2.0,
            session_options={"join_timeout_s": 2.0, "response_timeout_s": 1.0, "rejoin_grace_s": 0.2},
        )  # fmt: skip
        energy: list[float] = []
        agen = drv.readings()
        try:
            async for r in agen:
                if r.metric == "energy":
                    energy.append(r.value)
                if len(energy) == 5:
                    break
        finally:
            await agen.aclose()
        return energy, drv

    with PtyEmulator(model=RereadMeter()) as emu:
        energy, drv = asyncio.run(asyncio.wait_for(run(emu.path), 20))
    assert energy == [18_880_000.0, 18_880_010.0, 18_880_020.0, 18_880_030.0, 18_880_040.0]
    assert drv.polls == 6 and drv.health()["counters"] == {"home1-meter": {"backwards": 1}}

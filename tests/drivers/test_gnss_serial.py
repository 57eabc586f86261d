"""The serial transport over real pseudo-terminals (pyserial opens the pty's slave through a by-id-style
symlink), including unplug/replug, baud auto-detection, and the gpsd JSON source against a fake gpsd.

The fake gpsd is a tiny asyncio TCP server speaking gpsd's protocol (VERSION, then ``?WATCH`` -> DEVICES,
WATCH and the reports); the reports it sends are gpsd's own real output for a capture (the TPV/SKY lines
of ``tests/data/nmea/*.log.chk``). gpsd itself is not part of our stack, so it is not started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.gnss.nmea import Fix, NmeaReader, strip_capture_header
from drivers.gnss.transport import GpsdSource, SerialNmeaSource
from kyojo.runtime.backoff import Backoff
from tests import kit
from tests.kit import wait_for_async

DATA = kit.DATA / "nmea"
LOGS = sorted(p.name for p in DATA.glob("*.log"))


def capture(name: str) -> bytes:
    return strip_capture_header((DATA / name).read_bytes())


def offline(data: bytes) -> list[Fix]:
    r = NmeaReader()
    return r.feed(data) + r.flush()


class PtyReceiver:
    """A GNSS receiver on a pty; ``link`` plays /dev/serial/by-id/... (re-pointed at each plug)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation before pyserial configures the port
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.symlink_to(os.ttyname(self.slave))
        tmp.replace(self.link)

    def unplug(self) -> None:
        if self.master < 0:
            return
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1
        self.link.unlink()

    async def send(self, data: bytes, chunk: int = 1024) -> None:
        for i in range(0, len(data), chunk):
            view = memoryview(data[i : i + chunk])
            while view:
                n = await asyncio.to_thread(os.write, self.master, view)
                view = view[n:]


def fast_source(link: Path, **kw: object) -> SerialNmeaSource:
    return SerialNmeaSource(
        str(link),
        read_timeout_s=0.05,
        probe_s=1.0,
        idle_flush_s=0.2,
        backoff=Backoff(0.02, 0.1),
        **kw,  # type: ignore[arg-type]
    )


async def collect(it: AsyncIterator[Fix], out: list[Fix], n: int, within: float = 10.0) -> None:
    async def run() -> None:
        async for f in it:
            out.append(f)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), within)


async def connected(src: SerialNmeaSource) -> None:
    """pyserial flushes the input buffer when it opens a port: send only once the source is listening."""
    await wait_for_async(lambda: src.connected)


@pytest.mark.parametrize("name", LOGS)
def test_capture_through_pty_equals_offline_replay(name: str, tmp_path: Path) -> None:
    data = capture(name)
    expected = offline(data)
    rx = PtyReceiver(tmp_path / "usb-GNSS-if00")
    src = fast_source(rx.link, baud=4800)

    async def main() -> list[Fix]:
        got: list[Fix] = []
        it = src.fixes()
        reading = asyncio.create_task(collect(it, got, len(expected) + 1))
        await connected(src)
        await rx.send(data)
        await wait_for_async(lambda: src.reader.decoder.stats.bytes >= len(data))
        await asyncio.sleep(0.4)  # quiet line: the source flushes the last epoch
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await it.aclose()  # type: ignore[attr-defined]
        return got

    try:
        got = asyncio.run(main())
    finally:
        rx.unplug()
    assert got == expected
    assert src.health()["nmea"]["rejects"] == offline_rejects(data), src.reader.decoder.last_error.raw  # type: ignore[index,union-attr]


def offline_rejects(data: bytes) -> dict[str, int]:
    r = NmeaReader()
    r.feed(data)
    r.flush()
    return dict(r.summary()["rejects"])


def test_unplug_and_replug_keeps_producing_fixes(tmp_path: Path) -> None:
    data = capture("telit-he910.log")
    expected = offline(data)
    # cut at an epoch boundary (a GGA that starts a second) a little after the middle
    cut = data.index(b"$GPGGA,105230")
    first, second = data[:cut], data[cut:]
    n_first = len(offline(first))
    rx = PtyReceiver(tmp_path / "usb-Telit-if00")
    src = fast_source(rx.link, baud=9600)

    async def main() -> list[Fix]:
        got: list[Fix] = []
        it = src.fixes()
        reading = asyncio.create_task(collect(it, got, len(expected) + 1, within=20))
        await connected(src)
        await rx.send(first)
        await wait_for_async(lambda: len(got) >= n_first)
        rx.unplug()  # the cable is pulled: the pty master closes, the by-id symlink vanishes
        await wait_for_async(lambda: not src.connected)  # the source notices (EIO from the pty)
        await wait_for_async(lambda: src.errors.get("open", 0) >= 2)  # backs off, fails to reopen a missing path
        rx.plug()  # a new pty (new /dev/pts/N) behind the same name
        await connected(src)
        await rx.send(second)
        await wait_for_async(lambda: len(got) >= len(expected))
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await it.aclose()  # type: ignore[attr-defined]
        return got

    try:
        got = asyncio.run(main())
    finally:
        rx.unplug()
    assert got == expected
    h = src.health()
    assert h["connects"] == 2 and h["disconnects"] == 1
    assert h["errors"]["read"] == 1 and h["errors"]["open"] >= 2  # type: ignore[index]


class FakePort:
    """A receiver at ``true_baud``: read at another rate, it yields framing garbage (as a UART would)."""

    def __init__(self, data: bytes, baud: int, true_baud: int) -> None:
        self.data = data if baud == true_baud else bytes((b * 7 + 13) & 0xFF for b in data)
        self.pos = 0

    @property
    def in_waiting(self) -> int:
        return min(64, len(self.data) - self.pos)

    def read(self, size: int = 1) -> bytes:
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass


def test_baud_auto_detection_finds_the_receivers_rate() -> None:
    data = capture("mtk-3301.log")
    tried: list[int] = []

    def opener(port: str, baud: int, timeout: float) -> FakePort:
        tried.append(baud)
        return FakePort(data, baud, 38400)

    src = SerialNmeaSource("/dev/fake", "auto", opener=opener, probe_s=0.5, idle_flush_s=0.05)

    async def main() -> list[Fix]:
        got: list[Fix] = []
        it = src.fixes()
        await collect(it, got, len(offline(data)))
        await it.aclose()  # type: ignore[attr-defined]
        return got

    got = asyncio.run(main())
    assert tried == [4800, 9600, 38400]
    assert src.current_baud == 38400
    assert got == offline(data)


# --- gpsd --------------------------------------------------------------------------------------------------


def gpsd_reports(name: str) -> list[bytes]:
    lines = (DATA / (name + ".chk")).read_text(encoding="latin-1").splitlines()
    return [ln.encode() + b"\n" for ln in lines if ln.startswith(('{"class":"TPV"', '{"class":"SKY"'))]


def test_gpsd_source_against_fake_gpsd() -> None:
    reports = gpsd_reports("ublox-8.log")
    n_fix = sum(1 for r in reports if b'"lat"' in r and b'"mode":1' not in r)
    nmea_positions = {(round(f.lat, 8), round(f.lon, 8)) for f in offline(capture("ublox-8.log"))}
    # (ublox-8's .chk times are the true 2017 ones: no rollover shift to undo for this log)
    sessions = 0
    watch_lines: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        writer.write(b'{"class":"VERSION","release":"3.20","rev":"3.20","proto_major":3,"proto_minor":14}\n')
        watch_lines.append(await reader.readline())
        writer.write(b'{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/ttyACM0","driver":"NMEA0183"}]}\n')
        writer.write(b'{"class":"WATCH","enable":true,"json":true}\n')
        writer.write(b"not json\n")
        for r in reports:
            writer.write(r)
        await writer.drain()
        writer.close()  # gpsd restarts: the source must reconnect

    async def main() -> list[Fix]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        src = GpsdSource("127.0.0.1", port, backoff=Backoff(0.02, 0.1))
        got: list[Fix] = []
        it = src.fixes()
        await collect(it, got, 2 * n_fix)
        await it.aclose()  # type: ignore[attr-defined]
        server.close()
        await server.wait_closed()
        assert src.health()["rejects"] == {"json": 2}
        return got

    got = asyncio.run(main())
    assert sessions == 2
    assert all(json.loads(w.rstrip(b";\n").split(b"=", 1)[1]) == {"enable": True, "json": True} for w in watch_lines)
    assert len(got) == 2 * n_fix
    assert {(round(f.lat, 8), round(f.lon, 8)) for f in got} <= nmea_positions
    timed = [f for f in got if f.time is not None]
    nmea_times = {f.time for f in offline(capture("ublox-8.log"))}
    assert timed and all(f.time in nmea_times for f in timed)
    assert all(f.sats is not None and f.hdop is not None for f in got[5:])

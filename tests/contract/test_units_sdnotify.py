"""kyojo.runtime.sdnotify against a real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kyojo.runtime import sdnotify


class FakeSystemd:
    """Binds the notify socket (filesystem path, or abstract when ``name`` starts with '@') and collects datagrams."""

    def __init__(self, name: str) -> None:
        self.env = {"NOTIFY_SOCKET": name}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name[1:] if name.startswith("@") else name)
        self.sock.settimeout(2.0)

    def receive(self, count: int) -> list[str]:
        return [self.sock.recv(4096).decode() for _ in range(count)]

    def pending(self) -> list[str]:
        self.sock.setblocking(False)
        out: list[str] = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out


@pytest.fixture(params=["abstract", "path"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    name = f"@kyojo-test-{uuid.uuid4().hex}" if request.param == "abstract" else str(tmp_path / "notify")
    fake = FakeSystemd(name)
    yield fake
    fake.sock.close()


def test_ready_status_stopping(systemd: FakeSystemd) -> None:
    assert sdnotify.ready("3 devices", env=systemd.env)
    assert sdnotify.status("catching up\nignored", env=systemd.env)
    assert sdnotify.stopping(env=systemd.env)
    assert systemd.receive(3) == ["READY=1\nSTATUS=3 devices", "STATUS=catching up", "STOPPING=1"]


def test_no_socket_is_a_no_op() -> None:
    assert not sdnotify.notify("READY=1", env={})
    assert sdnotify.watchdog_interval({}) is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(mine) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_thread_watchdog_pings_only_while_healthy(systemd: FakeSystemd) -> None:
    healthy = True
    env = {**systemd.env, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}  # 0.1 s -> ping every 0.05
    with sdnotify.Watchdog(lambda: healthy, env=env) as dog:
        assert dog.interval == pytest.approx(0.05)
        assert sdnotify.ready(env=env)
        first = systemd.receive(4)
        healthy = False
        time.sleep(0.15)
        systemd.pending()  # drop a ping that may have raced the flag
        time.sleep(0.2)
        assert systemd.pending() == []
    assert first[0] in ("READY=1", "WATCHDOG=1")
    assert first.count("WATCHDOG=1") >= 3


def test_asyncio_watchdog_task(systemd: FakeSystemd) -> None:
    async def main() -> None:
        task = asyncio.create_task(sdnotify.watchdog_task(interval=0.02, env=systemd.env))
        sdnotify.ready(env=systemd.env)
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    got = systemd.pending()
    assert "READY=1" in got
    assert got.count("WATCHDOG=1") >= 4
    # Without WATCHDOG_USEC the task returns at once (nothing to do).
    asyncio.run(sdnotify.watchdog_task(env=systemd.env))

"""sd_notify(3) without dependencies: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 over ``$NOTIFY_SOCKET``.

Protocol facts (systemd.service(5), sd_notify(3)):

* ``$NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket; a leading ``@`` means the Linux *abstract* namespace
  (the name then starts with a NUL byte, nothing on the filesystem). Each message is one datagram of
  newline-separated ``KEY=VALUE`` lines.
* ``Type=notify``: the unit is "started" only when ``READY=1`` arrives (else ``TimeoutStartSec`` kills it).
* ``WatchdogSec=``: systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``); without a ``WATCHDOG=1`` within
  that period the service is killed with SIGABRT and, with ``Restart=on-failure``, restarted. Ping at half the
  period, and only from code that proves the service is making progress (an asyncio task on the main loop, not a
  free-running thread that would keep pinging a wedged process).
* With ``NotifyAccess=main`` (the default for Type=notify) only the main PID may send; children are ignored.

Without ``$NOTIFY_SOCKET`` (a terminal, tests, containers) every call is a no-op returning False.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Mapping

__all__ = ["Watchdog", "notify", "ready", "status", "stopping", "watchdog", "watchdog_interval", "watchdog_task"]


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace
    return path


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines) to systemd; True if sent, False if there is no notify socket.

    OSError (socket gone, systemd not listening) propagates: a supervisor that cannot be told is worth a log line.
    """
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode("utf-8"))
    return True


def ready(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (and optionally a STATUS line): the service is up; Type=notify units count as started."""
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""), env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """``WATCHDOG=1``: still alive. Send at least every ``watchdog_interval()`` seconds."""
    return notify("WATCHDOG=1", env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """``STATUS=<text>``: one line shown by ``systemctl status``."""
    return notify(f"STATUS={text.splitlines()[0] if text else ''}", env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: shutting down on purpose (so a slow stop is not a watchdog failure)."""
    return notify("STOPPING=1", env=env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """How often to ping, in seconds: half of ``$WATCHDOG_USEC``; None if no watchdog applies to this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. we are a child)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


async def watchdog_task(
    healthy: Callable[[], bool] = lambda: True,
    *,
    interval: float | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Ping ``WATCHDOG=1`` from the event loop while ``healthy()``; returns at once if no watchdog is configured.

    Run it as a task on the agent's/ingester's main loop: if the loop blocks, pings stop and systemd restarts the
    service. ``healthy`` should check real progress (e.g. "the bus moved in the last minute").
    """
    every = interval if interval is not None else watchdog_interval(env)
    if every is None:
        return
    while True:
        if healthy():
            watchdog(env=env)
        await asyncio.sleep(every)


class Watchdog:
    """Thread variant of :func:`watchdog_task` for code without an event loop: ping while ``healthy()``.

    ``healthy`` MUST reflect the main work's progress, or the thread would keep a wedged process alive.
    Use as a context manager; ``stop()`` joins the thread.
    """

    def __init__(
        self,
        healthy: Callable[[], bool],
        *,
        interval: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.healthy = healthy
        self.interval = interval if interval is not None else watchdog_interval(env)
        self.env = env
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start pinging (no-op without a watchdog)."""
        if self.interval is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.is_set():
            if self.healthy():
                with contextlib.suppress(OSError):
                    watchdog(env=self.env)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop pinging and join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

"""The helpers every part's tests share: where the repository and the device captures are, a free loopback port,
and the one way to wait for state (poll with a deadline, never sleep a fixed time).

Import them from here (``from tests.kit import DATA, free_port, wait_for``); tests/conftest.py re-exports them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from provisioning.local import free_port

__all__ = ["DATA", "ROOT", "free_port", "wait_for", "wait_for_async"]

#: the repository's root (systemd/, dashboards/, docs/ ... are under it)
ROOT = Path(__file__).resolve().parent.parent
#: the device captures and data excerpts the tests read (tests/data/<family>/, each with its README)
DATA = ROOT / "tests" / "data"


def wait_for(cond: Callable[[], object], timeout: float = 60.0, what: str = "condition", *, step: float = 0.05) -> bool:
    """Poll ``cond`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds.

    For state owned by another thread or process (a broker, an agent in its thread, an ingester process). Returns
    True, so ``assert wait_for(...)`` reads as well as a bare call.
    """
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        time.sleep(step)
    return True


async def wait_for_async(cond: Callable[[], object], within: float = 20.0, what: str = "condition") -> None:
    """:func:`wait_for` inside an event loop: poll the public state of the code under test (it has no event to wait
    on) while its tasks run; AssertionError naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {within}s"
        await asyncio.sleep(0.01)

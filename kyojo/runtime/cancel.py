"""Honour a cancellation that a library swallowed (stdlib only).

Python 3.11's :func:`asyncio.wait_for`, which bleak, Bumble and aiomqtt use inside their connects, returns the
result instead of raising when a cancellation lands in the same loop turn as the awaited thing completes
(CPython gh-86296, fixed in 3.12 by rebuilding ``wait_for`` on :func:`asyncio.timeout`). The request is still
counted on the task (:meth:`asyncio.Task.cancelling`), so a retry loop that checks it at the top of every round
stops as asked instead of reconnecting forever while its owner waits for it to end. Our own code uses
``asyncio.timeout`` (ruff bans ``asyncio.wait_for`` outside tests).
"""

from __future__ import annotations

import asyncio


def honour_cancellation() -> None:
    """Raise :class:`asyncio.CancelledError` if the current task was asked to stop and nobody undid it."""
    me = asyncio.current_task()
    if me is not None and me.cancelling():
        raise asyncio.CancelledError

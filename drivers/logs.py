"""One rate-limited logger for the drivers: bad input from the network is logged once per cause, not per frame.

Peers on the home LAN (chargers, plugs) can send a malformed frame or an unknown id many times a second; each
cause is logged at once the first time, then summarised at most once per interval, and the number of causes
remembered is bounded.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["LogLimiter"]


class LogLimiter:
    """Logs the first event of each cause at once, then at most one line per ``interval`` s with the count of
    those it held back. At most ``max_causes`` causes are remembered (least recently seen forgotten first), so
    invented ids (charge points, plugs) cannot grow it."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        max_causes: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_causes = max_causes
        self.clock = clock
        self._causes: OrderedDict[str, tuple[float, int]] = OrderedDict()  # cause -> (next allowed, held back)

    def __call__(self, level: int, cause: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``cause`` was logged less than ``interval`` ago; True when logged."""
        now = self.clock()
        next_at, held = self._causes.pop(cause, (0.0, 0))
        if now < next_at:
            self._causes[cause] = (next_at, held + 1)
            return False
        self._causes[cause] = (now + self.interval, 0)
        while len(self._causes) > self.max_causes:
            self._causes.popitem(last=False)
        if held:
            msg, args = msg + " (+%d more in the last %ds)", (*args, held, int(self.interval))
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

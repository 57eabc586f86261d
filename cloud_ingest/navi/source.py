"""Pickups from InfluxDB: the ``events`` the ingester wrote for ``kind = pickup`` under ``waste-collection``,
from the city's own trucks only.

Any enrolled gateway may grant ``waste-collection`` and send pickup events, and the cloud trusts nothing a
gateway says about anyone but itself: a hostile one could claim the truck came (or did not). So only points whose
``household`` tag (the ingester's keyed hash of the *authenticated* gateway id, :mod:`cloud_ingest.scope`) is one
of the trucks' gateways the city names count; the event's own ``device``, ``subject`` and ``route`` are never
trusted, and the route of a point is the city's collection-points file's. A point that is not on a route, or
whose times do not make sense, is rejected: counted per reason, logged once per reason, and skipped.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from cloud_ingest.influx import InfluxError, InfluxV1Connection
from cloud_ingest.lineproto import EVENTS_MEASUREMENT
from cloud_ingest.navi.model import Visit
from cloud_ingest.scope import Scope

log = logging.getLogger(__name__)

PURPOSE = "waste-collection"
_TAG = re.compile(r"^h-[0-9a-f]{20}$")
#: a stop longer than this is not a pickup the navigator believes (an event's arrival is within it of its time)
MAX_DWELL_MS = 3_600_000


class NaviQueryError(InfluxError):
    """InfluxDB refused the navigator's query or could not be reached."""


class PickupSource(Protocol):
    """Where the navigator reads pickups from (InfluxDB in production, a list in unit tests)."""

    def visits(self, since_ms: int, until_ms: int) -> list[Visit]:
        """The trusted trucks' pickups that ended in ``[since_ms, until_ms)``."""
        ...


def truck_tags(gateways: Iterable[str], scope: Scope) -> list[str]:
    """The ``household`` tags the ingester gives the trucks' gateways under ``waste-collection``."""
    return sorted({scope.household(gw, PURPOSE) for gw in gateways})


class InfluxPickups:
    """:class:`PickupSource` over InfluxDB's v1 query API (one short connection per query)."""

    def __init__(
        self,
        url: str,
        db: str,
        trucks: Iterable[str],
        *,
        points: Iterable[str],
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url, self.db, self.token, self.timeout = url, db, token, timeout
        self.trucks = sorted(set(trucks))
        for tag in self.trucks:
            if not _TAG.match(tag):
                raise ValueError(f"not a household tag: {tag!r}")
        self.points = frozenset(points)
        self.rejected: Counter[str] = Counter()

    def statement(self, since_ms: int, until_ms: int) -> str:
        trucks = " OR ".join(f"\"household\" = '{t}'" for t in self.trucks)
        # every value is ours: a tag checked against _TAG, a constant or an integer
        return (
            f'SELECT "point", "arrived_ms" FROM "{EVENTS_MEASUREMENT}" WHERE "kind" = \'pickup\' '  # noqa: S608
            f"AND \"purpose\" = '{PURPOSE}' AND ({trucks}) "
            f"AND time >= {int(since_ms)}ms AND time < {int(until_ms)}ms"
        )

    def visits(self, since_ms: int, until_ms: int) -> list[Visit]:
        if not self.trucks:
            return []
        conn = InfluxV1Connection(
            self.url, token=self.token, timeout=self.timeout, keep_alive=False, error=NaviQueryError
        )
        try:
            results = conn.query({"db": self.db, "q": self.statement(since_ms, until_ms), "epoch": "ms"}, form=True)
        finally:
            conn.close()
        out: list[Visit] = []
        for result in results:
            for series in result.get("series", []):
                cols = series.get("columns", [])
                for row in series.get("values", []):
                    visit = self._visit(dict(zip(cols, row, strict=False)))
                    if visit is not None:
                        out.append(visit)
        return out

    def _visit(self, row: dict[str, Any]) -> Visit | None:
        point, arrived, departed = row.get("point"), row.get("arrived_ms"), row.get("time")
        if not isinstance(point, str) or point not in self.points:
            return self._reject("unknown_point", row)
        if not isinstance(arrived, int | float) or not isinstance(departed, int | float):
            return self._reject("bad_time", row)
        if not 0 <= departed - arrived <= MAX_DWELL_MS:
            return self._reject("bad_time", row)
        return Visit(point, int(arrived), int(departed))

    def _reject(self, reason: str, row: dict[str, Any]) -> Visit | None:
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            log.warning("pickup rejected (%s), further ones only counted: %r", reason, row)
        return None

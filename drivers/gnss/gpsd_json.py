"""Sans-IO decoding of gpsd's JSON reports (``TPV`` and ``SKY``) into :class:`drivers.gnss.nmea.Fix`.

gpsd protocol facts (gpsd_json(5)): the client sends ``?WATCH={"enable":true,"json":true};``; the daemon answers
with one JSON object per line, each with a ``class``. ``TPV`` carries ``mode`` (0 unknown, 1 no fix, 2 2D,
3 3D), ``time`` (ISO-8601 UTC), ``lat``/``lon`` (deg), ``altMSL`` (m; older gpsd: ``alt``), ``speed`` (m/s),
``track`` (deg true) and ``status`` (1 normal, 2 DGPS, 3 RTK fixed, 4 RTK float, 5 dead reckoning, 6 GNSS+DR,
7 time only, 8 simulated). ``SKY`` carries ``hdop`` and the satellites (``used`` per satellite, or ``uSat``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drivers.gnss.nmea import Fix
from kyojo.contract.vocab import ParseError

#: gpsd TPV status -> GGA-style quality (1 GPS, 2 DGPS, 4 RTK, 5 float RTK, 6 estimated)
_STATUS_QUALITY = {0: 1, 1: 1, 2: 2, 3: 4, 4: 5, 5: 6, 6: 6}
_SIMULATED = 8


class GpsdError(ParseError):
    """A line from gpsd that is not a usable JSON report (``reason``: ``json``, ``tpv``)."""


def _num(o: dict[str, Any], key: str) -> float | None:
    v = o.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


@dataclass(slots=True)
class GpsdDecoder:
    """Lines from gpsd -> fixes. Keeps the last SKY (HDOP, satellites used) to complete the next TPV."""

    hdop: float | None = None
    sats: int | None = None
    accept_simulated: bool = False

    def line(self, raw: bytes | str) -> Fix | None:
        """Decode one line; a fix for a TPV with mode >= 2, else None. Raises :class:`GpsdError`."""
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise GpsdError("json", raw=raw, detail=str(err)[:80]) from None
        if not isinstance(obj, dict):
            raise GpsdError("json", raw=raw, detail="not an object")
        cls = obj.get("class")
        if cls == "SKY":
            self.hdop = _num(obj, "hdop") if "hdop" in obj else self.hdop
            sats = obj.get("satellites")
            if isinstance(sats, list):
                self.sats = sum(1 for s in sats if isinstance(s, dict) and s.get("used") is True)
            elif isinstance(obj.get("uSat"), int):
                self.sats = int(obj["uSat"])
            return None
        if cls != "TPV":
            return None
        return self.tpv(obj)

    def tpv(self, o: dict[str, Any]) -> Fix | None:
        """A TPV object -> Fix (None without a 2D/3D fix, or for simulated output unless accepted)."""
        mode = o.get("mode")
        if not isinstance(mode, int) or mode < 2:
            return None
        status = o.get("status", 1)
        if status == _SIMULATED and not self.accept_simulated:
            return None
        lat, lon = _num(o, "lat"), _num(o, "lon")
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise GpsdError("tpv", raw=json.dumps(o)[:200], detail="fix without a valid lat/lon")
        when: datetime | None = None
        t = o.get("time")
        if isinstance(t, str):
            try:
                when = datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone(UTC)
            except ValueError:
                raise GpsdError("tpv", raw=t, detail="bad time") from None
        tod = 0.0 if when is None else when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
        alt = _num(o, "altMSL")
        return Fix(
            time=when,
            time_of_day=tod,
            lat=lat,
            lon=lon,
            alt_m=alt if alt is not None else _num(o, "alt"),
            speed_mps=_num(o, "speed"),
            course_deg=_num(o, "track"),
            quality=_STATUS_QUALITY.get(status if isinstance(status, int) else 1, 1),
            sats=self.sats,
            hdop=self.hdop,
        )


WATCH_COMMAND = b'?WATCH={"enable":true,"json":true};\n'

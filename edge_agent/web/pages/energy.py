"""``/energy``: today / this week — whole-home power from the meter, each plug, and the model's appliance estimates.

Everything is read from the agent's raw store (the web process only reads): the meter's and the plugs' ``power``
series, averaged into buckets (5 min for today, 1 h for the week) for the charts, and their ``energy`` counters for
the totals. The NILM processor's estimates (devices ``<meter>.nilm.<appliance>``) are shown as *estimates*:

- an appliance the NILM config reads from a plug is shown as measured (the plug is exact);
- the processor writes only *shown* estimates (:mod:`models.nilm.gate`: a plug calibration for this home says the
  model beats always-off, or the model's confidence is high), so an appliance with no estimate in the range says
  "not enough evidence for this home" instead of a number (``level == "withheld"``);
- kettle and microwave in a Japanese home (a B-route meter) stay untrusted (the card's "Known limits");
- a shown number carries the card's leave-one-house-out on-state F1 (mean over held-out houses: >= 0.7 high,
  >= 0.5 medium, else low) as context.

Settled hours are summarised once (one scan of the raw store's time index for every series) and cached: the rows
of a past hour do not change, so a page reads only the last two hours again.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edge_agent.config import AgentConfig
from edge_agent.web.site import site_of
from edge_agent.web.templating import gettext, render

RANGES = {"today": (1, 300), "week": (7, 3600)}  # days shown, bucket seconds
#: the model card's "Known limits": not trustworthy in a Japanese home without local data or a plug
JAPAN_UNTRUSTED = frozenset({"kettle", "microwave"})


# -- what the model card says --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Trust:
    appliance: str
    f1_unseen: float | None  # mean on-state F1 over the held-out houses (leave-one-house-out)
    japan_caveat: bool

    def level(self, japanese_home: bool) -> str:
        """``untrusted``, ``low``, ``medium`` or ``high``."""
        if (japanese_home and self.japan_caveat) or self.f1_unseen is None:
            return "untrusted"
        if self.f1_unseen >= 0.7:
            return "high"
        return "medium" if self.f1_unseen >= 0.5 else "low"


@cache
def model_trust() -> dict[str, Trust]:
    """Per appliance, from the NILM protocol report shipped with the models (the shipped files on held-out houses)."""
    # found without importing models.nilm (which imports numpy: ~11 MB the web process does not need)
    spec = importlib.util.find_spec("models")
    assert spec is not None
    assert spec.submodule_search_locations
    report = Path(next(iter(spec.submodule_search_locations))) / "nilm" / "protocol_report.json"
    doc = json.loads(report.read_text(encoding="utf-8"))
    summary: dict[str, Any] = doc.get("shipped", {}).get("summary", {})
    return {name: Trust(name, s.get("f1_on_mean"), name in JAPAN_UNTRUSTED) for name, s in sorted(summary.items())}


# -- the home's devices ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EnergySetup:
    meter: str | None
    plug_appliance: dict[str, str]  # NILM: plug device -> appliance it powers
    japanese_home: bool


def setup_of(cfg: AgentConfig) -> EnergySetup:
    meter = None
    plug_appliance: dict[str, str] = {}
    for p in cfg.processors:
        if getattr(p, "kind", "") == "nilm":
            meter = str(p.meter)
            plug_appliance = {str(k): str(v) for k, v in dict(p.plugs).items()}
    japanese = False
    for d in cfg.devices:
        if getattr(d, "kind", "") == "bmeter":  # the Wi-SUN B-route: Japan's smart-meter interface
            japanese = True
            meter = meter or str(d.id)
    return EnergySetup(meter, plug_appliance, japanese)


# -- reading the raw store ------------------------------------------------------------------------------------------
#: one hour of every energy series: series id -> (bucket means from the hour's start, NaN where none; min; max)
HourDoc = dict[int, tuple["array[float]", float, float]]
_CACHE_LOCK = threading.Lock()
_HOUR_CACHE: OrderedDict[tuple[str, int, int, frozenset[int]], HourDoc] = OrderedDict()
_CACHE_MAX = 1024  # a week of hours at two bucket sizes; ~20 series x 12 doubles each: a few MB at most
HOUR_MS = 3_600_000
#: an hour is final (cached) once it ended this long ago: NILM estimates describe minutes up to ~62 min back
SETTLED_MS = 2 * HOUR_MS


def _energy_series(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(device, metric) -> series id, for the energy category's power and energy series (estimates included)."""
    return {
        (str(d), str(m)): int(i)
        for i, d, m in conn.execute(
            "SELECT id, device, metric FROM series WHERE metric IN ('power', 'energy') AND category LIKE 'energy%'"
        )
    }


def _hour(conn: sqlite3.Connection, ids: frozenset[int], start_ms: int, end_ms: int, bucket_s: int) -> HourDoc:
    """One scan of [start, end) (the raw store's time index) for every series at once; ``start`` is the hour's."""
    marks = ",".join("?" * len(ids))
    n = max(1, HOUR_MS // (bucket_s * 1000))
    out: HourDoc = {}
    for sid, b, mean, lo, hi in conn.execute(
        f"SELECT series, ts / ?, avg(value), min(value), max(value) FROM raw "  # noqa: S608 - placeholders only
        f"WHERE ts >= ? AND ts < ? AND series IN ({marks}) GROUP BY series, ts / ?",
        (bucket_s * 1000, start_ms, end_ms, *sorted(ids), bucket_s * 1000),
    ):
        doc = out.get(int(sid))
        if doc is None:
            doc = out[int(sid)] = (array("d", [math.nan] * n), float(lo), float(hi))
        i = min(n - 1, max(0, (int(b) * bucket_s * 1000 - start_ms // HOUR_MS * HOUR_MS) // (bucket_s * 1000)))
        doc[0][i] = float(mean)
        out[int(sid)] = (doc[0], min(doc[1], float(lo)), max(doc[2], float(hi)))
    return out


def read_range(
    conn: sqlite3.Connection, key_db: str, ids: frozenset[int], start_ms: int, end_ms: int, bucket_s: int, now_ms: int
) -> dict[int, tuple[list[tuple[int, float]], float, float]]:
    """Every series over [start, end): (bucket start ms, mean) points and the min and max value, hour by hour;
    settled hours come from the cache (their rows do not change)."""
    merged: dict[int, tuple[list[tuple[int, float]], float, float]] = {}
    hour = start_ms // HOUR_MS * HOUR_MS
    while hour < end_ms:
        lo, hi = max(hour, start_ms), min(hour + HOUR_MS, end_ms)
        key = (key_db, lo, bucket_s, ids)
        settled = hi == hour + HOUR_MS and hi <= now_ms - SETTLED_MS
        doc = None
        if settled:
            with _CACHE_LOCK:
                doc = _HOUR_CACHE.get(key)
                if doc is not None:
                    _HOUR_CACHE.move_to_end(key)
        if doc is None:
            doc = _hour(conn, ids, lo, hi, bucket_s)
            if settled:
                with _CACHE_LOCK:
                    _HOUR_CACHE[key] = doc
                    while len(_HOUR_CACHE) > _CACHE_MAX:
                        _HOUR_CACHE.popitem(last=False)
        for sid, (means, vlo, vhi) in doc.items():
            pts = [(hour + i * bucket_s * 1000, v) for i, v in enumerate(means) if not math.isnan(v)]
            have = merged.get(sid)
            if have is None:
                merged[sid] = (pts, vlo, vhi)
            else:
                have[0].extend(pts)
                merged[sid] = (have[0], min(have[1], vlo), max(have[2], vhi))
        hour += HOUR_MS
    return merged


def _points(doc: dict[int, tuple[list[tuple[int, float]], float, float]], sid: int | None) -> list[tuple[int, float]]:
    if sid is None or sid not in doc:
        return []
    return doc[sid][0]


def _used_kwh(doc: dict[int, tuple[list[tuple[int, float]], float, float]], sid: int | None) -> float | None:
    """What a cumulative energy counter (Wh) grew by over the range, in kWh."""
    if sid is None or sid not in doc:
        return None
    _, lo, hi = doc[sid]
    return max(0.0, hi - lo) / 1000


def local_days(now: float, days: int) -> list[tuple[int, int]]:
    """The last ``days`` local calendar days up to now, as [start, end) in epoch ms (today ends now)."""
    today = datetime.fromtimestamp(now).astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    for i in range(days - 1, -1, -1):
        start = today - timedelta(days=i)
        end = start + timedelta(days=1)
        out.append((int(start.timestamp() * 1000), int(min(end.timestamp(), now) * 1000)))
    return out


def _chart(
    title: str, unit: str, lines: Iterable[tuple[str, list[tuple[int, float]]]], bucket_s: int
) -> dict[str, Any]:
    """A uPlot-ready document: x (epoch s) shared by every line, None where a line has no bucket."""
    lines = list(lines)
    xs = sorted({t for _, pts in lines for t, _ in pts})
    index = {t: i for i, t in enumerate(xs)}
    series = []
    for label, pts in lines:
        ys: list[float | None] = [None] * len(xs)
        for t, v in pts:
            ys[index[t]] = round(v, 1)
        series.append({"label": label, "values": ys})
    return {
        "title": title,
        "unit": unit,
        "x": [t // 1000 for t in xs],
        "series": series,
        "bucket_s": bucket_s,
        "tz_offset_s": tz_offset_s(),
    }


def tz_offset_s() -> int:
    """The gateway's UTC offset now (charts show the gateway's local time, as the rest of the page does)."""
    offset = datetime.now().astimezone().utcoffset()
    return 0 if offset is None else int(offset.total_seconds())


def energy_view(conn: sqlite3.Connection, cfg: AgentConfig, key_db: str, now: float, rng: str) -> dict[str, Any]:
    """What the page shows (numbers only; the template words them)."""
    ndays, bucket_s = RANGES[rng]
    days = local_days(now, ndays)
    now_ms = int(now * 1000)
    setup = setup_of(cfg)
    ids = _energy_series(conn)
    doc = read_range(conn, key_db, frozenset(ids.values()), days[0][0], days[-1][1], bucket_s, now_ms) if ids else {}
    meter_doc = None
    if setup.meter and (setup.meter, "power") in ids:
        meter_doc = {
            "device": setup.meter,
            "points": _points(doc, ids[(setup.meter, "power")]),
            "kwh": _used_kwh(doc, ids.get((setup.meter, "energy"))),
        }
    plugs = []
    for (device, metric), sid in sorted(ids.items()):
        if metric != "power" or device == setup.meter or ".nilm." in device:
            continue
        pts = _points(doc, sid)
        plugs.append(
            {
                "device": device,
                "name": device.removeprefix(f"{cfg.gateway.id}-"),
                "points": pts,
                "kwh": _used_kwh(doc, ids.get((device, "energy"))),
                "last_w": pts[-1][1] if pts else None,
            }
        )
    trust = model_trust()
    plugged = set(setup.plug_appliance.values())
    estimates = []
    prefix = f"{setup.meter}.nilm."
    names = (
        sorted(set(trust) | {d.removeprefix(prefix) for d, m in ids if m == "power" and d.startswith(prefix)})
        if setup.meter
        else []
    )
    for appliance in names:
        device = f"{prefix}{appliance}"
        power_sid = ids.get((device, "power"))
        t = trust.get(appliance)
        level = "untrusted" if t is None else t.level(setup.japanese_home)
        if appliance in plugged:
            level = "plug"
        points = _points(doc, power_sid) if level != "untrusted" else []
        if level not in ("untrusted", "plug") and not points:
            level = "withheld"  # the gate showed no number for this home in the range
        shown = level not in ("untrusted", "withheld")
        estimates.append(
            {
                "appliance": appliance,
                "level": level,
                "f1": None if t is None else t.f1_unseen,
                "japan_caveat": bool(t and t.japan_caveat and setup.japanese_home),
                "kwh": _used_kwh(doc, ids.get((device, "energy"))) if shown else None,
                "points": points if shown else [],
            }
        )
    return {
        "range": rng,
        "bucket_s": bucket_s,
        "from_ms": days[0][0],
        "to_ms": now_ms,
        "meter": meter_doc,
        "plugs": plugs,
        "estimates": estimates,
        "japanese_home": setup.japanese_home,
    }


def _appliance_label(_: Callable[[str], str], name: str) -> str:
    labels = {
        "kettle": _("Kettle"),
        "microwave": _("Microwave"),
        "dishwasher": _("Dishwasher"),
        "washing_machine": _("Washing machine"),
        "washer": _("Washing machine"),
        "fridge": _("Fridge"),
        "tv": _("TV"),
        "ev": _("EV charger"),
    }
    return labels.get(name, name)


async def energy(request: Request) -> Response:
    site = site_of(request)
    rng = request.query_params.get("range", "today")
    if rng not in RANGES:
        rng = "today"
    _ = gettext(request)
    with site.agent_db() as conn:
        view = energy_view(conn, site.config, str(site.config.db_path), site.now(), rng)
    charts = []
    if view["meter"] is not None:
        charts.append(_chart(_("Whole home"), "W", [(_("Whole home"), view["meter"]["points"])], view["bucket_s"]))
    if view["plugs"]:
        charts.append(
            _chart(
                _("Plugs"),
                "W",
                [(_appliance_label(_, p["name"]), p["points"]) for p in view["plugs"]],
                view["bucket_s"],
            )
        )
    shown = [e for e in view["estimates"] if e["level"] not in ("untrusted", "plug", "withheld")]
    if shown:
        charts.append(
            _chart(
                _("Estimated appliances"),
                "W",
                [(_appliance_label(_, e["appliance"]) + " " + _("(estimate)"), e["points"]) for e in shown],
                view["bucket_s"],
            )
        )
    charts = [c for c in charts if c["x"]]  # just after midnight "today" may have nothing to draw yet
    for p in view["plugs"]:
        p["label"] = _appliance_label(_, p["name"])
    for e in view["estimates"]:
        e["label"] = _appliance_label(_, e["appliance"])
    return render(request, "energy.html", {**view, "charts": charts, "ranges": list(RANGES)})


routes: list[BaseRoute] = [Route("/energy", energy, methods=["GET"])]

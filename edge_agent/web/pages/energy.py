"""``/energy``: today / this week — whole-home power from the meter, each plug, and the model's appliance estimates.

Everything is read from the agent's raw store (the web process only reads): the meter's and the plugs' ``power``
series, averaged into buckets (5 min for today, 1 h for the week) for the charts, and their ``energy`` counters for
the totals. The NILM processor's estimates (devices ``<meter>.nilm.<appliance>``) are shown as *estimates* with
their confidence, judged from the model card's held-out-house evaluation (``models/nilm/protocol_report.json``):

- an appliance the NILM config reads from a plug is shown as measured (the plug is exact);
- where the model card says the estimate is not trustworthy for this home, the page says so instead of a number:
  kettle and microwave in a Japanese home (a B-route meter) — the card's "Known limits" — and any appliance whose
  estimate was worse than always-off on an unseen house;
- otherwise the number is shown with its confidence (the worst F1 on an unseen house: >= 0.7 high, >= 0.5
  medium, else low).

Completed days are summarised once and cached (the raw rows of a past day do not change), so the week view reads
only today's rows again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from edge_agent.web.site import site_of
from edge_agent.web.templating import gettext, render
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edge_agent.config import AgentConfig

RANGES = {"today": (1, 300), "week": (7, 3600)}  # days shown, bucket seconds
#: the model card's "Known limits": not trustworthy in a Japanese home without local data or a plug
JAPAN_UNTRUSTED = frozenset({"kettle", "microwave"})


# -- what the model card says --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Trust:
    appliance: str
    f1_unseen: float | None  # worst F1 over both held-out-house directions
    mae_gain_unseen: float | None  # worst MAE reduction vs always-off on an unseen house (0.3 = 30 % lower)
    japan_caveat: bool

    def level(self, japanese_home: bool) -> str:
        """``untrusted``, ``low``, ``medium`` or ``high``."""
        if (japanese_home and self.japan_caveat) or self.f1_unseen is None:
            return "untrusted"
        if self.mae_gain_unseen is not None and self.mae_gain_unseen < 0:
            return "untrusted"
        if self.f1_unseen >= 0.7:
            return "high"
        return "medium" if self.f1_unseen >= 0.5 else "low"


@cache
def model_trust() -> dict[str, Trust]:
    """Per appliance, from the NILM protocol report shipped with the models (held-out house splits)."""
    doc = json.loads(resources.files("models.nilm").joinpath("protocol_report.json").read_text(encoding="utf-8"))
    out: dict[str, Trust] = {}
    splits = list(doc.get("house", {}).values())
    names = {a for s in splits for a in s.get("appliances", {})}
    for name in sorted(names):
        f1s, gains = [], []
        for s in splits:
            model = s["appliances"].get(name, {})
            off = s.get("baselines", {}).get("always_off", {}).get(name, {})
            if model.get("f1_on") is not None:
                f1s.append(float(model["f1_on"]))
            if model.get("mae_w") is not None and off.get("mae_w"):
                gains.append(1.0 - float(model["mae_w"]) / float(off["mae_w"]))
        out[name] = Trust(name, min(f1s) if f1s else None, min(gains) if gains else None, name in JAPAN_UNTRUSTED)
    return out


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
_CACHE_LOCK = threading.Lock()
_DAY_CACHE: OrderedDict[tuple[str, int, int, int], tuple[list[tuple[int, float]], float | None, float | None]] = (
    OrderedDict()
)
_CACHE_MAX = 512


def _energy_series(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(device, metric) -> series id, for the energy category's power and energy series (estimates included)."""
    return {
        (str(d), str(m)): int(i)
        for i, d, m in conn.execute(
            "SELECT id, device, metric FROM series WHERE metric IN ('power', 'energy') AND category LIKE 'energy%'"
        )
    }


def _day_summary(
    conn: sqlite3.Connection, key_db: str, series: int, counter: int | None, start_ms: int, end_ms: int, bucket_s: int
) -> tuple[list[tuple[int, float]], float | None, float | None]:
    """Power bucket means and the energy counter's first and last value over [start, end)."""
    buckets = [
        (int(b) * bucket_s * 1000, float(v))
        for b, v in conn.execute(
            "SELECT ts / ? AS b, avg(value) FROM raw WHERE ts >= ? AND ts < ? AND series = ? GROUP BY b ORDER BY b",
            (bucket_s * 1000, start_ms, end_ms, series),
        )
    ]
    first = last = None
    if counter is not None:
        row = conn.execute(
            "SELECT min(value), max(value) FROM raw WHERE ts >= ? AND ts < ? AND series = ?",
            (start_ms, end_ms, counter),
        ).fetchone()
        if row and row[0] is not None:
            first, last = float(row[0]), float(row[1])
    return buckets, first, last


def summarise(
    conn: sqlite3.Connection,
    key_db: str,
    series: int,
    counter: int | None,
    days: list[tuple[int, int]],
    bucket_s: int,
    now_ms: int,
) -> tuple[list[tuple[int, float]], float | None]:
    """Buckets and the energy used (Wh, the counter's growth) over the given days; past days come from the cache."""
    points: list[tuple[int, float]] = []
    lo: float | None = None
    hi: float | None = None
    for start_ms, end_ms in days:
        key = (key_db, series * 1_000_003 + (counter or 0), start_ms, bucket_s)
        done = end_ms < now_ms - 3_600_000  # an hour of slack for late rows (NILM estimates lag up to ~62 min)
        hit = None
        if done:
            with _CACHE_LOCK:
                hit = _DAY_CACHE.get(key)
        if hit is None:
            hit = _day_summary(conn, key_db, series, counter, start_ms, end_ms, bucket_s)
            if done:
                with _CACHE_LOCK:
                    _DAY_CACHE[key] = hit
                    while len(_DAY_CACHE) > _CACHE_MAX:
                        _DAY_CACHE.popitem(last=False)
        buckets, first, last = hit
        points += buckets
        if first is not None and last is not None:
            lo = first if lo is None else min(lo, first)
            hi = last if hi is None else max(hi, last)
    used = None if lo is None or hi is None else max(0.0, hi - lo)
    return points, used


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
    return {"title": title, "unit": unit, "x": [t // 1000 for t in xs], "series": series, "bucket_s": bucket_s}


def energy_view(conn: sqlite3.Connection, cfg: AgentConfig, key_db: str, now: float, rng: str) -> dict[str, Any]:
    """What the page shows (numbers only; the template words them)."""
    ndays, bucket_s = RANGES[rng]
    days = local_days(now, ndays)
    now_ms = int(now * 1000)
    setup = setup_of(cfg)
    ids = _energy_series(conn)
    meter_doc = None
    if setup.meter and (setup.meter, "power") in ids:
        pts, used = summarise(
            conn, key_db, ids[(setup.meter, "power")], ids.get((setup.meter, "energy")), days, bucket_s, now_ms
        )
        meter_doc = {"device": setup.meter, "points": pts, "kwh": None if used is None else used / 1000}
    plugs = []
    for (device, metric), sid in sorted(ids.items()):
        if metric != "power" or device == setup.meter or ".nilm." in device:
            continue
        pts, used = summarise(conn, key_db, sid, ids.get((device, "energy")), days, bucket_s, now_ms)
        last = pts[-1][1] if pts else None
        name = device.removeprefix(f"{cfg.gateway.id}-")
        plugs.append(
            {
                "device": device,
                "name": name,
                "points": pts,
                "kwh": None if used is None else used / 1000,
                "last_w": last,
            }
        )
    trust = model_trust()
    plugged = set(setup.plug_appliance.values())
    estimates = []
    prefix = f"{setup.meter}.nilm."
    for (device, metric), sid in sorted(ids.items()):
        if metric != "power" or not device.startswith(prefix):
            continue
        appliance = device.removeprefix(prefix)
        t = trust.get(appliance)
        level = "untrusted" if t is None else t.level(setup.japanese_home)
        if appliance in plugged:
            level = "plug"
        pts, used = summarise(conn, key_db, sid, ids.get((device, "energy")), days, bucket_s, now_ms)
        estimates.append(
            {
                "appliance": appliance,
                "level": level,
                "f1": None if t is None else t.f1_unseen,
                "japan_caveat": bool(t and t.japan_caveat and setup.japanese_home),
                "kwh": None if level == "untrusted" or used is None else used / 1000,
                "points": [] if level == "untrusted" else pts,
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
    shown = [e for e in view["estimates"] if e["level"] not in ("untrusted", "plug")]
    if shown:
        charts.append(
            _chart(
                _("Estimated appliances"),
                "W",
                [(_appliance_label(_, e["appliance"]) + " " + _("(estimate)"), e["points"]) for e in shown],
                view["bucket_s"],
            )
        )
    for p in view["plugs"]:
        p["label"] = _appliance_label(_, p["name"])
    for e in view["estimates"]:
        e["label"] = _appliance_label(_, e["appliance"])
    return render(request, "energy.html", {**view, "charts": charts, "ranges": list(RANGES)})


routes: list[BaseRoute] = [Route("/energy", energy, methods=["GET"])]

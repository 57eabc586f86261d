"""A query :class:`~cloud_ingest.analysis.run.Result` drawn to a PNG with matplotlib's Agg canvas (the
``analyst`` extra; imported only when a plot is asked for).

The picture never lies about where the data is: rows whose fields are all empty (``fill(null)`` buckets) are
dropped, the time axis spans the data (not the asked window, which may reach years past the last point), series with
few points or gaps get markers, queries grouped in ``tz('Asia/Tokyo')`` get a JST axis, and a window with no data
raises :class:`NoData` instead of drawing an empty chart on a 1970 axis.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from cloud_ingest.analysis.registry import QUERIES
from cloud_ingest.analysis.run import NoData, QueryError, Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JST = ZoneInfo("Asia/Tokyo")
#: fewer points than this in a series (or any gap) and each point gets a marker: a sparse line is not a trend
SPARSE = 48


def plot(result: Result, path: Path, *, title: str | None = None) -> Path:
    """Draw a result to a PNG with matplotlib's Agg canvas (no display, no global pyplot state)."""
    fig = figure(result, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def local_time(result: Result) -> bool:
    """Whether the query groups by Japanese local time (its axis is then drawn in JST)."""
    return any("tz('Asia/Tokyo')" in s for s in QUERIES[result.name].statements)


def figure(result: Result, *, title: str | None = None) -> Figure:
    """The figure :func:`plot` saves (tests read its axes). Raises :class:`NoData` when nothing can be drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise QueryError("plotting needs matplotlib: pip install 'kyojo[analyst]'") from err
    q = QUERIES[result.name]
    numeric = [  # text columns (e.g. a route name) are shown by the table, not drawn
        f for f in result.fields if not any(isinstance(r[result.columns.index(f)], str) for r in result.rows)
    ]
    cols = [result.columns.index(f) for f in numeric]
    rows = result.rows if q.plot == "map" else [r for r in result.rows if any(r[c] is not None for c in cols)]
    if not rows:
        raise NoData(f"{result.name}: no data in this window, nothing to draw")
    shown = Result(result.name, result.columns, rows, result.tags, result.fields)
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title or q.title)
    series = shown.series()
    if q.plot == "map":
        _map(ax, shown, series)
    elif q.result_format == "table":
        _categories(ax, shown, series, numeric)
    else:
        _timeline(ax, shown, series, numeric, bars=q.plot == "bar", jst=local_time(result))
        ax.set_ylabel(_UNIT_LABELS.get(q.unit, q.unit if q.unit != "none" else ""))
        fig.autofmt_xdate()
    if series:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def _map(ax: Any, result: Result, series: dict[tuple[str, ...], list[list[Any]]]) -> None:
    for tags, rows in series.items():
        lat = [r[result.columns.index("latitude")] for r in rows]
        lon = [r[result.columns.index("longitude")] for r in rows]
        pts = [(x, y) for x, y in zip(lon, lat, strict=True) if x is not None and y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=_label(tags, ""))
    ax.ticklabel_format(useOffset=False)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")


def _categories(ax: Any, result: Result, series: dict[tuple[str, ...], list[list[Any]]], numeric: list[str]) -> None:
    """A table-shaped result (one row per tag set, e.g. energy by device) as bars per tag set, not over time."""
    labels = [_label(tags, "") for tags in series]
    for k, f in enumerate(numeric):
        col = result.columns.index(f)
        vals = [sum(float(r[col]) for r in rows if r[col] is not None) for rows in series.values()]
        width = 0.8 / len(numeric)
        ax.bar([i + k * width - 0.4 for i in range(len(labels))], vals, width=width, align="edge", label=f)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    q = QUERIES[result.name]
    ax.set_ylabel(_UNIT_LABELS.get(q.unit, q.unit if q.unit != "none" else ""))


def _timeline(
    ax: Any,
    result: Result,
    series: dict[tuple[str, ...], list[list[Any]]],
    numeric: list[str],
    *,
    bars: bool,
    jst: bool,
) -> None:
    n_bars = max(1, len(series) * len(numeric))
    step = _step_days(result)
    k = 0
    t_min, t_max = math.inf, -math.inf
    for tags, rows in series.items():
        times = [int(r[0]) / 86_400_000 for r in rows]  # matplotlib dates: days since 1970-01-01 (its epoch)
        for f in numeric:
            col = result.columns.index(f)
            vals = [float(r[col]) if r[col] is not None else math.nan for r in rows]
            label = _label(tags, f if len(numeric) > 1 else "")
            if bars and step is not None:
                width = step * 0.8 / n_bars
                ax.bar([t + width * k - step * 0.4 for t in times], vals, width=width, align="edge", label=label)
            else:
                sparse = len(vals) < SPARSE or any(math.isnan(v) for v in vals) or _has_gap(times, step)
                ax.plot(times, vals, label=label, marker="o" if sparse else None, markersize=3)
            k += 1
        t_min, t_max = min(t_min, *times), max(t_max, *times)
    pad = (step or 1 / 24) * 0.6
    ax.set_xlim(t_min - pad, t_max + pad)  # the data's span, never the asked window's
    ax.xaxis_date(tz=JST if jst else None)
    ax.set_xlabel("time (JST)" if jst else "time (UTC)")


def _has_gap(times: list[float], step: float | None) -> bool:
    return step is not None and any(b - a > 1.5 * step for a, b in itertools.pairwise(times))


_UNIT_LABELS = {"watt": "W", "watth": "Wh", "percent": "%", "pps": "points/s", "ms": "ms", "degree": "deg"}


def _step_days(result: Result) -> float | None:
    times = sorted({int(r[0]) for r in result.rows})
    if len(times) < 2:
        return 1 / 24 if times else None
    return min(b - a for a, b in itertools.pairwise(times)) / 86_400_000


def _label(tags: tuple[str, ...], name: str) -> str:
    text = " ".join(t[:12] for t in tags if t)
    return f"{name} {text}".strip() or "value"

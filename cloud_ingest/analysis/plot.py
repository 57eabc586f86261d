"""A query :class:`~cloud_ingest.analysis.run.Result` drawn to a PNG with matplotlib's Agg canvas (the
``analyst`` extra; imported only when a plot is asked for).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from cloud_ingest.analysis.registry import QUERIES
from cloud_ingest.analysis.run import QueryError, Result


def plot(result: Result, path: Path, *, title: str | None = None) -> Path:
    """Draw a result to a PNG with matplotlib's Agg canvas (no display, no global pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise QueryError("plotting needs matplotlib: pip install 'kyojo[analyst]'") from err
    q = QUERIES[result.name]
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title or q.title)
    series = result.series()
    if q.plot == "map":
        for tags, rows in series.items():
            lat = [r[result.columns.index("latitude")] for r in rows]
            lon = [r[result.columns.index("longitude")] for r in rows]
            pts = [(x, y) for x, y in zip(lon, lat, strict=True) if x is not None and y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=_label(tags, ""))
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel("longitude (deg)")
        ax.set_ylabel("latitude (deg)")
    else:
        numeric = [  # text columns (e.g. a route name) are shown by the table, not drawn
            f for f in result.fields if not any(isinstance(r[result.columns.index(f)], str) for r in result.rows)
        ]
        n_bars = max(1, len(series) * len(numeric))
        step = _step_days(result)
        k = 0
        for tags, rows in series.items():
            times = [int(r[0]) / 86_400_000 for r in rows]  # matplotlib dates: days since 1970-01-01 (its epoch)
            for f in numeric:
                col = result.columns.index(f)
                vals = [float(r[col]) if r[col] is not None else math.nan for r in rows]
                label = _label(tags, f if len(numeric) > 1 else "")
                if q.plot == "bar" and step is not None:
                    width = step * 0.8 / n_bars
                    ax.bar([t + width * k - step * 0.4 for t in times], vals, width=width, align="edge", label=label)
                else:
                    ax.plot(times, vals, label=label)
                k += 1
        ax.xaxis_date()
        ax.set_xlabel("time (UTC)")
        ax.set_ylabel(_UNIT_LABELS.get(q.unit, q.unit if q.unit != "none" else ""))
        fig.autofmt_xdate()
    if series:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


_UNIT_LABELS = {"watt": "W", "watth": "Wh", "percent": "%", "pps": "points/s", "ms": "ms", "degree": "deg"}


def _step_days(result: Result) -> float | None:
    times = sorted({int(r[0]) for r in result.rows})
    if len(times) < 2:
        return 1 / 24 if times else None
    return min(b - a for a, b in itertools.pairwise(times)) / 86_400_000


def _label(tags: tuple[str, ...], name: str) -> str:
    text = " ".join(t[:12] for t in tags if t)
    return f"{name} {text}".strip() or "value"

"""``kyojo query``: the command that runs, prints and plots a canned query (:func:`register` mounts it)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from cloud_ingest.analysis.plot import plot
from cloud_ingest.analysis.registry import QUERIES, bilingual
from cloud_ingest.analysis.run import (
    _UNITS,
    InfluxQL,
    NoData,
    QueryError,
    format_result,
    newest_time,
    render,
    run_query,
)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``now``, ``now-6h``/``-6h``/``6h`` (relative), an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(tz=UTC)
    t = text.strip()
    m = re.fullmatch(r"(?:now)?\s*-?\s*(\d+)\s*([smhdw])", t)
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if t == "now":
        return now
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as err:
        raise typer.BadParameter(f"not a time: {text!r} (use ISO 8601, 'now' or e.g. 6h, 7d)") from err
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _names_help() -> str:
    return "; ".join(sorted(QUERIES))


def register(app: typer.Typer) -> None:
    """Add ``query`` to a Typer app (the lead mounts it on the main ``kyojo`` CLI)."""

    @app.command("query")
    def query_cmd(
        name: Annotated[str, typer.Argument(help="canned query name, or 'list'")],
        since: Annotated[
            str | None,
            typer.Option(
                help="start: ISO time, 'now-24h' or '24h' (default: the last 24 h, or the 24 h up to the newest "
                "point when the last 24 h hold nothing)"
            ),
        ] = None,
        until: Annotated[str, typer.Option(help="end: ISO time or 'now'")] = "now",
        fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
        plot_path: Annotated[Path | None, typer.Option("--plot", help="also draw the result to this PNG")] = None,
        interval: Annotated[str | None, typer.Option(help="GROUP BY interval for $__interval (default: auto)")] = None,
        var: Annotated[list[str] | None, typer.Option("--var", help="dashboard variable, e.g. subject=s-1234")] = None,
        influx_url: Annotated[str, typer.Option(envvar="KYOJO_INFLUX_URL", help="InfluxDB URL")] = (
            "http://127.0.0.1:8086"
        ),
        influx_db: Annotated[str, typer.Option(envvar="KYOJO_INFLUX_DB", help="database")] = "kyojo",
        show: Annotated[bool, typer.Option("--show", help="print the rendered InfluxQL instead of running it")] = False,
    ) -> None:
        """Run one of the dashboards' canned queries (``kyojo query list`` shows them)."""
        if name == "list":
            for q in QUERIES.values():
                typer.echo(f"{q.name:<28} {bilingual(q.name)}")
            return
        if name not in QUERIES:
            typer.echo(f"unknown query {name!r}; known: {_names_help()}", err=True)
            raise typer.Exit(2)
        if fmt not in ("table", "csv", "json"):
            raise typer.BadParameter("--format must be table, csv or json")
        now = datetime.now(tz=UTC)
        start, end = parse_time(since or DEFAULT_SINCE, now), parse_time(until, now)
        if end <= start:
            raise typer.BadParameter("--until must be after --since")
        s_ms, e_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        variables = {}
        for item in var or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"--var {item!r}: expected name=value")
            variables[key] = value
        if show:
            for statement in QUERIES[name].statements:
                typer.echo(render(statement, s_ms, e_ms, interval, variables))
            return
        client = InfluxQL(influx_url, influx_db, token=os.environ.get("KYOJO_INFLUX_TOKEN"))
        try:
            result = run_query(client, name, s_ms, e_ms, interval=interval, variables=variables)
            if not result.rows and since is None and until == "now":
                newest = newest_time(client, name)
                if newest is not None and newest < s_ms:
                    e_ms, s_ms = newest + 1, newest + 1 - (e_ms - s_ms)
                    typer.echo(
                        f"no data in the last {DEFAULT_SINCE}; showing the {DEFAULT_SINCE} up to the newest point "
                        f"({_when(newest)}); use --since/--until for another window",
                        err=True,
                    )
                    result = run_query(client, name, s_ms, e_ms, interval=interval, variables=variables)
            if not result.rows:
                typer.echo(f"no data in this window ({_when(s_ms)} .. {_when(e_ms)})", err=True)
            if result.rows or fmt != "table":  # an empty CSV/JSON document is still a document for a script
                typer.echo(format_result(result, fmt))
            if plot_path is not None:
                plot(result, plot_path)
                typer.echo(f"plot: {plot_path}", err=True)
        except NoData as err:
            typer.echo(f"{err} ({_when(s_ms)} .. {_when(e_ms)}); no picture written", err=True)
            raise typer.Exit(1) from err
        except (QueryError, ValueError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(1) from err


#: the window ``kyojo query`` shows when ``--since`` is not given
DEFAULT_SINCE = "24h"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")

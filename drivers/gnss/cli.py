"""``kyojo gnss``: tools for GNSS receivers (mounted by ``kyojo.cli`` as the ``gnss`` group).

``kyojo gnss replay <capture>`` decodes a captured NMEA stream exactly as the serial driver would and prints
one JSON object per fix, then one summary line (``{"summary": {...}}``) with the counts of sentences, fixes
and rejects by cause.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from drivers.gnss.nmea import NmeaReader, strip_capture_header

app = typer.Typer(help="GNSS receiver tools (NMEA 0183).", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """GNSS receiver tools (NMEA 0183)."""


@app.command()
def replay(
    capture: Annotated[Path, typer.Argument(help="raw NMEA capture (gpsd-style '#' header lines are skipped)")],
    date_floor: Annotated[
        str, typer.Option(help="dates before this (YYYY-MM-DD) are GPS week-rollover artefacts: +1024 weeks")
    ] = "2000-01-01",
    accept_simulated: Annotated[
        bool, typer.Option(help="also report positions flagged as simulator/demo output (GGA quality 8)")
    ] = False,
    chunk: Annotated[int, typer.Option(min=1, help="bytes fed per step, as a serial read would")] = 4096,
) -> None:
    """Print one JSON object per fix in CAPTURE, then a summary line with counts of sentences, fixes, rejects."""
    try:
        floor = date.fromisoformat(date_floor)
    except ValueError as err:
        raise typer.BadParameter(f"--date-floor: {err}") from err
    try:
        data = strip_capture_header(capture.read_bytes())
    except OSError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    reader = NmeaReader(date_floor=floor, accept_simulated=accept_simulated)
    fixes = []
    for i in range(0, len(data), chunk):
        fixes.extend(reader.feed(data[i : i + chunk]))
    fixes.extend(reader.flush())
    for fix in fixes:
        typer.echo(json.dumps(fix.as_dict()))
    summary = reader.summary()
    summary["fixes"] = len(fixes)
    typer.echo(json.dumps({"summary": summary}))

"""``kyojo navi serve``: the garbage-collection navigator's public page (mounted lazily by :mod:`kyojo.cli`)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The garbage-collection navigator for residents.", no_args_is_help=True, add_completion=False)


@app.command("serve")
def serve(
    points: Annotated[Path, typer.Option("--points", help="the city's collection points (GeoJSON, with route)")],
    truck: Annotated[
        list[str],
        typer.Option("--truck", help="gateway id of a city truck whose pickups count (repeatable)"),
    ],
    influx_url: Annotated[
        str, typer.Option("--influx-url", envvar="KYOJO_INGEST_INFLUX_URL")
    ] = "http://127.0.0.1:8086",
    influx_db: Annotated[str, typer.Option("--influx-db", envvar="KYOJO_INGEST_INFLUX_DB")] = "kyojo",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8090,
    history_days: Annotated[int, typer.Option("--history-days", min=1, help="past days the ETA model learns")] = 28,
    dev_key: Annotated[bool, typer.Option("--dev-key", help="the development scope key (local demo only)")] = False,
    clock_start: Annotated[
        float | None,
        typer.Option("--clock-start", hidden=True, help="a scaled clock's time now (epoch s; kyojo demo's)"),
    ] = None,
    clock_speed: Annotated[float, typer.Option("--clock-speed", hidden=True, min=0.0)] = 1.0,
) -> None:
    """Serve the public navigator page, /api/status (JSON) and /api/route.geojson.

    The scope key (env KYOJO_INGEST_SCOPE_KEY, the ingesters') turns the trucks' gateway ids into the household
    tags their pickups carry; pickups of any other gateway are ignored. InfluxDB token: env KYOJO_INGEST_INFLUX_TOKEN.
    """
    import uvicorn

    from cloud_ingest.navi.app import create_app
    from cloud_ingest.navi.routes import RouteError, load_routes
    from cloud_ingest.navi.service import Navigator
    from cloud_ingest.navi.source import InfluxPickups, truck_tags
    from cloud_ingest.scope import Scope, parse_key

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    key_text = os.environ.get("KYOJO_INGEST_SCOPE_KEY")
    try:
        routes = load_routes(points)
        if key_text:
            key: bytes | None = parse_key(key_text)
        elif dev_key:
            key = None
        else:
            raise ValueError("set KYOJO_INGEST_SCOPE_KEY (the ingesters' scope key), or --dev-key for the local demo")
    except (RouteError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    tags = truck_tags(truck, Scope(key))
    source = InfluxPickups(
        influx_url,
        influx_db,
        tags,
        points=[p.id for r in routes.values() for p in r.points],
        token=os.environ.get("KYOJO_INGEST_INFLUX_TOKEN") or None,
    )
    now = time.time
    if clock_start is not None:  # kyojo demo: the trucks' gateways run on a scaled clock, and so must "today"
        t0, start = time.time(), clock_start

        def now() -> float:
            return start + (time.time() - t0) * clock_speed

    navigator = Navigator(routes, source, history_days=history_days, now=now)
    typer.echo(f"navigator on http://{host}:{port}/ ({len(routes)} route(s), {len(tags)} truck(s))", err=True)
    uvicorn.run(create_app(navigator), host=host, port=port, log_level="warning")

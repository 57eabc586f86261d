"""``kyojo ingest``: run the cloud ingester as a process.

``run`` prints one JSON line of stats to stdout every ``--stats-interval`` and a final one (``"final": true``)
on SIGTERM/SIGINT, after flushing and acknowledging what was written. Module-level imports stay light: the
main ``kyojo`` CLI imports this module at start-up.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Cloud ingester: MQTT (shared subscription) -> validation and consent -> InfluxDB.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """Cloud ingester commands (a callback keeps ``run`` a named subcommand)."""


def _emit(stats: dict[str, Any], **extra: Any) -> None:
    line = json.dumps({"ts": round(time.time(), 3), **stats, **extra}, separators=(",", ":"))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with IngestSettings keys")] = None,
    broker_host: Annotated[str | None, typer.Option(help="MQTT broker host")] = None,
    broker_port: Annotated[int | None, typer.Option(help="MQTT broker port")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle (enables TLS)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="client certificate (mTLS)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="client key (mTLS)")] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id; keep it stable across restarts")] = None,
    group: Annotated[str | None, typer.Option(help="shared subscription group")] = None,
    session_expiry: Annotated[int | None, typer.Option(help="MQTT session expiry, seconds")] = None,
    receive_maximum: Annotated[int | None, typer.Option(help="MQTT v5 receive maximum")] = None,
    mqtt_client: Annotated[
        str | None, typer.Option(help="data connection client: lean (default, faster) or paho (fallback)")
    ] = None,
    influx_api: Annotated[str | None, typer.Option(help="v1 or v2")] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB base URL")] = None,
    influx_db: Annotated[str | None, typer.Option(help="v1 database")] = None,
    influx_rp: Annotated[str | None, typer.Option(help="v1 retention policy")] = None,
    influx_org: Annotated[str | None, typer.Option(help="v2 organisation")] = None,
    influx_bucket: Annotated[str | None, typer.Option(help="v2 bucket")] = None,
    batch_points: Annotated[int | None, typer.Option(help="flush at this many points")] = None,
    max_batch_points: Annotated[int | None, typer.Option(help="at most this many points per POST")] = None,
    batch_interval: Annotated[float | None, typer.Option(help="flush after this many seconds")] = None,
    max_pending_points: Annotated[int | None, typer.Option(help="bound on points held in memory")] = None,
    stats_interval: Annotated[float | None, typer.Option(help="seconds between stats lines")] = None,
    log_level: Annotated[str, typer.Option(help="logging level (stderr)")] = "WARNING",
    self_stats: Annotated[
        bool, typer.Option("--self-stats/--no-self-stats", help="write own stats to InfluxDB (kyojo_ingest)")
    ] = True,
) -> None:
    """Run the ingester until SIGTERM/SIGINT.

    The v2 token comes from KYOJO_INGEST_INFLUX_TOKEN or the config file, never from the command line.
    """
    from pydantic import ValidationError

    from cloud_ingest.config import load_settings
    from cloud_ingest.ingester import Ingester

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(
            config,
            broker_host=broker_host,
            broker_port=broker_port,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_id=client_id,
            group=group,
            session_expiry=session_expiry,
            receive_maximum=receive_maximum,
            mqtt_client=mqtt_client,
            influx_api=influx_api,
            influx_url=influx_url,
            influx_db=influx_db,
            influx_rp=influx_rp,
            influx_org=influx_org,
            influx_bucket=influx_bucket,
            batch_points=batch_points,
            max_batch_points=max_batch_points,
            batch_interval=timedelta(seconds=batch_interval) if batch_interval is not None else None,
            max_pending_points=max_pending_points,
            stats_interval=timedelta(seconds=stats_interval) if stats_interval is not None else None,
        )
    except (ValidationError, FileNotFoundError) as err:
        typer.echo(f"invalid settings: {err}", err=True)
        raise typer.Exit(2) from err

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ingester = Ingester(settings)
    try:
        ingester.start()
    except ConnectionError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from err
    _emit(ingester.stats(), event="started")
    from provisioning import sdnotify

    sdnotify.ready(f"ingester {settings.client_id} subscribed")
    # the watchdog pings only while the process keeps reporting (the loop below runs)
    last_report = [time.monotonic()]
    dog = sdnotify.Watchdog(
        lambda: time.monotonic() - last_report[0] < 60 + 3 * settings.stats_interval.total_seconds()
    )
    dog.start()
    interval = settings.stats_interval.total_seconds()
    # the platform-health dashboard reads these: measurement kyojo_ingest (+ kyojo_ingest_rejects), through a
    # writer of its own (the data writer belongs to the writer thread)
    from cloud_ingest.ingester import make_writer
    from cloud_ingest.initdb import IngestStatsPoints
    from cloud_ingest.writer import WriteError

    own = IngestStatsPoints(settings.client_id) if self_stats else None
    own_writer = make_writer(settings) if self_stats else None
    while not stop.wait(interval):
        st = ingester.stats()
        _emit(st)
        last_report[0] = time.monotonic()
        if own is not None and own_writer is not None:
            try:
                own_writer.write("\n".join(own.lines(st, int(time.time() * 1000))).encode())
            except WriteError as err:
                logging.getLogger(__name__).warning("could not write own stats: %s", err)
    if own_writer is not None:
        own_writer.close()
    sdnotify.stopping()
    dog.stop()
    ingester.stop()
    _emit(ingester.stats(), final=True)


@app.command("show-config")
def show_config(
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with IngestSettings keys")] = None,
) -> None:
    """Print the effective settings (file < environment) as JSON, secrets masked."""
    from cloud_ingest.config import load_settings

    settings = load_settings(config)
    typer.echo(settings.model_dump_json(indent=2))


def main() -> None:
    """Entry point of ``python -m cloud_ingest``."""
    app()

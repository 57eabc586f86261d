"""``kyojo ocpp``: run the local central system alone (to test a charger on site) and list its sessions.

The lead mounts :data:`app` as ``kyojo ocpp``::

    kyojo ocpp serve --listen 0.0.0.0:9000 --db ocpp.db [--charge-point ID ...] [--tag TAG ...]
    kyojo ocpp sessions --db ocpp.db --json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from drivers.base import reading_json

app = typer.Typer(help="OCPP 1.6J chargers: the gateway's local central system.", no_args_is_help=True)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - chargers are on the LAN


@app.command()
def serve(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on")] = "0.0.0.0:9000",
    db: Annotated[Path, typer.Option(help="sessions SQLite file")] = Path("ocpp-sessions.db"),
    subject: Annotated[str, typer.Option(help="household or site of the readings")] = "site",
    charge_point: Annotated[list[str] | None, typer.Option(help="allow-list (repeat); default: any")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="accepted RFID idTags (repeat); default: any")] = None,
    heartbeat: Annotated[int, typer.Option(help="heartbeat interval, s")] = 300,
    readings: Annotated[bool, typer.Option(help="print each Reading as a JSON line")] = True,
) -> None:
    """Run the central system alone (no agent) to test a charger on site; Ctrl-C stops it."""
    from drivers.ocpp.server import CentralSystem
    from drivers.ocpp.sessions import SessionStore

    host, port = parse_listen(listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        with SessionStore(db) as store:
            central = CentralSystem(
                store,
                subject=subject,
                allow=frozenset(charge_point) if charge_point else None,
                tags=frozenset(tag) if tag else None,
                heartbeat_s=heartbeat,
            )
            bound = await central.start(host, port)
            typer.echo(f"OCPP 1.6J central system on ws://{host}:{bound}/ocpp/<charge-point-id>", err=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                while not stop.is_set():
                    getter = asyncio.ensure_future(central.readings.get())
                    stopper = asyncio.ensure_future(stop.wait())
                    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    for fut in (getter, stopper):
                        if fut not in done:
                            fut.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await fut
                    if getter in done and readings:
                        typer.echo(json.dumps(reading_json(getter.result())))
            finally:
                await central.close()
                typer.echo(json.dumps(central.health(), default=str), err=True)

    asyncio.run(run())


@app.command()
def sessions(
    db: Annotated[Path, typer.Option(help="sessions SQLite file")] = Path("ocpp-sessions.db"),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array")] = False,
    charge_point: Annotated[str | None, typer.Option(help="only this charge point")] = None,
) -> None:
    """List charging sessions (transactions) recorded by the central system."""
    from drivers.ocpp.sessions import SessionStore

    if not db.exists():
        raise typer.BadParameter(f"{db}: no such sessions file")
    with SessionStore(db) as store:
        rows = store.sessions(charge_point)
    if as_json:
        typer.echo(json.dumps([s.as_json() for s in rows], indent=2))
        return
    for s in rows:
        energy = "running" if s.stop_ts is None else f"{(s.energy_wh or 0) / 1000:.3f} kWh"
        power = f"{s.max_power_w / 1000:.1f} kW max" if s.max_power_w is not None else "-"
        typer.echo(f"{s.id:>6} {s.charge_point}/{s.connector} tag={s.id_tag} {energy} {power}")

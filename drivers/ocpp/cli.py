"""``kyojo ocpp``: run the local central system alone (to test a charger on site) and list its sessions.

The lead mounts :data:`app` as ``kyojo ocpp``::

    kyojo ocpp serve --listen 192.168.1.10:9000 --db ocpp.db --charge-point ID --key-file ID=FILE [--tag TAG ...]
    kyojo ocpp sessions --db ocpp.db --json

``serve`` is as strict as the agent: only the listed charge points, each with its AuthorizationKey (security
profile 1) unless ``--security-profile 0``; a refused charger's id is in the log (to add it on purpose).
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

from kyojo.contract.vocab import reading_json

app = typer.Typer(help="OCPP 1.6J chargers: the gateway's local central system.", no_args_is_help=True)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6) -> (host, port). The host is required: an empty one would listen
    on every interface, which must be asked for by name (``0.0.0.0:9000``)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host.strip("[]"):
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_key_files(values: list[str], allowed: list[str]) -> dict[str, str]:
    """``ID=FILE`` options -> charge point id -> AuthorizationKey (read from the file)."""
    from drivers.ocpp.device import OcppConfigError, read_key_file

    keys: dict[str, str] = {}
    for item in values:
        cp, sep, path = item.partition("=")
        if not sep or not path or cp not in allowed:
            raise typer.BadParameter(f"expected ID=FILE with ID one of --charge-point, got {item!r}")
        try:
            keys[cp] = read_key_file(Path(path))
        except OcppConfigError as err:
            raise typer.BadParameter(str(err)) from None
    return keys


@app.command()
def serve(
    charge_point: Annotated[list[str], typer.Option(help="charge point id allowed to connect (repeat)")],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (the gateway's LAN address)")] = "127.0.0.1:9000",
    key_file: Annotated[
        list[str] | None, typer.Option(help="ID=FILE: the AuthorizationKey of a charge point (repeat)")
    ] = None,
    security_profile: Annotated[int, typer.Option(min=0, max=1, help="1: HTTP Basic auth; 0: none")] = 1,
    db: Annotated[Path, typer.Option(help="sessions SQLite file")] = Path("ocpp-sessions.db"),
    subject: Annotated[str, typer.Option(help="household or site of the readings")] = "site",
    tag: Annotated[list[str] | None, typer.Option(help="accepted RFID idTags (repeat); default: any")] = None,
    heartbeat: Annotated[int, typer.Option(help="heartbeat interval, s")] = 300,
    readings: Annotated[bool, typer.Option(help="print each Reading as a JSON line")] = True,
) -> None:
    """Run the central system alone (no agent) to test a charger on site; Ctrl-C stops it."""
    from drivers.ocpp.device import valid_charge_point_id
    from drivers.ocpp.server import CentralSystem
    from drivers.ocpp.sessions import SessionStore

    host, port = parse_listen(listen)
    bad = [cp for cp in charge_point if not valid_charge_point_id(cp)]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r}: a charge point id is 1-64 printable characters without '/' or ':'")
    keys = parse_key_files(key_file or [], charge_point)
    missing = sorted(set(charge_point) - set(keys))
    if security_profile >= 1 and missing:
        raise typer.BadParameter(f"--key-file missing for {', '.join(missing)} (or --security-profile 0)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        with SessionStore(db) as store:
            central = CentralSystem(
                store,
                subject=subject,
                allow=frozenset(charge_point),
                credentials=keys,
                security_profile=security_profile,
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

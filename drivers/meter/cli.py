"""``kyojo decode echonet <hex>``: decode an ECHONET Lite frame (or a whole SKSTACK ``ERXUDP`` line)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from drivers.meter.echonet import decode_frame
from drivers.meter.skstack import RxUdp, parse_line
from drivers.meter.smartmeter import MeterDecoder, describe
from kyojo.contract.vocab import ParseError, reading_json


def decode_echonet(
    frame_hex: Annotated[str, typer.Argument(help="frame as hex (spaces allowed), or an ERXUDP line")],
    device: Annotated[str, typer.Option(help="device id for the readings")] = "meter",
    unit_kwh: Annotated[float | None, typer.Option(help="0xE1 unit in kWh, if the frame does not carry it")] = None,
    coefficient: Annotated[int, typer.Option(help="0xD3 coefficient, if the frame does not carry it")] = 1,
    ts: Annotated[float | None, typer.Option(help="reception time (POSIX s); default now")] = None,
) -> None:
    """Decode one ECHONET Lite frame; print the frame, its smart-meter properties and readings as JSON."""
    try:
        text = frame_hex.strip()
        if text.startswith("ERXUDP"):
            msg = parse_line(text)
            assert isinstance(msg, RxUdp)
            data = msg.data
        else:
            try:
                data = bytes.fromhex(text.replace(" ", "").replace(":", ""))
            except ValueError:
                raise ParseError("bad_hex", raw=text) from None
        frame = decode_frame(data)
        decoder = MeterDecoder(device, "", unit_kwh=unit_kwh, coefficient=coefficient, export=True)
        readings = decoder.readings(frame, time.time() if ts is None else ts)
        out = {"frame": describe(frame), "readings": [reading_json(r) for r in readings]}
    except ParseError as err:
        typer.echo(json.dumps({"error": {"reason": err.reason, "detail": err.detail}}))
        raise typer.Exit(1) from None
    typer.echo(json.dumps(out, indent=2))


def register(decode_app: typer.Typer) -> None:
    """Add ``echonet`` to the ``kyojo decode`` group."""
    decode_app.command("echonet")(decode_echonet)

"""``kyojo demo``: the command that runs :func:`kyojo.devstack.demo.run_demo` (mounted by :mod:`kyojo.cli`)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from kyojo.contract.vocab import KyojoError

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("demo")
def demo(
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds (default: Ctrl-C)")] = None,
    speed: Annotated[float, typer.Option(help="simulated seconds per real second")] = 60.0,
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its data")] = Path(".kyojo/demo"),
    verbose: bool = False,
) -> None:
    """Start broker, database, three gateways with simulated devices and the city's services; show live progress."""
    from kyojo.devstack.demo import run_demo

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        summary = run_demo(workdir=workdir, duration=duration, speed=speed)
    except KyojoError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(json.dumps(summary))

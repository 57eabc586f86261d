"""``kyojo models eval watchover``: the watch-over protocol (models/watchover/MODEL_CARD.md) on files of the
shared NILM format; one JSON object on stdout, a line per house on stderr as it goes (a year of one house takes
some seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from models.nilm.data import NilmDataError
from models.watchover.evaluate import DEFAULT_TZ, evaluate
from models.watchover.rhythm import Params


def register(eval_app: typer.Typer) -> None:
    """Add the ``watchover`` command to ``eval_app`` (mounted as ``kyojo models eval``)."""

    @eval_app.command("watchover")
    def watchover(
        data: Annotated[
            list[Path], typer.Option(help="a directory of, or files in, the shared NILM format (repeatable)")
        ],
        tz: Annotated[str, typer.Option(help="the households' local time zone")] = DEFAULT_TZ,
        learn_days: Annotated[int, typer.Option(min=1, help="days of profile before anything is judged")] = 14,
        calibrate_days: Annotated[int, typer.Option(min=1, help="days more to set the home's threshold")] = 14,
        quantile: Annotated[float, typer.Option(min=0.5, max=1.0, help="of the home's daily maxima")] = 0.97,
    ) -> None:
        """Per house: false alerts per 30 normal days, and detection delays of absences cut in at 00:00 and 08:00."""
        params = Params(learn_days=learn_days, calibrate_days=calibrate_days, quantile=quantile)
        try:
            result = evaluate(data, tz, params, progress=lambda line: typer.echo(line, err=True))
        except (OSError, NilmDataError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err
        typer.echo(json.dumps(result, ensure_ascii=False))

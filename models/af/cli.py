"""``kyojo models eval af``: the evaluation protocol on a directory of ``afdb_*.csv`` files.

The lead mounts it with :func:`register` on the ``eval`` Typer app; it prints one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from models.af.model import DEFAULT_MODEL_PATH


def register(eval_app: typer.Typer) -> None:
    """Add the ``af`` command to ``eval_app``."""

    @eval_app.command("af")
    def af(
        data: Annotated[
            Path,
            typer.Option(
                "--data", help="Directory of afdb_*.csv files in the shared RR format", exists=True, file_okay=False
            ),
        ],
        model: Annotated[
            Path, typer.Option("--model", help="ONNX model to evaluate", exists=True, dir_okay=False)
        ] = DEFAULT_MODEL_PATH,
        per_record: Annotated[bool, typer.Option("--per-record", help="Also report each record")] = False,
    ) -> None:
        """Window-level AF detection metrics: sensitivity, specificity, ppv, f1, auroc, windows, af_windows."""
        from models.af.data import RecordFormatError, load_dir
        from models.af.evaluate import evaluate
        from models.af.model import AfModel, ModelError

        try:
            records = load_dir(data)
            af_model = AfModel(model)
        except (FileNotFoundError, RecordFormatError, ModelError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err
        result = evaluate(records, af_model)
        typer.echo(json.dumps(result.as_dict(per_record=per_record)))

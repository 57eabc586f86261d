"""``kyojo models eval nilm``: score the committed NILM models and three baselines on a file of the shared format.

The lead mounts it with ``register(eval_app)``. Output (stdout) is one JSON object::

    {"appliances": {name: {"mae_w", "sae", "nde", "f1_on", "shown_fraction", "mae_w_shown",
                           "always_off_mae_w_shown"}},
     "baselines": {"always_off": {...}, "mean": {...}, "co": {...}},
     "skipped": [names without a ground-truth column in the file]}

Any file of the shared format works: appliances without a column are skipped (and named in ``skipped``), extra
columns (``shower_w``, ``fridge_w``) are ignored. ``shown_fraction`` is the share of scored minutes where the gated
output (confidence >= :data:`models.nilm.metrics.SHOW_CONFIDENCE`) shows a number, ``mae_w_shown`` the model's MAE
over those minutes and ``always_off_mae_w_shown`` always-off's over the same minutes; as on the gateway, only a
model whose manifest entry has ``confidence_release`` shows numbers on confidence (the others need a plug
calibration, which a file cannot give).

plus, with ``--plugs a,b``, ``"plug_assisted": {name: {...}}`` for the other appliances when ``a`` and ``b`` are
treated as plugged (their true columns play the plug readings and are subtracted from the mains). Baseline
parameters (training means, CO states) come from the models' manifest, i.e. from the models' own training data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from models.nilm.data import APPLIANCES, NilmDataError, load_csv
from models.nilm.metrics import evaluate
from models.nilm.model import MODEL_DIR, NilmModelError, NilmModels, residual_mains


def run_eval(data: Path, models_dir: Path = MODEL_DIR, plugs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The evaluation the command prints, as a dict."""
    series = load_csv(data)
    present = [a for a in APPLIANCES if a in series.appliances]
    if not present:
        raise NilmDataError(f"{data}: no ground-truth column for any of {', '.join(APPLIANCES)}")
    absent_plugs = [p for p in plugs if p not in series.appliances]
    if absent_plugs:
        raise NilmDataError(f"{data}: no column to play the plug of {', '.join(absent_plugs)}")
    models = NilmModels(models_dir, present)
    both = models.predict_series_with_confidence(series.mains)
    result = evaluate(
        series,
        {a: v[0] for a, v in both.items()},
        models.manifest["baselines"],
        # the release rule of the gateway: confidence counts only where the manifest allows it (models.nilm.gate)
        confidence={a: v[1] if models.models[a].confidence_release else np.zeros_like(v[1]) for a, v in both.items()},
    )
    result["skipped"] = [a for a in APPLIANCES if a not in present]
    if plugs:
        rest = [a for a in present if a not in plugs]
        resid = residual_mains(series.mains, [series.appliances[p] for p in plugs])
        assisted = evaluate(series, models.predict_series(resid, rest), models.manifest["baselines"])
        result["plug_assisted"] = assisted["appliances"]
    return result


def register(eval_app: typer.Typer) -> None:
    """Add the ``nilm`` command to ``eval_app`` (mounted as ``kyojo models eval``)."""

    @eval_app.command("nilm")
    def nilm(
        data: Annotated[Path, typer.Option(help="CSV(.gz) in the shared NILM format, with appliance columns")],
        models_dir: Annotated[Path, typer.Option("--models", help="model directory")] = MODEL_DIR,
        plugs: Annotated[
            str, typer.Option(help="comma-separated appliances to treat as plugged (truth column = plug)")
        ] = "",
    ) -> None:
        """Per-appliance MAE (W), SAE, NDE and on-state F1 of the NILM models and of three baselines (JSON)."""
        plugged = tuple(p.strip() for p in plugs.split(",") if p.strip())
        unknown = [p for p in plugged if p not in APPLIANCES]
        if unknown:
            raise typer.BadParameter(f"unknown appliance(s) {unknown}; expected some of {list(APPLIANCES)}")
        try:
            result = run_eval(data, models_dir, plugged)
        except (OSError, NilmDataError, NilmModelError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err
        if result["skipped"]:
            typer.echo(f"skipped (no column in {data.name}): {', '.join(result['skipped'])}", err=True)
        typer.echo(json.dumps(result, sort_keys=False))

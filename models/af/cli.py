"""``kyojo models eval af``: the evaluation protocol on a directory of ``afdb_*.csv`` files.

The lead mounts it with :func:`register` on the ``eval`` Typer app; it prints one JSON object. The window keys
(``sensitivity``, ``specificity``, ``ppv``, ``f1``, ``auroc``, ``windows``, ``af_windows``, ``undecided_windows``,
``threshold``, ``model_version``) are product interface: options only add keys. Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from models.af.model import DEFAULT_MODEL_PATH


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
        episodes: Annotated[
            bool,
            typer.Option(
                "--episodes",
                help="Also the person-level figures: episode_sensitivity (AF episodes >= 30 min that raised an "
                "alert), median_detection_delay_s, false_alerts_per_person_day (non-AF time)",
            ),
        ] = False,
        loro: Annotated[
            bool,
            typer.Option(
                "--loro",
                help="Leave-one-record-out: refit the classifier per held-out record and choose its threshold and "
                "alert rule on the others (needs the train extra); implies --episodes",
            ),
        ] = False,
        inject: Annotated[
            str,
            typer.Option(
                "--inject",
                help="Faults injected into the evaluated records, e.g. 'missed=0.03,spurious=0.03' (fractions of "
                "beats; also nonphysio, gaps_per_hour, gap_s)",
            ),
        ] = "",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the injected faults")] = 0,
    ) -> None:
        """Window-level AF detection metrics: sensitivity, specificity, ppv, f1, auroc, windows, af_windows; with
        --episodes, also the person-level alert figures."""
        from models.af.artefacts import Injection
        from models.af.artefacts import inject as inject_faults
        from models.af.data import RecordFormatError, load_dir
        from models.af.evaluate import evaluate, evaluate_episodes
        from models.af.model import AfModel, ModelError

        try:
            records = load_dir(data)
            af_model = AfModel(model)
            faults = Injection.parse(inject) if inject else None
        except (FileNotFoundError, RecordFormatError, ModelError, ValueError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err
        if loro:
            try:
                import sklearn  # noqa: F401
            except ImportError as err:
                typer.echo(
                    "error: --loro refits the model: install the train extra (pip install -e '.[train]')", err=True
                )
                raise typer.Exit(2) from err
            from models.af import loro as loro_mod

            report = loro_mod.run(records, faults, seed, progress=_progress)
            if not per_record:
                report.pop("per_record")
            report["model_version"] = f"loro: refitted per held-out record (shipped: {af_model.version})"
            typer.echo(json.dumps(report))
            return
        tested = [inject_faults(r, faults, seed) for r in records] if faults is not None else records
        _progress(f"af eval: {len(records)} records, windows")
        result = evaluate(tested, af_model)
        out = result.as_dict(per_record=per_record)
        if faults is not None:
            out["injected"] = faults.label()
        if episodes:
            ep = evaluate_episodes(tested, af_model, truths=records, progress=_progress)
            per = ep.pop("per_record")
            out.update(ep)
            if per_record:
                rec_out = out["per_record"]
                assert isinstance(rec_out, dict)
                assert isinstance(per, dict)
                for name, figs in per.items():
                    rec_out[name] = {**rec_out.get(name, {}), **figs}
        typer.echo(json.dumps(out))

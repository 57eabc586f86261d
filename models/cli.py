"""``kyojo models``: evaluate the on-gateway models on data in the shared formats."""

from __future__ import annotations

import typer

from models.af.cli import register as register_af
from models.nilm.cli import register as register_nilm
from models.watchover.cli import register as register_watchover

app = typer.Typer(help="On-gateway models: evaluation with the protocols of their model cards.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model; prints one JSON object.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
register_af(eval_app)
register_nilm(eval_app)
register_watchover(eval_app)

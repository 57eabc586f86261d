"""``kyojo``: one command line for installers, households, operators and analysts.

Sub-command groups import their heavy dependencies only when they run, so ``kyojo --help`` is instant on a Pi.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cloud_ingest.cli import app as ingest_app
from drivers.base import KyojoError

app = typer.Typer(help="Kyojo: opt-in edge data platform.", no_args_is_help=True, add_completion=False)
agent_app = typer.Typer(help="Run and inspect the gateway agent.", no_args_is_help=True)
consent_app = typer.Typer(help="Give, withdraw and list consents (household).", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(consent_app, name="consent")
app.add_typer(ingest_app, name="ingest")

DEFAULT_CONFIG = Path(os.environ.get("KYOJO_CONFIG", "/etc/kyojo/agent.toml"))
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway config (TOML); env KYOJO_CONFIG")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


def _load(config: Path):  # type: ignore[no-untyped-def]
    from edge_agent.config import load_config

    try:
        return load_config(config)
    except KyojoError as err:
        raise _fail(err) from err


@agent_app.command("run")
def agent_run(config: ConfigOpt = DEFAULT_CONFIG, verbose: bool = False) -> None:
    """Run the gateway agent until SIGTERM or Ctrl-C."""
    from edge_agent.agent import Agent

    _setup_logging(verbose)
    cfg = _load(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    asyncio.run(main())


@agent_app.command("status")
def agent_status(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the agent's last status (JSON): readings, queue depth, broker connection, errors."""
    cfg = _load(config)
    try:
        typer.echo(cfg.status_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise _fail(KyojoError(f"no status at {cfg.status_path}: has the agent run?")) from err


def _lang(lang: str | None) -> str:
    value = lang or os.environ.get("LC_ALL") or os.environ.get("LANG") or "en"
    return "ja" if value.lower().startswith("ja") else "en"


LangOpt = Annotated[str | None, typer.Option("--lang", help="en or ja (default: from LANG)")]


@consent_app.command("catalog")
def consent_catalog(lang: LangOpt = None) -> None:
    """List the purposes a household can consent to."""
    from edge_agent.consent import catalog

    lg = _lang(lang)
    for p in catalog().values():
        cats = ", ".join(sorted(p.categories))
        typer.echo(f"{p.name}: {p.title[lg]} [{cats}; >= {p.min_window_s}s windows; {p.controller}]")
        typer.echo(f"    {p.notice[lg]}")


@consent_app.command("grant")
def consent_grant(
    purpose: str,
    subject: Annotated[str, typer.Option("--person", "--subject", help="person or household id")],
    config: ConfigOpt = DEFAULT_CONFIG,
    lang: LangOpt = None,
) -> None:
    """Give consent for a person (or the household) to one purpose. Asked once, reused by every device."""
    from edge_agent import consent
    from edge_agent.db import connect

    cfg = _load(config)
    conn = connect(cfg.db_path)
    try:
        c = consent.open_store(cfg, conn).grant(purpose, subject, lang=_lang(lang))
    except KyojoError as err:
        raise _fail(err) from err
    finally:
        conn.close()
    lg = _lang(lang)
    typer.echo(f"{c.id}: {subject} -> {purpose} ({consent.catalog()[purpose].title[lg]}), active")


@consent_app.command("withdraw")
def consent_withdraw(consent_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Withdraw a consent: nothing more is released for it and what is queued is dropped."""
    from edge_agent import consent
    from edge_agent.db import connect

    cfg = _load(config)
    conn = connect(cfg.db_path)
    try:
        dropped = consent.open_store(cfg, conn).withdraw(consent_id)
    except KyojoError as err:
        raise _fail(err) from err
    finally:
        conn.close()
    typer.echo(f"{consent_id}: withdrawn; {dropped} queued message(s) dropped")


@consent_app.command("list")
def consent_list(config: ConfigOpt = DEFAULT_CONFIG, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the consents on this gateway."""
    from edge_agent import consent
    from edge_agent.db import connect

    cfg = _load(config)
    conn = connect(cfg.db_path)
    try:
        rows = consent.list_consents(conn)
    finally:
        conn.close()

    def when(ms: int | None) -> str | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()

    docs = [
        {
            "id": c.id,
            "subject": c.subject,
            "purpose": c.purpose,
            "categories": sorted(c.categories),
            "status": c.status.value,
            "given_at": when(c.given_at),
            "expires_at": when(c.expires_at),
            "withdrawn_at": when(c.withdrawn_at),
        }
        for c in rows
    ]
    if as_json:
        typer.echo(json.dumps(docs, ensure_ascii=False))
        return
    for d in docs:
        typer.echo(f"{d['id']}  {d['status']:<9} {d['subject']:<12} {d['purpose']:<20} since {d['given_at']}")


@app.command("demo")
def demo(
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds (default: Ctrl-C)")] = None,
    speed: Annotated[float, typer.Option(help="simulated seconds per real second")] = 60.0,
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its data")] = Path(".kyojo/demo"),
    verbose: bool = False,
) -> None:
    """Start broker, database, two gateways with simulated devices and the ingester; show live progress."""
    from edge_agent.demo import run_demo

    _setup_logging(verbose)
    try:
        summary = run_demo(workdir=workdir, duration=duration, speed=speed)
    except KyojoError as err:
        raise _fail(err) from err
    typer.echo(json.dumps(summary))


def main() -> None:
    app()

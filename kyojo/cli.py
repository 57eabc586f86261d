"""``kyojo``: the root command. It mounts each part's sub-app lazily.

``kyojo --help`` lists the commands from the static table :data:`COMMANDS` without importing any part, and a
command's module is imported only when that command runs: ``kyojo consent list`` does not import the ingester,
and ``kyojo ingest run`` does not import the gateway's models. Each entry names a *mount*: a function in this
module that returns a Typer app holding the command under the same name, so the command (its options, help and
sub-commands) is the one its part defines, unchanged.

Adding a command: a row in :data:`COMMANDS`, with ``_sub(<module with a Typer app>, <name>)`` as its mount or a
mount of its own below (``tests/agent/test_cli.py`` checks that the table's help is the command's own).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from typer._click import Command


def _edge() -> typer.Typer:
    """The gateway's commands (agent, consent, audit, decode, alerts, doctor; ``pair`` is :func:`_pair`)."""
    from edge_agent.cli import app

    return app


def _pair() -> typer.Typer:
    """``kyojo pair`` on its own: it imports bleak, which no other gateway command (``decode`` above all) needs."""
    from edge_agent.cli import pair_app

    app = typer.Typer()
    app.add_typer(pair_app(), name="pair", help=COMMANDS["pair"][1])
    return app


def _demo() -> typer.Typer:
    """The developer's stack (``kyojo/devstack/``): it starts every part, so it lives outside all of them."""
    from kyojo.devstack.cli import app

    return app


def _query() -> typer.Typer:
    from cloud_ingest import analyst

    app = typer.Typer()
    analyst.register(app)
    return app


def _models() -> typer.Typer:
    from models.cli import app as models_app

    app = typer.Typer()
    app.add_typer(models_app, name="models")
    return app


def _ingest() -> typer.Typer:
    from cloud_ingest import initdb
    from cloud_ingest.cli import app as ingest_app

    if not any(c.name == "init-db" for c in ingest_app.registered_commands):
        initdb.register(ingest_app)
    app = typer.Typer()
    app.add_typer(ingest_app, name="ingest")
    return app


def _sub(module: str, name: str) -> Callable[[], typer.Typer]:
    """The mount of a part whose commands are the Typer app ``app`` of ``module``, under ``name``."""

    def mount() -> typer.Typer:
        app = typer.Typer()
        app.add_typer(importlib.import_module(module).app, name=name, help=COMMANDS[name][1])
        return app

    mount.__doc__ = f"``kyojo {name}``: ``{module}``."
    return mount


#: command -> (mount, short help shown by ``kyojo --help``), in the order ``--help`` lists them.
COMMANDS: dict[str, tuple[Callable[[], typer.Typer], str]] = {
    "query": (_query, "Run one of the dashboards' canned queries ('kyojo query list' shows them)."),
    "doctor": (
        _edge,
        "One-screen acceptance summary for the installer: clock, disk, broker, certificate, renewal, serial, "
        "Bluetooth.",
    ),
    "demo": (
        _demo,
        "Start broker, database, three gateways with simulated devices and the city's services; show live progress.",
    ),
    "agent": (_edge, "Run and inspect the gateway agent."),
    "consent": (_edge, "Give, withdraw and list consents (household)."),
    "audit": (_edge, "See and check everything that left the home (household)."),
    "decode": (_edge, "Decode captured payloads, as a device sends them (installers)."),
    "alerts": (_edge, "Health alerts on this gateway (household)."),
    "pair": (_pair, "Pair BLE health devices and assign them to a person (household)."),
    "web": (_sub("edge_agent.web.cli", "web"), "The household web page on the gateway."),
    "gnss": (_sub("drivers.gnss.cli", "gnss"), "GNSS receivers on garbage trucks (replay captures)."),
    "provision": (_sub("provisioning.cli", "provision"), "City CA, gateway identities, broker config (installers)."),
    "models": (_models, "On-gateway models: evaluation with the protocols of their model cards."),
    "plugs": (
        _sub("drivers.plugs.cli", "plugs"),
        "Smart plugs on the home's LAN broker: what was heard, the LAN broker's config.",
    ),
    "ocpp": (_sub("drivers.ocpp.cli", "ocpp"), "EV chargers: the local OCPP 1.6J central system (installers)."),
    "navi": (
        _sub("cloud_ingest.navi.cli", "navi"),
        "The garbage-collection navigator for residents (public page and JSON, cloud side).",
    ),
    "ingest": (_ingest, "Cloud ingester: MQTT (shared subscription) -> validation and consent -> InfluxDB."),
    "trade": (
        _sub("edge_agent.trading_cli", "trade"),
        "Neighbour energy trading: join, offer, bid, report the meter, see my entries (household).",
    ),
    "ledger": (
        _sub("cloud_ingest.ledger.cli", "ledger"),
        "The city's energy-trading ledger: run the matcher, export, verify.",
    ),
}


_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`~?(?:[^`<]*<)?([^`>]+)>?`")


def plain(text: str | None) -> str | None:
    """Docstrings are reStructuredText (for the docs); a terminal shows ``x`` as 'x' and :func:`x` as x."""
    if not text:
        return text
    return _LITERAL.sub(r"'\1'", _ROLE.sub(r"\1", text))


def _plain_tree(cmd: Any) -> None:
    """Strip the reST markup from a command's help, its options' help and its sub-commands' (once)."""
    if getattr(cmd, "_kyojo_plain", False):
        return
    cmd.help, cmd.short_help = plain(cmd.help), plain(cmd.short_help)
    for param in getattr(cmd, "params", ()):
        if getattr(param, "help", None):
            param.help = plain(param.help)
    for sub in getattr(cmd, "commands", {}).values():
        _plain_tree(sub)
    cmd._kyojo_plain = True


class LazyGroup(TyperGroup):
    """A group whose commands come from :data:`COMMANDS`, imported only when one is resolved to run.

    While the group's own help is being written, commands are stand-ins carrying the table's help, so listing
    them imports nothing.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        mount, short_help = entry
        if self._listing:
            return TyperCommand(name=cmd_name, help=short_help)
        cmd = typer.main.get_group(mount()).get_command(ctx, cmd_name)
        if cmd is not None:
            _plain_tree(cmd)
            self.commands[cmd_name] = cmd
        return cmd

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(cls=LazyGroup, help="Kyojo: opt-in edge data platform.", no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Kyojo: opt-in edge data platform."""


def main() -> None:
    app()

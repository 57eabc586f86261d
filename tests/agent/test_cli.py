"""The household's and installer's commands, through the real ``kyojo`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge_agent.db import connect
from kyojo.cli import COMMANDS, app

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-9"\ndata_dir = "data"\n', encoding="utf-8")
    return path


def kyojo(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_catalog_in_english_and_japanese() -> None:
    code, out = kyojo("consent", "catalog", "--lang", "en")
    assert code == 0
    assert "preventive-care: Preventive-care alerts [health" in out
    code, out = kyojo("consent", "catalog", "--lang", "ja")
    assert code == 0
    assert "予防医療アラート" in out


def test_grant_list_withdraw_roundtrip(config: Path) -> None:
    code, out = kyojo("consent", "grant", "preventive-care", "--person", "p1", "-c", str(config))
    assert code == 0, out
    cid = out.split(":")[0]
    code, out = kyojo("consent", "grant", "preventive-care", "--person", "p1", "-c", str(config))
    assert out.split(":")[0] == cid  # once-only: asking again reuses the consent
    code, out = kyojo("consent", "list", "--json", "-c", str(config))
    docs = json.loads(out)
    assert [(d["id"], d["status"], d["categories"]) for d in docs] == [(cid, "active", ["health"])]
    code, out = kyojo("consent", "withdraw", cid, "-c", str(config))
    assert code == 0
    assert "withdrawn" in out
    code, out = kyojo("consent", "withdraw", cid, "-c", str(config))
    assert code == 2
    assert "already withdrawn" in out
    conn = connect(config.parent / "data" / "gateway.sqlite3")
    topics = [t for (t,) in conn.execute("SELECT topic FROM outbox ORDER BY seq")]
    conn.close()
    assert topics == [f"kyojo/v1/home-9/consent/{cid}"] * 2  # given, then withdrawn: both for the cloud


def test_bad_input_gives_clear_errors(config: Path, tmp_path: Path) -> None:
    code, out = kyojo("consent", "grant", "advertising", "--person", "p1", "-c", str(config))
    assert code == 2
    assert "unknown purpose 'advertising'" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "has space"\n', encoding="utf-8")
    code, out = kyojo("consent", "list", "-c", str(bad))
    assert code == 2
    assert "gateway.id" in out
    code, out = kyojo("agent", "status", "-c", str(config))
    assert code == 2
    assert "has the agent run" in out


def test_help_lists_the_command_groups() -> None:
    code, out = kyojo("--help")
    assert code == 0
    for group in ("agent", "consent", "ingest", "demo"):
        assert group in out


def test_help_imports_no_part() -> None:
    """``kyojo --help`` lists every command from the root's table without importing the parts (issue 15)."""
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kyojo.cli import app\n"
        "out = CliRunner().invoke(app, ['--help']).output\n"
        "assert 'ingest' in out and 'consent' in out, out\n"
        "parts = ('edge_agent', 'drivers', 'models', 'cloud_ingest', 'provisioning', 'firmware_tests')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(parts)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_root_table_help_is_each_commands_own() -> None:
    """The short help ``kyojo --help`` shows (static) is the help the mounted command defines."""
    group = typer.main.get_group(app)
    ctx = typer.Context(group)
    for name, (mount, short_help) in COMMANDS.items():
        cmd = typer.main.get_group(mount()).get_command(ctx, name)
        assert cmd is not None, name
        assert cmd.help == short_help, name
    assert group.list_commands(ctx) == list(COMMANDS)

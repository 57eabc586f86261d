"""A corrupted or truncated gateway database (issue 20, section 3): the agent starts on a fresh one and says so,
the damaged file is kept aside, and the household's consents and log survive through the backup.

The damage is real: bytes of the SQLite file are overwritten (or the file is cut short) after the agent closed it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent import audit
from edge_agent.agent import Agent
from edge_agent.backup import SEQ_GAP, backup_path
from edge_agent.consent import list_consents
from edge_agent.db import meta_get
from firmware_tests.doctor import database_intact
from kyojo.cli import app
from kyojo.contract.vocab import reading
from tests.agentkit import T0, ManualClock, agent_config

runner = CliRunner()


def _toml(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[gateway]\nid = "gw-dmg"\ndata_dir = "{data}"\n', encoding="utf-8")
    return path


def _run_half_hour(agent: Agent, clock: ManualClock, start: float) -> None:
    for i in range(0, 1800, 5):
        agent._on_reading(reading("strap", "p1", "heart_rate", 70.0, start + i))
    clock.t = start + 1800 + 120
    agent.flush()


def _scribble(path: Path) -> None:
    """Overwrite the pages after the first with garbage (the header stays: SQLite opens it, then finds the damage)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(max(size - 4096, 8192)))


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 3)


@pytest.mark.parametrize("damage", [_scribble, _truncate], ids=["overwritten", "truncated"])
def test_a_damaged_database_is_set_aside_and_the_household_keeps_its_consents_and_log(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    data = tmp_path / "data"
    config = agent_config(data, 1, gateway="gw-dmg")
    clock = ManualClock(T0)
    agent = Agent(config, clock=clock, drivers=[])
    given = agent.pipeline.consents.grant("preventive-care", "p1", now=datetime.fromtimestamp(T0 - 60, tz=UTC))
    _run_half_hour(agent, clock, T0)
    agent._backup()
    entries = [e.kind for e in audit.entries(agent.conn)]
    seq_before = meta_get(agent.conn, "seq")
    assert "release" in entries and seq_before > 0
    agent.conn.close()
    damage(config.db_path)

    # the household's commands say what is wrong, in words, instead of a traceback
    path = _toml(tmp_path, data)
    out = runner.invoke(app, ["consent", "list", "-c", str(path)])
    assert out.exit_code == 2 and "damaged" in out.output and "Traceback" not in out.output

    # the agent starts anyway: damaged file kept aside, consents and log restored, the recovery logged
    agent = Agent(config, clock=clock, drivers=[])
    try:
        rec = agent.recovered
        assert rec is not None and rec["restored"] and rec["consents"] == 1 and rec["entries"] == len(entries)
        assert (data / rec["kept_at"]).exists() and agent.status()["database_recovered"] == rec
        assert [c.id for c in list_consents(agent.conn)] == [given.id]
        kinds = [e.kind for e in audit.entries(agent.conn)]
        assert kinds == [*entries, "database_recovered"]
        assert audit.verify(agent.conn).ok  # the restored log is whole, and says what happened
        # message numbers jump ahead: nothing lost with the file can share a number with a new message
        _run_half_hour(agent, clock, T0 + 1800)
        new_seqs = [int(s) for (s,) in agent.conn.execute("SELECT seq FROM outbox WHERE consent IS NOT NULL")]
        assert new_seqs and min(new_seqs) > seq_before + SEQ_GAP - 1
        assert audit.verify(agent.conn).ok
    finally:
        agent.conn.close()

    shown = runner.invoke(app, ["audit", "show", "-c", str(path), "--lang", "ja"]).output
    assert "データベースが壊れていた" in shown and "同意 1 件" in shown
    check = database_intact(data)
    assert check.ok is None and rec["kept_at"] in check.detail


def test_without_a_backup_the_agent_still_starts_and_says_what_was_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = agent_config(data, 1)
    clock = ManualClock(T0)
    agent = Agent(config, clock=clock, drivers=[])
    agent.pipeline.consents.grant("preventive-care", "p1", now=datetime.fromtimestamp(T0 - 60, tz=UTC))
    agent.conn.close()
    backup_path(config.db_path).unlink(missing_ok=True)
    _scribble(config.db_path)
    agent = Agent(config, clock=clock, drivers=[])
    try:
        assert agent.recovered is not None and agent.recovered["restored"] is False
        assert list_consents(agent.conn) == []
        (only,) = list(audit.entries(agent.conn))
        assert only.kind == "database_recovered" and "no usable backup" in audit.describe(only)
    finally:
        agent.conn.close()

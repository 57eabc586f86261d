"""The demo's trading day (kyojo.devstack.trading) against a real PostgreSQL: a PV home offers, the charging site
bids, every slot is cleared before and settled after delivery, and the exported ledger verifies offline with the
command the demo prints — and stops verifying once one line of it is changed."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kyojo.cli import app as kyojo_app
from kyojo.devstack.trading import TradingParty, default_demand, default_surplus, run_demo_trading_day

pytestmark = pytest.mark.postgres


def test_a_day_of_trades_settles_and_verifies(tmp_path: Path, ledger_db: str) -> None:
    home = TradingParty("home-001", tmp_path / "home-001", "home-001", "c-home-trading", price=18)
    site = TradingParty("site-001", tmp_path / "site-001", "site-001", "c-site-trading", price=28)
    day = run_demo_trading_day(tmp_path / "trading", home=home, site=site, db_url=ledger_db, day=date(2026, 6, 1))
    assert day["verify_ok"], day["problems"]
    assert day["refused"] == {}
    traded = [i for i in range(48) if default_surplus(i) and default_demand(i)]
    assert day["slots_traded"] == len(traded) == 10
    assert (
        0 < day["delivered_wh"] <= day["matched_wh"] <= sum(min(default_surplus(i), default_demand(i)) for i in traded)
    )
    assert day["site_tokens_wh"] == day["delivered_wh"] and day["balances_sum"] == 0
    # every slot with an order is cleared and settled (an empty settlement too), and checkpointed after
    assert day["checkpoints"] == len([i for i in range(48) if default_surplus(i) or default_demand(i)]) == 15

    ledger = Path(day["ledger_file"])
    args = day["verify_command"].split()[1:]
    res = CliRunner().invoke(kyojo_app, args)
    assert res.exit_code == 0 and "ledger OK" in res.output, res.output

    # one token more for the site in one settlement line of the export: caught
    lines = ledger.read_text().splitlines()
    i = next(
        n
        for n, line in enumerate(lines)
        if json.loads(line)["kind"] == "settle" and json.loads(line)["body"]["transfers"]
    )
    entry = json.loads(lines[i])
    entry["body"]["transfers"][1][2] += 1
    lines[i] = json.dumps(entry)
    ledger.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(kyojo_app, args)
    assert res.exit_code == 1 and "altered" in res.output, res.output


def test_the_demo_can_give_its_own_metered_values(tmp_path: Path, ledger_db: str) -> None:
    home = TradingParty("home-003", tmp_path / "home-003", "home-003", "c-3", price=18)
    site = TradingParty("home-001", tmp_path / "home-001", "home-001", "c-1", price=28)
    day = run_demo_trading_day(
        tmp_path / "trading",
        home=home,
        site=site,
        db_url=ledger_db,
        day=date(2026, 6, 1),
        exported=lambda i: 1000,  # the home exported 1 kWh in every slot ...
        imported=lambda i: 400,  # ... the site took 0.4 kWh: 0.4 kWh per traded slot becomes tokens
    )
    assert day["verify_ok"] and day["slots_traded"] == 10
    assert day["delivered_wh"] == day["site_tokens_wh"] == 10 * 400

"""``kyojo trade`` as a household uses it on the gateway, and ``kyojo trade mine`` against the city's read API
(``kyojo ledger serve-http``'s app under a real uvicorn) with a real PostgreSQL: nothing is queued without the
energy-trading consent; what is queued is signed with the household's trading key; the household reads back its own
entries, and only its own."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import uvicorn
from typer.testing import CliRunner

from cloud_ingest.ledger.store import LedgerStore
from cloud_ingest.ledger.web import create_app
from edge_agent import trading
from edge_agent.db import connect
from kyojo.cli import app
from kyojo.contract.wire import TRADING_PURPOSE, decode_trade
from kyojo.keys import load_keys
from tests.kit import free_port, wait_for
from tests.ledgerkit import T0, City, make_city

pytestmark = pytest.mark.postgres
runner = CliRunner()


def kyojo(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[gateway]\nid = "home-9"\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return path


@pytest.fixture
def read_api(tmp_path: Path, ledger_db: str) -> Iterator[tuple[City, LedgerStore, str]]:
    city = make_city(tmp_path / "city")
    store = LedgerStore.open(ledger_db, city.signer, now=T0 - timedelta(hours=1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "read API up")
    try:
        yield city, store, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def _trade_payloads(data: Path) -> list[tuple[str, bytes]]:
    conn = connect(data / "gateway.sqlite3")
    try:
        rows = conn.execute("SELECT topic, payload FROM outbox WHERE topic LIKE '%/trade/%' ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(str(t), bytes(p)) for t, p in rows]


def test_a_household_trades_from_its_gateway(
    config: Path, tmp_path: Path, read_api: tuple[City, LedgerStore, str]
) -> None:
    city, store, url = read_api
    code, out = kyojo("trade", "join", "-c", str(config))
    assert code == 2 and f"consent grant {TRADING_PURPOSE} --person home-9" in out  # no consent, nothing queued
    assert kyojo("consent", "grant", TRADING_PURPOSE, "--person", "home-9", "--yes", "-c", str(config))[0] == 0
    assert kyojo("trade", "join", "-c", str(config))[0] == 0
    code, out = kyojo("trade", "offer", "--wh", "1200", "--price", "16", "-c", str(config))
    assert code == 0 and "offer queued" in out
    assert kyojo("trade", "meter", "--slot", "2026-06-01T10:00", "--export", "900", "-c", str(config))[0] == 0
    code, out = kyojo("trade", "meter", "--slot", "2026-06-01T10:10", "--export", "900", "-c", str(config))
    assert code == 2 and "not the start of a 30-minute slot" in out

    rows = _trade_payloads(tmp_path / "data")
    assert [t.rsplit("/", 1)[1] for t, _ in rows] == ["enroll", "order", "meter"]
    keys = load_keys(tmp_path / "data")
    account = trading.account(keys, "home-9")
    join, order, report = (decode_trade(p) for _, p in rows)
    assert getattr(join, "key", None) == keys.purpose_public_key_b64(TRADING_PURPOSE)
    assert getattr(order, "account", None) == account == getattr(report, "account", None)

    # the city takes the enrollment and the offer (as its intake would) ...
    city.ca.register_signing_key("home-9", keys.public_key_b64())
    from cloud_ingest.ledger.service import LedgerService

    svc = LedgerService(store, city.ca.gateway_keys_path)
    for _, payload in rows[:2]:
        assert svc.handle("home-9", payload, now=T0) is not None, svc.counts
    # ... and the household reads them back, with a request only its trading key can sign
    code, out = kyojo("trade", "mine", "--url", url, "-c", str(config), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["account"] == account and [e["kind"] for e in doc["entries"]] == ["join", "offer"]
    code, out = kyojo("trade", "mine", "--url", url, "-c", str(config))
    assert code == 0 and f"account {account}: 0.000 kWh" in out and "offered 1200 Wh at 16 yen/kWh" in out
    # checked as the household page checks: the offer still in the outbox is on the ledger as the home made it
    assert "checked: nothing missing or altered; 1 of the home's messages confirmed" in out
    # a ledger that shows the offer otherwise than the home made it: said, exit 1
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE ledger_entries SET body = jsonb_set(body, '{wh}', '12000') WHERE kind = 'offer'")
    code, out = kyojo("trade", "mine", "--url", url, "-c", str(config))
    assert code == 1 and "PROBLEM: Entry" in out and "does not match its own seal" in out, out
    assert "Offered 12 kWh" in out and "Offered 1.2 kWh" in out, out

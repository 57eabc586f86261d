"""A household's trading messages from end to end: the household grants energy-trading on its gateway, the gateway
queues its signed enrollment and offer in its durable outbox (and its audit log), the real agent publishes them to
a real Mosquitto, the ledger's intake appends them to a real PostgreSQL, and the gateway's own check of its entries
(the household page's) finds them there unchanged; a withdrawal drops what is still queued."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud_ingest.ledger.chain import CitySigner, verify
from cloud_ingest.ledger.intake import LedgerIntake
from cloud_ingest.ledger.service import LedgerService
from cloud_ingest.ledger.store import LedgerStore
from drivers.clock import ScaledClock
from edge_agent import audit, consent, ledger_check, trading
from edge_agent.agent import Agent
from edge_agent.db import connect
from edge_agent.ledger_check import LedgerAnswer, LedgerEntry
from kyojo.keys import load_keys
from provisioning.local import Mosquitto
from tests.agentkit import agent_config, run_agent_in_thread
from tests.kit import wait_for
from tests.ledgerkit import T0, make_city, slot_after

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def _outbox(path: Path) -> list[str]:
    conn = connect(path)
    try:
        return [str(r[0]) for r in conn.execute("SELECT topic FROM outbox ORDER BY seq")]
    finally:
        conn.close()


def test_a_gateway_offers_through_its_outbox(tmp_path: Path, mosquitto: Mosquitto, ledger_db: str) -> None:
    city = make_city(tmp_path / "city")
    gw = f"gw-trade-{tmp_path.name[-6:].replace('_', '-')}"
    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway=gw)
    keys = load_keys(cfg.gateway.data_dir)
    city.ca.register_signing_key(gw, keys.public_key_b64())
    now = datetime.fromtimestamp(T0.timestamp(), tz=UTC)

    conn = connect(cfg.db_path)
    store = consent.open_store(cfg, conn)
    c = store.grant("energy-trading", gw, now=now - timedelta(hours=1))
    join = trading.enrollment(keys, gw, trading.consent_of(keys, gw, c), now=now)
    offer = trading.order(keys, gw, "offer", "o1", slot=slot_after(3), wh=1500, price=17, now=now)
    trading.queue(conn, gw, join, consent=c.id, now_ms=int(now.timestamp() * 1000))
    trading.queue(conn, gw, offer, consent=c.id, now_ms=int(now.timestamp() * 1000))
    released = [e.body for e in audit.entries(conn) if e.kind == "release"]
    assert [r["events"] for r in released] == [["trade.enroll"], ["trade.order"]]  # in the household's log
    assert audit.verify(conn).ok
    conn.close()

    signer: CitySigner = city.signer
    LedgerStore.open(ledger_db, signer, now=now - timedelta(hours=2)).close()
    intake = LedgerIntake(
        lambda: LedgerService(LedgerStore(ledger_db, signer), city.ca.gateway_keys_path),
        host="127.0.0.1",
        port=mosquitto.port,
        client_id=f"ledger-{gw}",
        clock=lambda: now,
    )
    worker = threading.Thread(target=intake.run, daemon=True)
    worker.start()
    try:
        assert wait_for(intake.connected.is_set, 10, "intake connected")
        clock = ScaledClock(T0.timestamp(), speed=1)
        _, stop, _ = run_agent_in_thread(lambda: Agent(cfg, clock=clock, drivers=[]))
        try:
            wait_for(lambda: not [t for t in _outbox(cfg.db_path) if "/trade/" in t], 20, "trade messages sent")

            def kinds() -> list[str]:
                with LedgerStore(ledger_db) as s:
                    return [e.kind for e in s.entries()]

            wait_for(lambda: kinds() == ["genesis", "join", "offer"], 20, "enrollment and offer on the ledger")
        finally:
            stop()
    finally:
        intake.stop()
        worker.join(15)
    with LedgerStore(ledger_db) as s:
        assert verify(s.entries(), city.ca.certificate).ok
        assert s.account_key(trading.account(keys, gw)) == keys.purpose_public_key_b64("energy-trading")
        account = trading.account(keys, gw)
        mine = [LedgerEntry.from_json(e.to_json()) for e in s.entries_for(account)]
        key_entries = [LedgerEntry.from_json(e.to_json()) for e in s.key_entries()]

    # the household page's own check (edge_agent/ledger_check.py, /trades): what the real publisher sent, as its
    # audit log recorded it, is on the ledger unchanged, and the city's join entry carries the certified signature
    conn = connect(cfg.db_path)
    sent = ledger_check.sent_messages(conn)
    conn.close()
    assert [(m.kind, m.state) for m in sent] == [("enroll", "sent"), ("offer", "sent")]
    later = int(time.time() * 1000) + 600_000  # past the grace for messages still on their way
    checked = ledger_check.check(
        LedgerAnswer(account, 0, "", mine, key_entries),
        sent,
        trading_key=keys.purpose_public_key_b64("energy-trading"),
        ca=city.ca.certificate,
        now_ms=later,
    )
    assert checked.ok, checked.findings
    assert [m.kind for m in checked.confirmed.values()] == ["offer"] and len(checked.city_ok) == 1

    # a withdrawal drops an offer still waiting in the outbox
    conn = connect(cfg.db_path)
    store = consent.open_store(cfg, conn)
    late = trading.order(keys, gw, "offer", "o2", slot=slot_after(5), wh=100, price=17, now=now)
    trading.queue(conn, gw, late, consent=c.id, now_ms=int(now.timestamp() * 1000))
    assert any("/trade/order" in t for t in _outbox(cfg.db_path))
    store.withdraw(c.id, now=now)
    assert not any("/trade/" in t for t in _outbox(cfg.db_path))
    assert [(m.kind, m.state) for m in ledger_check.sent_messages(conn)][-1] == ("offer", "dropped")
    conn.close()

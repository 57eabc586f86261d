"""The ledger's MQTT intake against the production-configured Mosquitto (mTLS, dynamic security) and a real
PostgreSQL: gateways publish signed trading messages on their own ``trade/+`` topics, the broker keeps them off
each other's, the intake takes a gateway's identity from the topic the broker let it write, acknowledges only what
the ledger committed or refused for good, and loses nothing when the database goes away."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from cloud_ingest.ledger.chain import CitySigner
from cloud_ingest.ledger.intake import LedgerIntake
from cloud_ingest.ledger.migrate import upgrade
from cloud_ingest.ledger.service import LedgerService
from cloud_ingest.ledger.store import LedgerStore
from edge_agent import trading
from kyojo.contract.wire import ConsentStatus, trade_topic
from kyojo.keys import GatewayKeys, load_keys
from provisioning import pki
from provisioning.local import PostgreSQL
from tests.citykit import NOT_AUTHORIZED, City
from tests.kit import wait_for
from tests.ledgerkit import T0, slot_after

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def _signer(city: City) -> CitySigner:
    tls = city.identity("ledger-1", pki.Role.LEDGER)
    return CitySigner.load(tls / pki.KEY_NAME, tls / pki.CERT_NAME)


def _keys(city: City, gw: str) -> GatewayKeys:
    keys = load_keys(city.base / "data" / gw)
    city.ca.register_signing_key(gw, keys.public_key_b64())  # what `provision sign` does with the CSR's key
    return keys


@contextlib.contextmanager
def _intake(city: City, url: str) -> Iterator[LedgerIntake]:
    signer = _signer(city)
    upgrade(url)
    LedgerStore.open(url, signer, now=T0 - timedelta(hours=1)).close()
    intake = LedgerIntake(
        lambda: LedgerService(LedgerStore(url, signer), city.ca.gateway_keys_path),
        host=city.current_broker.host,
        port=city.current_broker.port,
        client_id="ledger-1",
        tls=city.ssl_context("ledger-1"),
        clock=lambda: T0,
    )
    worker = threading.Thread(target=intake.run, daemon=True)
    worker.start()
    try:
        yield intake
    finally:
        intake.stop()
        worker.join(15)
        assert not worker.is_alive()


def _kinds(url: str) -> list[str]:
    with LedgerStore(url) as store:
        return [e.kind for e in store.entries()]


def test_trading_messages_over_the_city_broker(city: City, ledger_db: str) -> None:
    city.identity("ledger-1", pki.Role.LEDGER)
    city.start_broker()
    a_keys, b_keys = _keys(city, "gw-a"), _keys(city, "gw-b")
    a, b = city.client("gw-a"), city.client("gw-b")
    rec_a = trading.consent_record(a_keys, "gw-a", "c-a", "gw-a", T0 - timedelta(days=1))
    join_a = trading.enrollment(a_keys, "gw-a", rec_a, now=T0).model_dump_json().encode()
    slot = slot_after(3)
    offer = trading.order(a_keys, "gw-a", "offer", "o1", slot=slot, wh=1200, price=15, now=T0)

    with _intake(city, ledger_db) as intake:
        assert wait_for(intake.connected.is_set, 10, "intake connected")
        # gw-b may not write gw-a's topics, nor read them
        assert b.puback(trade_topic("gw-a", "enroll"), join_a) == NOT_AUTHORIZED
        assert b.suback("kyojo/v1/+/trade/+") == NOT_AUTHORIZED
        assert a.puback(trade_topic("gw-a", "enroll"), join_a) == 0
        assert a.puback(trade_topic("gw-a", "order"), offer.model_dump_json().encode()) == 0
        wait_for(lambda: _kinds(ledger_db) == ["genesis", "join", "offer"], 10, "join and offer on the ledger")
        # gw-b relays gw-a's enrollment on its own topic: the topic says gw-b, the message gw-a: refused
        assert b.puback(trade_topic("gw-b", "enroll"), join_a) == 0
        # garbage, and gw-a's offer again: refused, counted, acknowledged, the intake goes on
        assert b.puback(trade_topic("gw-b", "order"), b"\xff not json") == 0
        assert a.puback(trade_topic("gw-a", "order"), offer.model_dump_json().encode()) == 0
        wait_for(lambda: intake.counts["acked"] == 5, 10, "five messages acknowledged")
        assert intake.counts["refused:not_yours"] == 1
        assert intake.counts["refused:bad_json"] == 1
        assert intake.counts["refused:replayed"] == 1
        # a withdrawal travels as the usual retained consent record: the account leaves
        gone = rec_a.model_copy(update={"status": ConsentStatus.WITHDRAWN, "withdrawn_at": T0, "sig": None})
        gone = gone.model_copy(update={"sig": a_keys.sign(gone.signing_bytes())})
        assert a.puback("kyojo/v1/gw-a/consent/c-a", gone.model_dump_json().encode(), retain=True) == 0
        wait_for(lambda: _kinds(ledger_db)[-1] == "leave", 10, "the household left")
    assert b_keys.public_key_b64() in city.ca.gateway_keys().values()


def test_nothing_is_lost_while_the_database_is_away(city: City, tmp_path: Path) -> None:
    city.identity("ledger-1", pki.Role.LEDGER)
    city.start_broker()
    keys = _keys(city, "gw-a")
    a = city.client("gw-a")
    rec = trading.consent_record(keys, "gw-a", "c-a", "gw-a", T0 - timedelta(days=1))
    join = trading.enrollment(keys, "gw-a", rec, now=T0).model_dump_json().encode()
    orders = [trading.order(keys, "gw-a", "offer", f"o{n}", slot=slot_after(3 + n), wh=100, price=10, now=T0)
              for n in range(5)]  # fmt: skip
    with PostgreSQL(tmp_path / "pg") as pg:  # a server of this test's own: it is stopped in the middle
        url = pg.create_database("ledger")
        with _intake(city, url) as intake:
            assert wait_for(intake.connected.is_set, 10, "intake connected")
            assert a.puback(trade_topic("gw-a", "enroll"), join) == 0
            wait_for(lambda: intake.counts["acked"] == 1, 10, "enrollment acknowledged")
            pg.stop()
            for o in orders[:3]:
                assert a.puback(trade_topic("gw-a", "order"), o.model_dump_json().encode()) == 0
            wait_for(lambda: intake.counts["db_errors"] >= 1, 10, "the intake saw the database fail")
            pg.start()
            for o in orders[3:]:
                assert a.puback(trade_topic("gw-a", "order"), o.model_dump_json().encode()) == 0
            wait_for(lambda: _kinds(url).count("offer") == 5, 30, "every offer on the ledger after the outage")
        with LedgerStore(url) as store:
            ids = sorted(e.body["id"] for e in store.entries() if e.kind == "offer")
        assert ids == ["o0", "o1", "o2", "o3", "o4"]  # each exactly once

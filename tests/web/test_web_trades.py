"""/trades against a real ledger: the city's PostgreSQL (tests/ledgerkit.py's city: its CA, the ledger's certified
key), the read API (cloud_ingest.ledger.web) under uvicorn on a loopback port, and the household's real gateway web
app in headless Chromium. The home's trading messages are made and queued by edge_agent.trading exactly as
``kyojo trade`` does; the test plays the broker's PUBACK (the publisher's own ``log_releases`` and outbox delete) and
hands the ledger's intake the very bytes the outbox held, then runs the matcher through a clearing and a settlement.

Japanese first: the balance and the entries in words, newest first with their ledger numbers, axe clean, no
sideways scroll on a phone; English on the toggle. An offer the ledger altered, and one it never recorded, are
flagged in words; a ledger that does not answer is said in words, quickly, without a 500; without
``[trading] ledger_url`` the page says the address is not configured and shows what the home sent."""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from playwright.sync_api import Page, expect
from psycopg.types.json import Jsonb

from cloud_ingest.ledger.chain import entry_hash
from cloud_ingest.ledger.service import LedgerService
from cloud_ingest.ledger.store import LedgerStore
from cloud_ingest.ledger.web import create_app as ledger_app
from edge_agent import consent, trading
from edge_agent.config import AgentConfig, load_config
from edge_agent.consent import log_releases
from edge_agent.db import connect, tx
from edge_agent.web.pages.trades import slot_words
from kyojo.contract.wire import SLOT_S, TRADING_PURPOSE, MeterReport, TradeOrder, TradingEnrollment
from kyojo.keys import GatewayKeys, load_keys
from provisioning import pki
from provisioning.local import PostgreSQL
from tests.ledgerkit import T0, City, at, make_city, slot_after
from tests.webkit import PHONE, AppServer, WebServer, axe_violations, free_port, screenshot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

GW = "home-trade"


def _toml(data: Path, trading_section: str) -> str:
    return f'[gateway]\nid = "{GW}"\ndata_dir = "{data}"\n\n{trading_section}'


@dataclass
class Trading:
    """A city with its ledger served over HTTP, and one household gateway that trades on it."""

    city: City
    url: str  # the ledger database
    svc: LedgerService
    api: AppServer
    config_path: Path
    cfg: AgentConfig
    keys: GatewayKeys
    consent_id: str

    @property
    def account(self) -> str:
        return trading.account(self.keys, GW)

    def send(
        self,
        msg: TradeOrder | MeterReport | TradingEnrollment,
        *,
        ledger_at: datetime | None,
        acked_ms: int | None = None,
    ) -> None:
        """Queue ``msg`` on the gateway (as ``kyojo trade`` does), let the broker acknowledge it (the publisher's
        own bookkeeping) at ``acked_ms`` (default: now), and hand the ledger the outbox's bytes at ``ledger_at``
        (None: it never arrives)."""
        conn = connect(self.cfg.db_path)
        try:
            seq = trading.queue(conn, GW, msg, consent=self.consent_id, now_ms=int(T0.timestamp() * 1000))
            topic, payload = conn.execute("SELECT topic, payload FROM outbox WHERE seq = ?", (seq,)).fetchone()
            with tx(conn):
                conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                acked = int(time.time() * 1000) if acked_ms is None else acked_ms
                log_releases(conn, "release_acked", [(seq, topic, self.consent_id, 1)], acked)
        finally:
            conn.close()
        if ledger_at is not None:
            assert self.svc.handle(GW, bytes(payload), now=ledger_at) is not None, self.svc.counts

    def queue_only(self, msg: TradeOrder) -> None:
        conn = connect(self.cfg.db_path)
        try:
            trading.queue(conn, GW, msg, consent=self.consent_id, now_ms=int(T0.timestamp() * 1000))
        finally:
            conn.close()

    def order(self, kind: Literal["offer", "bid"], oid: str, slot: int, wh: int, price: int) -> TradeOrder:
        return trading.order(self.keys, GW, kind, oid, slot=slot, wh=wh, price=price, now=T0)

    def meter(self, slot: int, direction: Literal["export", "import"], wh: int) -> MeterReport:
        return trading.meter_report(self.keys, GW, slot=slot, direction=direction, wh=wh, now=at(slot + SLOT_S))

    def web(self, trading_section: str | None = None, name: str = "agent") -> WebServer:
        """The household page on this gateway; ``trading_section`` replaces the ``[trading]`` table."""
        path = self.config_path
        if trading_section is not None:
            path = self.config_path.with_name(f"{name}.toml")
            path.write_text(_toml(self.cfg.gateway.data_dir, trading_section), encoding="utf-8")
        return WebServer(path)


@pytest.fixture
def market(tmp_path: Path, postgres: PostgreSQL) -> Iterator[Trading]:
    """A trading day: the home joins, offers 3 kWh for slot 2 (the charging site bids 2 kWh: 1.8 kWh delivered)
    and bids 1 kWh for slot 3 (a PV neighbour offers 1.5 kWh: 0.9 kWh delivered); both slots clear and settle. One
    more offer (slot 5) is still waiting in the outbox."""
    db = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(db)
    city = make_city(tmp_path / "city")
    home = city.home(GW)  # enrolls the gateway's signing key with the CA; its data dir is city.base / GW
    site, pv = city.home("site-001"), city.home("home-003")
    svc = city.service(url)
    api_store = LedgerStore(url)
    api = AppServer(ledger_app(api_store)).start()
    data = city.base / GW
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        _toml(data, f'[trading]\nledger_url = "{api.url}"\ncity_ca = "{city.ca_cert}"\ntimeout = 5\n'),
        encoding="utf-8",
    )
    cfg = load_config(config_path)
    conn = connect(cfg.db_path)
    try:
        c = consent.open_store(cfg, conn).grant(TRADING_PURPOSE, GW, now=T0 - timedelta(days=1))
    finally:
        conn.close()
    keys = load_keys(data)
    assert keys.public_key_b64() == home.keys.public_key_b64()
    t = Trading(city, url, svc, api, config_path, cfg, keys, c.id)
    try:
        conn = connect(cfg.db_path)
        try:
            record = trading.consent_of(keys, GW, consent.get_consent(conn, c.id))
        finally:
            conn.close()
        t.send(trading.enrollment(keys, GW, record, now=T0), ledger_at=T0)
        assert svc.handle(site.gateway, site.enrollment(), now=T0) is not None
        assert svc.handle(pv.gateway, pv.enrollment(), now=T0) is not None
        s2, s3 = slot_after(2), slot_after(3)
        t.send(t.order("offer", "o1", s2, 3000, 20), ledger_at=T0)
        assert svc.handle(site.gateway, site.order("bid", "b1", s2, 2000, 30), now=T0) is not None
        t.send(t.order("bid", "b2", s3, 1000, 26), ledger_at=T0)
        assert svc.handle(pv.gateway, pv.order("offer", "o9", s3, 1500, 18), now=T0) is not None
        assert [e.kind for e in svc.tick(at(s2 - 200))] == ["match"]
        assert [e.kind for e in svc.tick(at(s3 - 200))] == ["match"]
        t.send(t.meter(s2, "export", 2500), ledger_at=at(s2 + SLOT_S))
        assert svc.handle(site.gateway, site.meter(s2, "import", 1800), now=at(s2 + SLOT_S)) is not None
        t.send(t.meter(s3, "import", 900), ledger_at=at(s3 + SLOT_S))
        assert svc.handle(pv.gateway, pv.meter(s3, "export", 1400), now=at(s3 + SLOT_S)) is not None
        assert [e.kind for e in svc.tick(at(s3 + SLOT_S + 900))] == ["settle", "settle", "checkpoint"]
        t.queue_only(t.order("offer", "o5", slot_after(5), 1200, 22))
        yield t
    finally:
        api.stop()
        api_store.close()
        svc.store.close()
        postgres.drop_database(db)


def _open(phone: Page, web: WebServer) -> None:
    sign_in(phone, web)
    phone.goto(web.url + "/trades")
    assert phone.locator("h1").count() == 1


def _no_sideways_scroll(page: Page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "no sideways scrolling"


def test_entries_and_balance_in_japanese_then_english(market: Trading, phone: Page) -> None:
    with market.web() as web:
        _open(phone, web)
        assert phone.locator("html").get_attribute("lang") == "ja"
        assert phone.locator("nav.menu").get_by_role("link", name="電力の取引").count() == 1
        # the balance is the ledger's own: 0.9 kWh bought from the PV neighbour (the 1.8 kWh sold went on)
        balance = phone.get_by_test_id("trades-balance")
        assert balance.get_attribute("data-wh") == "900"
        assert "0.9 kWh" in balance.inner_text()
        assert phone.get_by_test_id("trades-checked").count() == 1
        assert phone.get_by_test_id("trades-findings").count() == 0
        rows = phone.locator("[data-testid=trades-entries] tbody tr")
        seqs = [int(s) for s in rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")]
        assert seqs == sorted(seqs, reverse=True) and len(seqs) == 9  # newest first, each with its number
        kinds = rows.evaluate_all("rs => rs.map(r => r.dataset.kind)")
        assert sorted(kinds) == sorted(["join", "offer", "bid", "match", "match", "meter", "meter", "settle", "settle"])
        text = phone.get_by_test_id("trades-entries").inner_text()
        s2 = slot_words(slot_after(2))
        assert f"{s2} に 3 kWh を 20 円/kWh 以上で売りに出しました" in text
        assert "入札" in text and "1 kWh" in text
        assert "約定" in text and "0.9 kWh" in text and "1.8 kWh" in text
        assert "トークン" in text
        assert text.count("あなたの家が送ったとおり") == 4  # the offer, the bid, the two meter reports
        assert text.count("市の署名あり") == 5  # join, two clearings, two settlements
        sent = phone.locator("[data-testid=trades-sent] tbody tr")
        assert sent.evaluate_all("rs => rs.map(r => r.dataset.state)") == [
            "queued",
            "sent",
            "sent",
            "sent",
            "sent",
            "sent",
        ]
        assert "送信待ち" in phone.get_by_test_id("trades-sent").inner_text()
        _no_sideways_scroll(phone)
        assert axe_violations(phone) == []
        screenshot(phone, "trades-ja-phone")
        phone.get_by_test_id("lang-switch").click()
        # Playwright's expect retries across the navigation (a raw wait_for_function can catch the page between
        # documents, with no documentElement, and fail)
        expect(phone.locator("html")).to_have_attribute("lang", "en")
        expect(phone.locator("h1")).to_have_text("Energy trades")
        text = phone.get_by_test_id("trades-entries").inner_text()
        assert f"Offered 3 kWh at 20 yen/kWh or more for {s2}" in text
        assert "Matches what your home sent" in text
        _no_sideways_scroll(phone)
        assert axe_violations(phone) == []
    site_counts = [k for k in market.svc.counts if k.startswith("refused")]
    assert site_counts == []


def _tamper(url: str, sql: str, params: tuple[object, ...]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql, params)


def test_an_altered_and_a_missing_offer_are_flagged(market: Trading, phone: Page) -> None:
    # the city's database changes the home's offer to 30 kWh and reseals the entry (its hash matches again; only
    # the household's signature, and the household's own copy, can tell)
    with psycopg.connect(market.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT seq, kind, prev, body, sig FROM ledger_entries WHERE kind = 'offer' AND body->>'account' = %s",
            (market.account,),
        ).fetchone()
    assert row is not None
    seq, kind, prev, body, sig = row
    body["wh"] = 30000
    _tamper(market.url, "UPDATE ledger_entries SET body = %s, hash = %s WHERE seq = %s",
            (Jsonb(body), entry_hash(seq, kind, prev, body, sig), seq))  # fmt: skip
    # the clearing of slot 3 is given another price, resealed: only the city's signature can tell
    with psycopg.connect(market.url, autocommit=True) as conn:
        m = conn.execute(
            "SELECT seq, kind, prev, body, sig FROM ledger_entries WHERE kind = 'match' AND (body->>'slot')::int = %s",
            (slot_after(3),),
        ).fetchone()
    assert m is not None
    m_seq, m_kind, m_prev, m_body, m_sig = m
    m_body["price"] = 12
    _tamper(market.url, "UPDATE ledger_entries SET body = %s, hash = %s WHERE seq = %s",
            (Jsonb(m_body), entry_hash(m_seq, m_kind, m_prev, m_body, m_sig), m_seq))  # fmt: skip
    # and an offer the broker acknowledged ten minutes ago never reached the ledger
    lost = market.order("offer", "o6", slot_after(6), 700, 24)
    market.send(lost, ledger_at=None, acked_ms=int((time.time() - 600) * 1000))
    # while one acknowledged a moment ago may still be on its way: said, not flagged
    market.send(market.order("bid", "b7", slot_after(7), 400, 27), ledger_at=None)
    with market.web() as web:
        _open(phone, web)
        findings = phone.get_by_test_id("trades-finding").all_inner_texts()
        assert len(findings) == 4, findings
        joined = "\n".join(findings)
        s6 = slot_words(slot_after(6))
        assert "台帳には、あなたの家が" in joined and f"{s6} に 0.7 kWh を 24 円/kWh 以上で売りに出しました" in joined
        assert "30 kWh" in joined and "3 kWh" in joined and f"{seq}" in joined
        assert "署名していません" in joined
        assert f"台帳の {m_seq} 番には、市の認証された台帳の鍵による署名がありません" in joined
        assert phone.locator(f"[data-testid=trades-entries] tr[data-seq='{m_seq}'] td.bad").count() == 1
        pending = phone.get_by_test_id("trades-pending").inner_text()
        assert "まだ台帳にありません" in pending and "0.4 kWh を 27 円/kWh 以下で買う入札" in pending
        flagged = phone.locator(f"[data-testid=trades-entries] tr[data-seq='{seq}'] td.bad")
        assert flagged.count() == 1
        assert phone.get_by_test_id("trades-checked").count() == 0
        _no_sideways_scroll(phone)
        assert axe_violations(phone) == []
        screenshot(phone, "trades-flagged-ja-phone")
    counts = web_counts(web)
    assert counts["ledger:findings"] == 4


def web_counts(web: WebServer) -> dict[str, int]:
    app: Any = web.server.config.app  # the household app uvicorn served
    return dict(app.state.site.counts)


def test_a_ledger_key_the_trusted_ca_did_not_certify_is_flagged(market: Trading, phone: Page, tmp_path: Path) -> None:
    other = pki.init_ca(tmp_path / "other-ca")  # the gateway trusts another city authority than the ledger's
    section = f'[trading]\nledger_url = "{market.api.url}"\ncity_ca = "{other.cert_path}"\n'
    with market.web(section, "other-ca") as web:
        _open(phone, web)
        findings = phone.get_by_test_id("trades-finding").all_inner_texts()
        assert len(findings) == 1 and "認証局に認証されていません" in findings[0], findings
        assert phone.get_by_test_id("trades-entries").locator("text=市の署名あり").count() == 0
        assert phone.get_by_test_id("trades-entries").locator("text=あなたの家が送ったとおり").count() == 4


def test_an_unreachable_ledger_is_said_in_words_quickly(market: Trading, phone: Page) -> None:
    # a peer that accepts the connection and never answers: the page waits the configured 0.5 s, not forever
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with market.web(f'[trading]\nledger_url = "http://127.0.0.1:{port}"\ntimeout = 0.5\n', "silent") as web:
            sign_in(phone, web)
            started = time.monotonic()
            response = phone.goto(web.url + "/trades")
            took = time.monotonic() - started
            assert response is not None and response.status == 200
            assert took < 5, took
            notice = phone.get_by_test_id("trades-unavailable")
            assert "市の台帳" in notice.inner_text() and "つながりません" in notice.inner_text()
            assert phone.get_by_test_id("trades-sent").count() == 1  # the home's own record is still shown
            assert axe_violations(phone) == []
            assert web_counts(web)["ledger:unreachable"] == 1
    # and a closed port (the same gateway, so the phone is still signed in)
    with market.web(f'[trading]\nledger_url = "http://127.0.0.1:{free_port()}"\n', "closed") as web:
        phone.goto(web.url + "/trades")
        assert phone.get_by_test_id("trades-unavailable").count() == 1
        assert web_counts(web)["ledger:unreachable"] == 1


def test_without_a_ledger_address_the_page_says_so(market: Trading, phone: Page) -> None:
    with market.web("", "no-ledger") as web:
        _open(phone, web)
        assert "台帳のアドレスが設定されていません" in phone.get_by_test_id("trades-not-configured").inner_text()
        assert phone.get_by_test_id("trades-balance").count() == 0
        text = phone.get_by_test_id("trades-sent").inner_text()
        assert "売りに出しました" in text and "送信済み" in text and "送信待ち" in text
        _no_sideways_scroll(phone)
        assert axe_violations(phone) == []


def test_no_menu_entry_without_an_energy_trading_consent(tmp_path: Path, phone: Page) -> None:
    data = tmp_path / "data"
    path = tmp_path / "agent.toml"
    path.write_text(_toml(data, ""), encoding="utf-8")
    with WebServer(path) as web:
        sign_in(phone, web)
        assert phone.locator("nav.menu a[href='/trades']").count() == 0
        phone.goto(web.url + "/trades")
        assert phone.get_by_test_id("trades-not-taking-part").count() == 1


def test_sqlite_is_untouched_by_the_page(market: Trading, phone: Page) -> None:
    """The page reads; it never writes the agent's database (the audit log stays as the agent left it)."""
    before = sqlite3.connect(market.cfg.db_path).execute("SELECT max(n) FROM audit").fetchone()
    with market.web() as web:
        _open(phone, web)
        phone.get_by_test_id("trades-balance").wait_for()
    after = sqlite3.connect(market.cfg.db_path).execute("SELECT max(n) FROM audit").fetchone()
    assert before == after

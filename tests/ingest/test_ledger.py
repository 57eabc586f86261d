"""The energy-trading ledger against a real PostgreSQL (started by the test suite): a trading day, and every way
to cheat that issue 18 names — a forged, a replayed, an altered and a deleted entry — refused at append where it
can be and found by ``kyojo ledger verify`` where it got past the application (written straight into the
database); hostile gateways; concurrent writers; balances that always sum to zero."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from cloud_ingest.ledger.chain import Entry, LedgerError, entry_hash, verify
from cloud_ingest.ledger.market import DELIVERY
from cloud_ingest.ledger.service import LedgerService
from cloud_ingest.ledger.store import LedgerStore
from edge_agent import trading
from kyojo.cli import app as kyojo_app
from kyojo.contract.wire import SLOT_S, ConsentStatus, decode_trade
from kyojo.keys import load_keys
from tests.ledgerkit import T0, City, Home, at, make_city, slot_after

pytestmark = pytest.mark.postgres


@pytest.fixture
def city(tmp_path: Path) -> City:
    return make_city(tmp_path)


@pytest.fixture
def svc(city: City, ledger_db: str) -> Iterator[LedgerService]:
    service = city.service(ledger_db)
    yield service
    service.store.close()


def _ca(city: City) -> x509.Certificate:
    return x509.load_pem_x509_certificate(city.ca_cert.read_bytes())


def _ok(svc: LedgerService, gateway: str, payload: bytes, now: Any = T0) -> Entry:
    entry = svc.handle(gateway, payload, now=now)
    assert entry is not None, svc.counts
    return entry


def _refused(svc: LedgerService, gateway: str, payload: bytes, cause: str, now: Any = T0) -> None:
    before = svc.counts[f"refused:{cause}"]
    head = svc.store.head()
    assert svc.handle(gateway, payload, now=now) is None
    assert svc.counts[f"refused:{cause}"] == before + 1, svc.counts
    assert svc.store.head() == head  # nothing appended


def _day(svc: LedgerService, city: City) -> tuple[Home, Home, int]:
    """A PV home offers 3 kWh for the slot starting an hour after T0; the charging site bids 2 kWh; cleared;
    the home exported 2.5 kWh, the site took 1.8 kWh; settled and checkpointed."""
    home, site = city.home("home-001"), city.home("site-001")
    _ok(svc, home.gateway, home.enrollment())
    _ok(svc, site.gateway, site.enrollment())
    slot = slot_after(2)
    _ok(svc, home.gateway, home.order("offer", "o1", slot, 3000, 20))
    _ok(svc, site.gateway, site.order("bid", "b1", slot, 2000, 30))
    assert [e.kind for e in svc.tick(at(slot - 200))] == ["match"]
    _ok(svc, home.gateway, home.meter(slot, "export", 2500), now=at(slot + SLOT_S))
    _ok(svc, site.gateway, site.meter(slot, "import", 1800), now=at(slot + SLOT_S))
    assert [e.kind for e in svc.tick(at(slot + SLOT_S + 900))] == ["settle", "checkpoint"]
    return home, site, slot


def test_trading_day_clears_settles_and_verifies(svc: LedgerService, city: City, tmp_path: Path) -> None:
    home, site, slot = _day(svc, city)
    price, pairs = svc.store.clearing(slot) or (None, [])
    assert price == 25  # midpoint of the last paired offer (20) and bid (30)
    assert [(p.seller, p.buyer, p.wh) for p in pairs] == [(home.account, site.account, 2000)]
    # delivered = min(paired 2000, exported 2500, imported 1800): 1800 tokens, minted to the seller, moved on
    assert svc.store.balances() == {DELIVERY: -1800, site.account: 1800, home.account: 0}
    report = verify(svc.store.entries(), _ca(city))
    assert report.ok, report.problems
    assert (report.minted, report.checkpoints, sum(report.balances.values())) == (1800, 1, 0)
    # the ledger never names a gateway or a household, only the pseudonyms
    text = json.dumps([e.to_json() for e in svc.store.entries()])
    assert "home-001" not in text and "site-001" not in text
    # the household's own entries: its join, offer, meter report, the match and the settlement that name it
    assert [e.kind for e in svc.store.entries_for(home.account)] == ["join", "offer", "match", "meter", "settle"]

    # the command any participant runs, offline on an export and against the database
    runner = CliRunner()
    out = tmp_path / "ledger.jsonl"
    res = runner.invoke(kyojo_app, ["ledger", "export", "--db", svc.store.url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(kyojo_app, ["ledger", "verify", "--file", str(out), "--ca", str(city.ca_cert)])
    assert res.exit_code == 0, res.output
    assert (
        "ledger OK" in res.output
        and "double entry: 1800 Wh minted by metered delivery; balances sum to 0" in res.output
    )
    with out.open("a") as fh:
        fh.write('{"seq": 11, "kind": "offer"}\n')  # not an entry at all
    res = runner.invoke(kyojo_app, ["ledger", "verify", "--file", str(out), "--ca", str(city.ca_cert)])
    assert res.exit_code == 1 and "unreadable" in res.output, res.output
    res = runner.invoke(kyojo_app, ["ledger", "verify", "--db", svc.store.url, "--ca", str(city.ca_cert), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["ok"] is True


def test_a_ledger_key_not_from_the_city_ca_is_not_trusted(svc: LedgerService, city: City, tmp_path: Path) -> None:
    _day(svc, city)
    other = make_city(tmp_path / "elsewhere")  # another CA, with its own "ledger" identity
    report = verify(svc.store.entries(), x509.load_pem_x509_certificate(other.ca_cert.read_bytes()))
    assert "untrusted_ledger_key" in report.causes


# -- forged ---------------------------------------------------------------------------------------------------
def test_forged_entries_are_refused_and_found(svc: LedgerService, city: City) -> None:
    home, site, _ = _day(svc, city)
    mallory = city.home("gw-mallory")
    _ok(svc, mallory.gateway, mallory.enrollment())
    slot = slot_after(6)
    # an offer for the home's account, signed with mallory's trading key: refused
    forged = json.loads(mallory.order("offer", "o9", slot, 5000, 1))
    forged["account"] = home.account
    _refused(svc, mallory.gateway, json.dumps(forged).encode(), "bad_signature")
    # a meter report in the site's name, unsigned
    report = json.loads(site.meter(slot_after(2), "import", 9999))
    report["sig"] = None
    _refused(svc, mallory.gateway, json.dumps(report).encode(), "bad_signature", now=at(slot_after(2) + SLOT_S))

    # past the application: the forged offer written straight into the database, chain and hash made right
    seq, prev = svc.store.head()
    body = json.loads(decode_trade(json.dumps(forged).encode()).model_dump_json())
    _insert(svc.store.url, Entry(seq + 1, "offer", prev, body, None, entry_hash(seq + 1, "offer", prev, body, None)))
    found = verify(svc.store.entries(), _ca(city))
    assert [(p.seq, p.cause) for p in found.problems] == [(seq + 1, "bad_signature")]

    # a city entry (a settlement minting tokens for mallory) signed with a key of mallory's own
    from cryptography.hazmat.primitives.asymmetric import ec

    from cloud_ingest.ledger.chain import CitySigner

    fake = CitySigner(ec.generate_private_key(ec.SECP256R1()), city.signer.cert_pem)
    last = list(svc.store.entries())[-1]
    body = {"slot": slot, "transfers": [[DELIVERY, mallory.account, 10**6]], "at": at(slot + SLOT_S).isoformat()}
    _insert(svc.store.url, fake.make(last.seq + 1, "settle", last.hash, body))
    found = verify(svc.store.entries(), _ca(city))
    assert (last.seq + 1, "bad_signature") in {(p.seq, p.cause) for p in found.problems}


# -- replayed -------------------------------------------------------------------------------------------------
def test_replayed_messages_are_refused_and_replayed_entries_found(svc: LedgerService, city: City) -> None:
    home, site, slot = _day(svc, city)
    _refused(svc, home.gateway, home.enrollment(), "replayed")
    _refused(svc, home.gateway, home.order("offer", "o1", slot, 3000, 20), "replayed")
    _refused(svc, home.gateway, home.order("offer", "o1b", slot, 3000, 20), "slot_closed")
    later = slot_after(8)
    first = home.order("offer", "o2", later, 1000, 20)
    _ok(svc, home.gateway, first)
    _refused(svc, home.gateway, first, "replayed")  # the same signed message again: never doubled
    _refused(svc, site.gateway, site.meter(slot, "import", 1800), "replayed", now=at(slot + 2 * SLOT_S))
    _refused(svc, home.gateway, home.meter(slot, "import", 5), "slot_settled", now=at(slot + 2 * SLOT_S))

    # past the application: a copy of the (validly signed) offer appended at the end with a correct chain
    original = next(e for e in svc.store.entries() if e.kind == "offer" and e.body["id"] == "o2")
    seq, prev = svc.store.head()
    _insert(
        svc.store.url,
        Entry(seq + 1, "offer", prev, original.body, None, entry_hash(seq + 1, "offer", prev, original.body, None)),
    )
    found = verify(svc.store.entries(), _ca(city))
    assert [(p.seq, p.cause) for p in found.problems] == [(seq + 1, "replayed")]


def test_a_replayed_meter_report_is_refused(svc: LedgerService, city: City) -> None:
    home, site = city.home("home-001"), city.home("site-001")
    for h in (home, site):
        _ok(svc, h.gateway, h.enrollment())
    slot = slot_after(2)
    _ok(svc, home.gateway, home.order("offer", "o1", slot, 1000, 10))
    _ok(svc, site.gateway, site.order("bid", "b1", slot, 1000, 10))
    _refused(svc, home.gateway, home.meter(slot, "export", 900), "too_early", now=at(slot + 60))
    svc.store.clear_slot(slot, now=at(slot - 60))
    _ok(svc, home.gateway, home.meter(slot, "export", 900), now=at(slot + SLOT_S))
    _refused(svc, home.gateway, home.meter(slot, "export", 5000), "replayed", now=at(slot + SLOT_S))
    svc.store.settle_slot(slot, now=at(slot + SLOT_S + 1))
    assert svc.store.balances()[site.account] == 0  # the site never reported its import: nothing delivered


# -- altered --------------------------------------------------------------------------------------------------
def test_altered_entries_are_found(svc: LedgerService, city: City) -> None:
    _day(svc, city)
    # the database refuses an UPDATE or DELETE of an entry (append-only trigger)
    with psycopg.connect(svc.store.url, autocommit=True) as conn, pytest.raises(psycopg.errors.RaiseException):
        conn.execute("UPDATE ledger_entries SET sig = NULL WHERE seq = 2")
    offer = next(e for e in svc.store.entries() if e.kind == "offer")

    # an operator who switches the trigger off and raises the offer's energy: its hash no longer matches
    _tamper(
        svc.store.url, "UPDATE ledger_entries SET body = jsonb_set(body, '{wh}', '9000') WHERE seq = %s", (offer.seq,)
    )
    found = verify(svc.store.entries(), _ca(city))
    assert ("altered", offer.seq) in {(p.cause, p.seq) for p in found.problems}

    # ... and who then rewrites every hash after it: the household's signature over the offer fails, the city's
    # signatures over every later entry (which cover prev) fail, the checkpoint's signed head no longer matches
    _rehash_from(svc.store.url, offer.seq)
    found = verify(svc.store.entries(), _ca(city))
    assert "altered" not in found.causes and "broken_chain" not in found.causes
    assert (offer.seq, "bad_signature") in {(p.seq, p.cause) for p in found.problems}
    assert {p.seq for p in found.problems if p.cause == "bad_signature"} >= {offer.seq, offer.seq + 2}


def test_an_altered_settlement_is_found(svc: LedgerService, city: City) -> None:
    home, site, _ = _day(svc, city)
    settle = next(e for e in svc.store.entries() if e.kind == "settle")
    body = dict(settle.body)
    body["transfers"] = [[DELIVERY, home.account, 5000], [home.account, site.account, 5000]]
    _tamper(svc.store.url, "UPDATE ledger_entries SET body = %s WHERE seq = %s", (Jsonb(body), settle.seq))
    found = verify(svc.store.entries(), _ca(city))
    assert {"altered", "bad_signature"} <= found.causes


# -- deleted --------------------------------------------------------------------------------------------------
def test_deleted_entries_are_found(svc: LedgerService, city: City) -> None:
    _day(svc, city)
    entries = list(svc.store.entries())
    head = (entries[-1].seq, entries[-1].hash)
    meter = next(e for e in entries if e.kind == "meter")
    _tamper(svc.store.url, "DELETE FROM ledger_entries WHERE seq = %s", (meter.seq,))
    found = verify(svc.store.entries(), _ca(city))
    assert {(meter.seq + 1, "gap"), (meter.seq + 1, "broken_chain")} <= {(p.seq, p.cause) for p in found.problems}

    # a cut-off tail leaves a valid-looking chain: the head a participant saw before catches it
    entries = [e for e in entries if e.seq != meter.seq]
    assert verify(entries[:3], _ca(city)).ok
    found = verify(entries[:3], _ca(city), expect_head=head)
    assert found.causes == {"head_missing"}


# -- hostile gateways and bad input ------------------------------------------------------------------------------
def test_a_gateway_acts_only_for_itself(svc: LedgerService, city: City) -> None:
    home, mallory = city.home("home-001"), city.home("gw-mallory")
    # mallory's consent record naming the home's account: refused (the account is not mallory's consent subject...)
    rec = trading.consent_record(mallory.keys, mallory.gateway, "c-x", "whatever", T0 - timedelta(days=1))
    rec = rec.model_copy(update={"subject": home.account, "sig": None})
    rec = rec.model_copy(update={"sig": mallory.keys.sign(rec.signing_bytes())})
    steal = trading.enrollment(mallory.keys, mallory.gateway, rec, now=T0).model_copy(update={"account": home.account})
    steal = steal.model_copy(update={"sig": mallory.keys.sign(steal.signing_bytes())})
    _ok(svc, home.gateway, home.enrollment())
    _refused(svc, mallory.gateway, steal.model_dump_json().encode(), "account_taken")  # ... and the account is taken
    # the home's own enrollment sent by mallory's connection
    _refused(svc, mallory.gateway, home.enrollment(), "not_yours")
    # an enrollment under another purpose's consent
    other = rec.model_copy(update={"purpose": "community-energy", "subject": mallory.account, "sig": None})
    other = other.model_copy(update={"sig": mallory.keys.sign(other.signing_bytes())})
    bad = trading.enrollment(mallory.keys, mallory.gateway, rec, now=T0).model_copy(
        update={"consent": other, "account": mallory.account, "sig": None}
    )
    bad = bad.model_copy(update={"sig": mallory.keys.sign(bad.signing_bytes())})
    _refused(svc, mallory.gateway, bad.model_dump_json().encode(), "no_consent")
    # a gateway the CA never enrolled
    stranger = load_keys(city.base / "gw-unknown")
    rec = trading.consent_record(stranger, "gw-unknown", "c-u", "h", T0 - timedelta(days=1))
    join = trading.enrollment(stranger, "gw-unknown", rec, now=T0).model_dump_json().encode()
    _refused(svc, "gw-unknown", join, "unknown_gateway")
    # an order before joining, garbage, an order for a slot that began; the service keeps going
    _refused(svc, mallory.gateway, mallory.order("bid", "b1", slot_after(3), 100, 10), "not_joined")
    _refused(svc, mallory.gateway, b"{not json", "bad_json")
    _refused(svc, mallory.gateway, b'{"v": 2}', "schema_version")
    _refused(svc, home.gateway, home.order("offer", "o1", slot_after(1), 100, 10), "slot_closed", now=at(slot_after(1)))
    _ok(svc, home.gateway, home.order("offer", "o2", slot_after(3), 100, 10))
    _refused(svc, home.gateway, home.order("bid", "b2", slot_after(3), 100, 50), "self_trade")
    assert verify(svc.store.entries(), _ca(city)).ok


def test_withdrawal_ends_trading_and_keeps_tokens(svc: LedgerService, city: City) -> None:
    home, site, _ = _day(svc, city)
    later = slot_after(8)
    _ok(svc, site.gateway, site.order("bid", "b9", later, 500, 40))
    gone = site.consent.model_copy(update={"status": ConsentStatus.WITHDRAWN, "withdrawn_at": T0, "sig": None})
    gone = gone.model_copy(update={"sig": site.keys.sign(gone.signing_bytes())})
    leave = svc.handle(site.gateway, gone.model_dump_json().encode(), now=T0, consent=True)
    assert leave is not None and leave.kind == "leave"
    _refused(svc, site.gateway, site.order("bid", "b10", later, 500, 40), "left")
    _ok(svc, home.gateway, home.order("offer", "o9", later, 500, 10))
    match = svc.store.clear_slot(later, now=at(later - 60))
    assert match.body["pairs"] == []  # the site's open bid is not matched after it left
    assert svc.store.balances()[site.account] == 1800  # nothing destroyed
    assert verify(svc.store.entries(), _ca(city)).ok


# -- concurrency and the double-entry property -----------------------------------------------------------------
def test_concurrent_writers_append_one_chain(svc: LedgerService, city: City) -> None:
    homes = [city.home(f"home-{i:03d}") for i in range(4)]
    for h in homes:
        _ok(svc, h.gateway, h.enrollment())
    errors: list[BaseException] = []
    start = threading.Barrier(len(homes))

    def writer(h: Home) -> None:
        service = LedgerService(LedgerStore(svc.store.url), city.ca.gateway_keys_path)
        try:
            start.wait()
            for n in range(20):
                entry = service.handle(h.gateway, h.order("offer", f"o{n}", slot_after(4 + n), 100 + n, 10), now=T0)
                if entry is None:
                    errors.append(AssertionError(f"{h.gateway} o{n}: {service.counts}"))
        except BaseException as err:  # a thread's failure must fail the test
            errors.append(err)
        finally:
            service.store.close()

    threads = [threading.Thread(target=writer, args=(h,)) for h in homes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    entries = list(svc.store.entries())
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert sum(e.kind == "offer" for e in entries) == 80
    assert verify(entries, _ca(city)).ok


def test_balances_always_sum_to_zero_over_random_trades(svc: LedgerService, city: City) -> None:
    rng = random.Random(18)
    homes = [city.home(f"home-{i:03d}") for i in range(6)]
    for h in homes:
        _ok(svc, h.gateway, h.enrollment())
    minted = 0
    for n in range(1, 9):
        slot = slot_after(n + 1)
        now = at(slot - 3000)
        for i, h in enumerate(homes):
            kind = rng.choice(["offer", "bid", None])
            if kind is not None:
                order = h.order(kind, f"{kind}-{n}-{i}", slot, rng.randint(1, 4000), rng.randint(5, 40))
                _ok(svc, h.gateway, order, now=now)
        svc.tick(at(slot - 100))
        _, pairs = svc.store.clearing(slot) or (None, [])
        for h in homes:
            for direction, side in (("export", "seller"), ("import", "buyer")):
                paired = sum(p.wh for p in pairs if getattr(p, side) == h.account)
                if paired and rng.random() < 0.85:  # some meters never report
                    wh = max(0, paired + rng.randint(-1500, 800))
                    _ok(svc, h.gateway, h.meter(slot, direction, wh), now=at(slot + SLOT_S))
        made = svc.tick(at(slot + SLOT_S + 900))
        assert [e.kind for e in made][-2:] == ["settle", "checkpoint"]
        balances = svc.store.balances()
        assert sum(balances.values()) == 0
        assert all(wh >= 0 for a, wh in balances.items() if a != DELIVERY)
        minted = -balances.get(DELIVERY, 0)
    report = verify(svc.store.entries(), _ca(city))
    assert report.ok, report.problems
    assert report.minted == minted > 0 and report.checkpoints == 8
    # what a household reads is exactly the entries that name it
    every = list(svc.store.entries())
    for h in homes:
        mine = [e.seq for e in svc.store.entries_for(h.account)]
        assert mine == [e.seq for e in every if h.account in json.dumps(e.body) and e.kind != "checkpoint"]


def test_a_second_matcher_is_refused_not_doubled(svc: LedgerService, city: City) -> None:
    home, site = city.home("home-001"), city.home("site-001")
    for h in (home, site):
        _ok(svc, h.gateway, h.enrollment())
    slot = slot_after(2)
    _ok(svc, home.gateway, home.order("offer", "o1", slot, 1000, 10))
    _ok(svc, site.gateway, site.order("bid", "b1", slot, 1000, 10))
    with pytest.raises(LedgerError) as err:
        svc.store.clear_slot(slot, now=at(slot))
    assert err.value.cause == "late"
    svc.store.clear_slot(slot, now=at(slot - 60))
    with pytest.raises(LedgerError) as err:
        svc.store.clear_slot(slot, now=at(slot - 59))
    assert err.value.cause == "replayed"


def test_migrations_are_idempotent(ledger_db: str) -> None:
    from cloud_ingest.ledger.migrate import upgrade

    upgrade(ledger_db)
    upgrade(ledger_db)
    with psycopg.connect(ledger_db) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row == ("0001",)


# -- helpers: what a rogue operator with superuser rights could do ----------------------------------------------
def _insert(url: str, e: Entry) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ledger_entries (seq, kind, prev, body, sig, hash) VALUES (%s, %s, %s, %s, %s, %s)",
            (e.seq, e.kind, e.prev, Jsonb(e.body), e.sig, e.hash),
        )


def _tamper(url: str, sql: str, params: tuple[Any, ...]) -> None:
    """Run ``sql`` as a superuser who switched triggers and foreign keys off for the session."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql, params)  # type: ignore[arg-type]


def _rehash_from(url: str, seq: int) -> None:
    """Recompute ``hash`` and ``prev`` of every entry from ``seq`` on, so the chain itself looks intact."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT seq, kind, prev, body, sig FROM ledger_entries ORDER BY seq").fetchall()
        conn.execute("SET session_replication_role = replica")
        prev = None
        for s, kind, old_prev, body, sig in rows:
            p = old_prev if prev is None or s < seq else prev
            h = entry_hash(s, kind, p, body, sig)
            conn.execute("UPDATE ledger_entries SET prev = %s, hash = %s WHERE seq = %s", (p, h, s))
            prev = h


# -- a household reads its own entries -----------------------------------------------------------------------------
def test_a_household_reads_only_its_own_entries(svc: LedgerService, city: City) -> None:
    from starlette.testclient import TestClient

    from cloud_ingest.ledger.web import create_app

    home, site, _ = _day(svc, city)
    client = TestClient(create_app(svc.store, clock=T0.timestamp))
    url = f"/ledger/v1/accounts/{site.account}"
    res = client.get(url, headers=trading.read_headers(site.keys, site.household, now=T0))
    assert res.status_code == 200
    doc = res.json()
    assert doc["balance_wh"] == 1800
    assert [e["kind"] for e in doc["entries"]] == ["join", "bid", "match", "meter", "settle"]
    assert all(Entry.from_json(e).computed_hash() == e["hash"] for e in doc["entries"])
    # the home's signature for the site's account, no signature, a stale one, an unknown account: all 401
    for headers in (
        trading.read_headers(home.keys, home.household, now=T0),
        {},
        trading.read_headers(site.keys, site.household, now=T0 - timedelta(minutes=10)),
    ):
        assert client.get(url, headers=headers).status_code == 401
    assert (
        client.get("/ledger/v1/accounts/s-nobody", headers={"X-Kyojo-At": "1", "X-Kyojo-Sig": "x"}).status_code == 401
    )


# -- the city's ledger key changes hands ---------------------------------------------------------------------------
def test_the_ledger_key_is_handed_over(svc: LedgerService, city: City, tmp_path: Path) -> None:
    from cloud_ingest.ledger.chain import CitySigner
    from provisioning import pki

    home, site, _ = _day(svc, city)
    state = tmp_path / "ledger-2"
    code = city.ca.enroll("ledger-2", pki.Role.LEDGER)
    csr = pki.create_request(state, "ledger-2", code, pki.Role.LEDGER)
    pki.install_certificate(state, city.ca.sign_csr(csr.read_bytes()), city.ca.cert_path.read_bytes())
    new = CitySigner.load(state / "tls" / pki.KEY_NAME, state / "tls" / pki.CERT_NAME)
    later = slot_after(8)
    _ok(svc, home.gateway, home.order("offer", "o8", later, 500, 10))
    _ok(svc, site.gateway, site.order("bid", "b8", later, 500, 30))
    # a matcher started with the new key before the handover is refused: it would sign a ledger nobody can verify
    with LedgerStore(svc.store.url, new) as early, pytest.raises(LedgerError) as err:
        early.clear_slot(later, now=at(later - 60))
    assert err.value.cause == "not_the_ledger_key"
    handover = svc.store.rotate_key(new, now=at(later - 120))
    assert handover.kind == "key"
    with LedgerStore(svc.store.url, new) as store:
        store.clear_slot(later, now=at(later - 60))
        store.checkpoint(now=at(later - 30))
    report = verify(svc.store.entries(), _ca(city))
    assert report.ok, report.problems
    # a key entry naming a certificate from another CA: every entry it would vouch for is untrusted
    other = make_city(tmp_path / "elsewhere")
    with LedgerStore(svc.store.url, new) as store:
        store.rotate_key(other.signer, now=at(later - 20))
    assert "untrusted_ledger_key" in verify(svc.store.entries(), _ca(city)).causes

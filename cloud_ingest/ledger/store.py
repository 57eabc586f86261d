"""The ledger in PostgreSQL (psycopg 3): every append checks, signs where the city signs, chains and indexes in one
transaction that holds the head row's lock, so concurrent writers (several intake processes, the matcher) append
one after another, never on the same ``prev``.

Tables (migrations in ``migrations/``, Alembic): ``ledger_entries`` (append-only: a trigger refuses UPDATE and
DELETE), ``ledger_head`` (one row: the last entry's number and hash), and index tables that only ever follow the
entries (``accounts``, ``orders``, ``meter_reports``, ``clearings``, ``settlements``, ``balances``); their UNIQUE
constraints are the second line against a replayed message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg.types.json import Jsonb

from cloud_ingest.ledger.chain import (
    GENESIS_PREV,
    CitySigner,
    Entry,
    LedgerError,
    account_entry,
    ed25519_ok,
)
from cloud_ingest.ledger.market import DELIVERY, MatchPair, Order, clear, settle
from kyojo.contract.wire import (
    SLOT_S,
    TRADING_PURPOSE,
    ConsentRecord,
    ConsentStatus,
    MeterReport,
    TradeOrder,
    TradingEnrollment,
)

__all__ = ["LedgerStore"]

log = logging.getLogger(__name__)

RULES = {
    "unit": "1 token = 1 Wh delivered",
    "slot_s": SLOT_S,
    "clearing": "uniform-price double auction per slot, before the slot begins (cloud_ingest/ledger/market.py)",
    "settlement": "delivered = min(paired, seller's metered export, buyer's metered import); minted from 'delivery' "
    "to the seller, moved to the buyer; shortfall and excess are settled with the grid, not in tokens",
}

_Cur = psycopg.Cursor[tuple[Any, ...]]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


class LedgerStore:
    """One connection to the ledger's database. ``signer``: the city's ledger key, needed for the city's entries
    (enrolment, clearing, settlement, checkpoints); accepting household messages needs it too (joins are the
    city's). Open with :meth:`open` (runs the migrations) or use as a context manager."""

    def __init__(self, url: str, signer: CitySigner | None = None) -> None:
        self.url = url
        self.signer = signer
        self._key_checked = False
        self._conn = psycopg.connect(url, autocommit=True)

    @classmethod
    def open(cls, url: str, signer: CitySigner | None = None, *, now: datetime | None = None) -> LedgerStore:
        """Migrate the schema, connect, and write the genesis entry if the ledger is empty (needs ``signer``)."""
        from cloud_ingest.ledger.migrate import upgrade

        upgrade(url)
        store = cls(url, signer)
        if signer is not None and store.head()[0] == 0:
            store.genesis(now or datetime.now(UTC))
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        row = self._conn.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    def entries(self, after: int = 0) -> Iterator[Entry]:
        """Every entry after ``after``, in order."""
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT seq, kind, prev, body, sig, hash FROM ledger_entries WHERE seq > %s ORDER BY seq", (after,)
            )
            for seq, kind, prev, body, sig, digest in cur:
                yield Entry(int(seq), str(kind), str(prev), dict(body), sig, str(digest))

    def entries_for(self, account: str) -> list[Entry]:
        """The entries that concern one account: its join and leave, its orders and meter reports, and the
        clearings and settlements that name it (what its household's page shows)."""
        rows = self._conn.execute(
            """SELECT seq, kind, prev, body, sig, hash FROM ledger_entries
               WHERE body->>'account' = %(a)s
                  OR (kind = 'match' AND (body->'pairs' @> %(seller)s OR body->'pairs' @> %(buyer)s))
                  OR (kind = 'settle' AND body->'transfers' @> %(moved)s)
               ORDER BY seq""",
            {
                "a": account,
                "seller": Jsonb([{"seller": account}]),
                "buyer": Jsonb([{"buyer": account}]),
                "moved": Jsonb([[account]]),  # a transfer [from, to, wh] that names the account
            },
        ).fetchall()
        return [Entry(int(r[0]), str(r[1]), str(r[2]), dict(r[3]), r[4], str(r[5])) for r in rows]

    def key_entries(self) -> list[Entry]:
        """The genesis and every ``key`` entry, in order: the ledger's keys and when each took over (a household's
        gateway checks the city's signatures on its own entries with them)."""
        rows = self._conn.execute(
            "SELECT seq, kind, prev, body, sig, hash FROM ledger_entries WHERE kind IN ('genesis', 'key') ORDER BY seq"
        ).fetchall()
        return [Entry(int(r[0]), str(r[1]), str(r[2]), dict(r[3]), r[4], str(r[5])) for r in rows]

    def account_key(self, account: str) -> str | None:
        """The trading key ``account`` joined with (None: never joined)."""
        row = self._conn.execute("SELECT key FROM accounts WHERE account = %s", (account,)).fetchone()
        return None if row is None else str(row[0])

    def balances(self) -> dict[str, int]:
        return {str(a): int(w) for a, w in self._conn.execute("SELECT account, wh FROM balances ORDER BY account")}

    def clearing(self, slot: int) -> tuple[int | None, list[MatchPair]] | None:
        row = self._conn.execute(
            "SELECT c.price, e.body FROM clearings c JOIN ledger_entries e ON e.seq = c.seq WHERE c.slot = %s", (slot,)
        ).fetchone()
        if row is None:
            return None
        return row[0], [MatchPair.from_json(p) for p in row[1]["pairs"]]

    # -- appending ----------------------------------------------------------------------------------------------
    def _append(self, build: Callable[[_Cur, int, str], Entry], index: Callable[[_Cur, Entry], None]) -> Entry:
        """Lock the head, build the entry at the next number, insert it, update the index tables and the head: one
        transaction, so a refusal (LedgerError) or a crash leaves nothing behind."""
        with self._conn.transaction(), self._conn.cursor() as cur:
            row = cur.execute("SELECT seq, hash FROM ledger_head WHERE id = 1 FOR UPDATE").fetchone()
            assert row is not None, "ledger_head row missing: run the migrations"
            seq, prev = int(row[0]) + 1, str(row[1])
            entry = build(cur, seq, prev)
            cur.execute(
                "INSERT INTO ledger_entries (seq, kind, prev, body, sig, hash) VALUES (%s, %s, %s, %s, %s, %s)",
                (entry.seq, entry.kind, entry.prev, Jsonb(entry.body), entry.sig, entry.hash),
            )
            index(cur, entry)
            cur.execute("UPDATE ledger_head SET seq = %s, hash = %s WHERE id = 1", (entry.seq, entry.hash))
        return entry

    def _city(self) -> CitySigner:
        """The city's signer, once it is checked to be the ledger's current key (the last genesis or key entry's):
        entries signed by any other key would break the ledger for everyone who verifies it."""
        if self.signer is None:
            raise LedgerError("no_ledger_key", "this store was opened without the city's ledger key")
        if not self._key_checked:
            row = self._conn.execute(
                "SELECT body->>'cert' FROM ledger_entries WHERE kind IN ('genesis', 'key') ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if row is not None and not self.signer.same_key(str(row[0]).encode()):
                raise LedgerError(
                    "not_the_ledger_key",
                    "the ledger is signed by another key: hand over with `kyojo ledger rotate-key` (by that key)",
                )
            self._key_checked = row is not None
        return self.signer

    def rotate_key(self, new: CitySigner, *, now: datetime) -> Entry:
        """Hand the ledger over to ``new`` (its certificate issued by the city CA, role ``ledger``): a ``key`` entry
        signed by the current key; every later city entry is signed by ``new``."""
        old = self._city()

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            return old.make(seq, "key", prev, {"cert": new.cert_pem.decode(), "at": _iso(now)})

        entry = self._append(build, lambda cur, e: None)
        self.signer, self._key_checked = new, True
        return entry

    def genesis(self, now: datetime) -> Entry:
        signer = self._city()

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            if seq != 1 or prev != GENESIS_PREV:
                raise LedgerError("replayed", "the ledger already has its genesis")
            body = {"ledger": "kyojo-energy-trading", "cert": signer.cert_pem.decode(), "rules": RULES, "at": _iso(now)}
            return signer.make(seq, "genesis", prev, body)

        return self._append(build, lambda cur, e: None)

    def enroll(self, msg: TradingEnrollment, *, gateway: str, gateway_key: str | None, now: datetime) -> Entry:
        """A household joins. ``gateway``: the identity the transport proved (the mTLS certificate's CN, chained to
        the city CA); ``gateway_key``: that gateway's signing key as the CA registered it at enrollment. The message
        and its consent record must both be that gateway's, signed with that key; the account must be the consent's
        subject, under an active energy-trading consent. The ledger records only the account and its trading key."""
        signer = self._city()
        if msg.gateway != gateway or msg.consent.gateway != gateway:
            raise LedgerError("not_yours", f"{gateway} sent an enrollment naming {msg.gateway}/{msg.consent.gateway}")
        if gateway_key is None:
            raise LedgerError("unknown_gateway", f"{gateway} has no registered signing key")
        if not ed25519_ok(gateway_key, msg.signing_bytes(), msg.sig):
            raise LedgerError("bad_signature", "enrollment not signed by the gateway's registered key")
        consent = msg.consent
        if not ed25519_ok(gateway_key, consent.signing_bytes(), consent.sig):
            raise LedgerError("bad_signature", "consent record not signed by the gateway's registered key")
        if consent.purpose != TRADING_PURPOSE or consent.subject != msg.account or not consent.active_at(now):
            raise LedgerError("no_consent", f"no active {TRADING_PURPOSE} consent for {msg.account}")

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            row = cur.execute("SELECT key, consent FROM accounts WHERE account = %s", (msg.account,)).fetchone()
            if row is not None:
                same = row[0] == msg.key and row[1] == consent.id
                raise LedgerError("replayed" if same else "account_taken", msg.account)
            return signer.make(seq, "join", prev, {"account": msg.account, "key": msg.key, "at": _iso(now)})

        def index(cur: _Cur, e: Entry) -> None:
            cur.execute(
                "INSERT INTO accounts (account, key, consent, joined_seq) VALUES (%s, %s, %s, %s)",
                (msg.account, msg.key, consent.id, e.seq),
            )
            cur.execute("INSERT INTO balances (account, wh) VALUES (%s, 0) ON CONFLICT DO NOTHING", (msg.account,))

        return self._append(build, index)

    def withdraw(self, record: ConsentRecord, *, gateway: str, gateway_key: str | None, now: datetime) -> Entry:
        """The household withdrew its energy-trading consent: the account leaves (no new orders, its open ones are
        not matched; slots already cleared still settle; its tokens stay, nothing is destroyed)."""
        signer = self._city()
        if record.gateway != gateway:
            raise LedgerError("not_yours", f"{gateway} sent a record of {record.gateway}")
        if gateway_key is None or not ed25519_ok(gateway_key, record.signing_bytes(), record.sig):
            raise LedgerError("bad_signature", "withdrawal not signed by the gateway's registered key")
        if record.purpose != TRADING_PURPOSE or record.status is ConsentStatus.ACTIVE:
            raise LedgerError("no_consent", "not a withdrawn or expired energy-trading consent")

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            row = cur.execute(
                "SELECT left_seq FROM accounts WHERE account = %s AND consent = %s", (record.subject, record.id)
            ).fetchone()
            if row is None:
                raise LedgerError("not_joined", record.subject)
            if row[0] is not None:
                raise LedgerError("replayed", f"{record.subject} already left")
            return signer.make(seq, "leave", prev, {"account": record.subject, "at": _iso(now)})

        def index(cur: _Cur, e: Entry) -> None:
            cur.execute("UPDATE accounts SET left_seq = %s WHERE account = %s", (e.seq, record.subject))

        return self._append(build, index)

    def _account_key(self, cur: _Cur, account: str, *, active: bool) -> str:
        row = cur.execute("SELECT key, left_seq FROM accounts WHERE account = %s", (account,)).fetchone()
        if row is None:
            raise LedgerError("not_joined", account)
        if active and row[1] is not None:
            raise LedgerError("left", f"{account} left the ledger")
        return str(row[0])

    def _signed_by_account(self, cur: _Cur, msg: TradeOrder | MeterReport, *, active: bool, what: str) -> None:
        """``msg`` carries the signature of its account's trading key (``active``: the account has not left);
        :class:`LedgerError` ``bad_signature`` (forged) otherwise."""
        key = self._account_key(cur, msg.account, active=active)
        if not ed25519_ok(key, msg.signing_bytes(), msg.sig):
            raise LedgerError("bad_signature", f"{what} of {msg.account} not signed by it (forged)")

    def submit_order(self, order: TradeOrder, *, now: datetime) -> Entry:
        """An offer or a bid for a future slot, signed with its account's trading key."""

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            self._signed_by_account(cur, order, active=True, what=f"{order.kind} {order.id}")
            if cur.execute(
                "SELECT 1 FROM orders WHERE account = %s AND kind = %s AND order_id = %s",
                (order.account, order.kind, order.id),
            ).fetchone():
                raise LedgerError("replayed", f"{order.kind} {order.id} of {order.account} is already on the ledger")
            if (
                order.slot <= now.timestamp()
                or cur.execute("SELECT 1 FROM clearings WHERE slot = %s", (order.slot,)).fetchone()
            ):
                raise LedgerError("slot_closed", f"slot {order.slot} is cleared or has begun")
            other = "bid" if order.kind == "offer" else "offer"
            if cur.execute(
                "SELECT 1 FROM orders WHERE account = %s AND slot = %s AND kind = %s",
                (order.account, order.slot, other),
            ).fetchone():
                raise LedgerError("self_trade", f"{order.account} already has a {other} for slot {order.slot}")
            return account_entry(seq, order.kind, prev, order)

        def index(cur: _Cur, e: Entry) -> None:
            cur.execute(
                "INSERT INTO orders (seq, account, kind, order_id, slot, wh, price) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (e.seq, order.account, order.kind, order.id, order.slot, order.wh, order.price),
            )

        return self._append(build, index)

    def submit_meter(self, report: MeterReport, *, now: datetime) -> Entry:
        """A metered export or import for a cleared slot that has ended and is not settled yet."""

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            self._signed_by_account(cur, report, active=False, what="meter report")
            if cur.execute(
                "SELECT 1 FROM meter_reports WHERE account = %s AND slot = %s AND direction = %s",
                (report.account, report.slot, report.direction),
            ).fetchone():
                raise LedgerError("replayed", f"{report.direction} of {report.account} for slot {report.slot}")
            if now.timestamp() < report.slot + SLOT_S:
                raise LedgerError("too_early", f"slot {report.slot} has not ended")
            if not cur.execute("SELECT 1 FROM clearings WHERE slot = %s", (report.slot,)).fetchone():
                raise LedgerError("no_trade", f"slot {report.slot} was never cleared")
            if cur.execute("SELECT 1 FROM settlements WHERE slot = %s", (report.slot,)).fetchone():
                raise LedgerError("slot_settled", f"slot {report.slot} is settled")
            return account_entry(seq, "meter", prev, report)

        def index(cur: _Cur, e: Entry) -> None:
            cur.execute(
                "INSERT INTO meter_reports (seq, account, slot, direction, wh) VALUES (%s, %s, %s, %s, %s)",
                (e.seq, report.account, report.slot, report.direction, report.wh),
            )

        return self._append(build, index)

    def clear_slot(self, slot: int, *, now: datetime) -> Entry:
        """Clear ``slot`` before it begins (the rule: :mod:`cloud_ingest.ledger.market`); an empty book is cleared
        too, so a late order for it is refused either way."""
        signer = self._city()
        if slot % SLOT_S:
            raise LedgerError("not_a_slot", str(slot))
        if now.timestamp() >= slot:
            raise LedgerError("late", f"slot {slot} has begun: it can no longer be cleared")
        found: dict[str, Any] = {}

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            if cur.execute("SELECT 1 FROM clearings WHERE slot = %s", (slot,)).fetchone():
                raise LedgerError("replayed", f"slot {slot} is already cleared")
            rows = cur.execute(
                """SELECT o.seq, o.kind, o.account, o.wh, o.price FROM orders o JOIN accounts a USING (account)
                   WHERE o.slot = %s AND a.left_seq IS NULL ORDER BY o.seq""",
                (slot,),
            ).fetchall()
            offers = [Order(int(r[0]), str(r[2]), int(r[3]), int(r[4])) for r in rows if r[1] == "offer"]
            bids = [Order(int(r[0]), str(r[2]), int(r[3]), int(r[4])) for r in rows if r[1] == "bid"]
            price, pairs = clear(offers, bids)
            found["price"] = price
            body = {"slot": slot, "price": price, "pairs": [p.to_json() for p in pairs], "at": _iso(now)}
            return signer.make(seq, "match", prev, body)

        def index(cur: _Cur, e: Entry) -> None:
            cur.execute("INSERT INTO clearings (slot, seq, price) VALUES (%s, %s, %s)", (slot, e.seq, found["price"]))

        return self._append(build, index)

    def settle_slot(self, slot: int, *, now: datetime) -> Entry:
        """Settle a cleared slot after it ended, from the meter reports on the ledger (the rule:
        :mod:`cloud_ingest.ledger.market`). A side that never reported counts as 0 delivered."""
        signer = self._city()
        if now.timestamp() < slot + SLOT_S:
            raise LedgerError("too_early", f"slot {slot} has not ended")
        moves: list[list[Any]] = []

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            row = cur.execute(
                "SELECT e.body FROM clearings c JOIN ledger_entries e ON e.seq = c.seq WHERE c.slot = %s", (slot,)
            ).fetchone()
            if row is None:
                raise LedgerError("no_trade", f"slot {slot} was never cleared")
            if cur.execute("SELECT 1 FROM settlements WHERE slot = %s", (slot,)).fetchone():
                raise LedgerError("replayed", f"slot {slot} is already settled")
            pairs = [MatchPair.from_json(p) for p in row[0]["pairs"]]
            meters: Mapping[tuple[str, int, str], int] = {
                (str(a), slot, str(d)): int(w)
                for a, d, w in cur.execute(
                    "SELECT account, direction, wh FROM meter_reports WHERE slot = %s", (slot,)
                ).fetchall()
            }
            moves.extend(settle(pairs, meters, slot))
            return signer.make(seq, "settle", prev, {"slot": slot, "transfers": moves, "at": _iso(now)})

        def index(cur: _Cur, e: Entry) -> None:
            cur.execute("INSERT INTO settlements (slot, seq) VALUES (%s, %s)", (slot, e.seq))
            for frm, to, wh in moves:
                for account, delta in ((frm, -wh), (to, wh)):
                    cur.execute(
                        "INSERT INTO balances (account, wh) VALUES (%s, %s) "
                        "ON CONFLICT (account) DO UPDATE SET wh = balances.wh + EXCLUDED.wh",
                        (account, delta),
                    )

        return self._append(build, index)

    def checkpoint(self, *, now: datetime) -> Entry:
        """The city signs the head and every balance: any participant can check a copy against it offline."""
        signer = self._city()

        def build(cur: _Cur, seq: int, prev: str) -> Entry:
            bal = {str(a): int(w) for a, w in cur.execute("SELECT account, wh FROM balances WHERE wh <> 0").fetchall()}
            if sum(bal.values()) != 0:  # an invariant of every settlement; refuse to vouch for anything else
                raise LedgerError("unbalanced", f"balances sum to {sum(bal.values())}")
            body = {"head_seq": seq - 1, "head": prev, "balances": dict(sorted(bal.items())), "at": _iso(now)}
            return signer.make(seq, "checkpoint", prev, body)

        return self._append(build, lambda cur, e: None)

    def slots_to_clear(self, now: datetime) -> list[int]:
        """Future slots with orders that are not cleared yet."""
        rows = self._conn.execute(
            "SELECT DISTINCT slot FROM orders WHERE slot > %s AND slot NOT IN (SELECT slot FROM clearings) "
            "ORDER BY slot",
            (int(now.timestamp()),),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def slots_to_settle(self, now: datetime) -> list[int]:
        """Cleared slots that ended and are not settled yet."""
        rows = self._conn.execute(
            "SELECT slot FROM clearings WHERE slot + %s <= %s AND slot NOT IN (SELECT slot FROM settlements) "
            "ORDER BY slot",
            (SLOT_S, int(now.timestamp())),
        ).fetchall()
        return [int(r[0]) for r in rows]


#: the account every token is minted from (re-exported for the CLI)
DELIVERY_ACCOUNT = DELIVERY

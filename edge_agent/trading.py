"""The gateway's side of the energy-trading ledger: the signed messages it sends (``kyojo/v1/<gw>/trade/...``).

Everything is signed on the gateway, with keys that never leave it (:mod:`kyojo.keys`):

- the enrollment with the gateway's enrolled signing key (the one the city CA registered), so the city can tell
  which gateway asks; it carries the household's signed ``energy-trading`` consent record and the household's
  trading key;
- offers, bids and meter reports with the trading key alone (derived for this purpose only), so the ledger and
  everyone who reads it see the household's energy-trading pseudonym and nothing that links it to the gateway.

A household takes part only under an active ``energy-trading`` consent: :func:`enrollment` refuses otherwise.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from typing import Literal

from edge_agent import audit
from edge_agent.consent import Consent
from edge_agent.db import meta_add, tx
from kyojo.contract.wire import (
    SLOT_S,
    TRADING_PURPOSE,
    ConsentRecord,
    ConsentStatus,
    MeterReport,
    TradeOrder,
    TradingEnrollment,
    read_challenge,
    trade_topic,
)
from kyojo.keys import GatewayKeys

__all__ = [
    "account",
    "consent_of",
    "consent_record",
    "enrollment",
    "meter_report",
    "next_slot",
    "note_order",
    "order",
    "queue",
    "read_headers",
]

#: who receives trading messages (the catalog's controller of ``energy-trading``), for the household's log
RECIPIENT = "City Mobility and Energy Office"


def account(keys: GatewayKeys, household: str) -> str:
    """The household's account on the ledger: its energy-trading pseudonym."""
    return keys.pseudonym(TRADING_PURPOSE, household)


def next_slot(now: datetime) -> int:
    """The start (UTC epoch seconds) of the first slot that begins after ``now``."""
    t = int(now.timestamp())
    return (t // SLOT_S + 1) * SLOT_S


def consent_record(
    keys: GatewayKeys, gateway: str, consent_id: str, household: str, given_at: datetime
) -> ConsentRecord:
    """The cloud's copy of an active energy-trading consent, signed as the consent store signs it."""
    rec = ConsentRecord(
        gateway=gateway,
        id=consent_id,
        subject=account(keys, household),
        purpose=TRADING_PURPOSE,
        categories=["energy"],
        status=ConsentStatus.ACTIVE,
        given_at=given_at,
    )
    return rec.model_copy(update={"sig": keys.sign(rec.signing_bytes())})


def enrollment(keys: GatewayKeys, gateway: str, consent: ConsentRecord, *, now: datetime) -> TradingEnrollment:
    """Join the ledger under ``consent`` (the cloud's signed copy of an energy-trading consent)."""
    if consent.purpose != TRADING_PURPOSE or not consent.active_at(now):
        raise ValueError(f"no active {TRADING_PURPOSE} consent: the household does not take part")
    msg = TradingEnrollment(
        gateway=gateway,
        account=consent.subject,
        key=keys.purpose_public_key_b64(TRADING_PURPOSE),
        consent=consent,
        made_at=now.astimezone(UTC),
    )
    return msg.model_copy(update={"sig": keys.sign(msg.signing_bytes())})


def order(
    keys: GatewayKeys,
    household: str,
    kind: Literal["offer", "bid"],
    order_id: str,
    *,
    slot: int,
    wh: int,
    price: int,
    now: datetime,
) -> TradeOrder:
    """An offer (a forecast surplus) or a bid for ``slot``, ``wh`` watt-hours at ``price`` yen per kWh."""
    msg = TradeOrder(
        kind=kind,
        id=order_id,
        account=account(keys, household),
        slot=slot,
        wh=wh,
        price=price,
        made_at=now.astimezone(UTC),
    )
    return msg.model_copy(update={"sig": keys.purpose_sign(TRADING_PURPOSE, msg.signing_bytes())})


def meter_report(
    keys: GatewayKeys,
    household: str,
    *,
    slot: int,
    direction: Literal["export", "import"],
    wh: int,
    now: datetime,
) -> MeterReport:
    """What the meter measured over ``slot`` (export for a seller, import for a buyer)."""
    msg = MeterReport(
        account=account(keys, household), slot=slot, direction=direction, wh=wh, made_at=now.astimezone(UTC)
    )
    return msg.model_copy(update={"sig": keys.purpose_sign(TRADING_PURPOSE, msg.signing_bytes())})


def read_headers(keys: GatewayKeys, household: str, *, now: datetime) -> dict[str, str]:
    """The headers that let the household read its own ledger entries (``GET /ledger/v1/accounts/<account>``)."""
    at = int(now.timestamp())
    sig = keys.purpose_sign(TRADING_PURPOSE, read_challenge(account(keys, household), at))
    return {"X-Kyojo-At": str(at), "X-Kyojo-Sig": sig}


def consent_of(keys: GatewayKeys, gateway: str, c: Consent) -> ConsentRecord:
    """The cloud's signed copy of the household's energy-trading consent ``c`` (from the gateway's consent store),
    for :func:`enrollment`."""
    if c.purpose != TRADING_PURPOSE:
        raise ValueError(f"{c.id} is a {c.purpose} consent, not {TRADING_PURPOSE}")
    rec = ConsentRecord(
        gateway=gateway,
        id=c.id,
        subject=account(keys, c.subject),
        purpose=c.purpose,
        categories=sorted(c.categories),
        status=c.status,
        given_at=datetime.fromtimestamp(c.given_at / 1000, tz=UTC),
        expires_at=None if c.expires_at is None else datetime.fromtimestamp(c.expires_at / 1000, tz=UTC),
        withdrawn_at=None if c.withdrawn_at is None else datetime.fromtimestamp(c.withdrawn_at / 1000, tz=UTC),
    )
    return rec.model_copy(update={"sig": keys.sign(rec.signing_bytes())})


def note_order(conn: sqlite3.Connection, slot: int, kind: str) -> None:
    """Remember (table ``trade_slots``, edge_agent/db.py) that the household ordered in ``slot`` (``offer`` -> its
    export is reported, ``bid`` -> import). Called in the transaction that queues the order."""
    direction = "export" if kind == "offer" else "import"
    conn.execute("INSERT OR IGNORE INTO trade_slots(slot, direction) VALUES(?, ?)", (slot, direction))


def queue(
    conn: sqlite3.Connection,
    gateway: str,
    msg: TradingEnrollment | TradeOrder | MeterReport,
    *,
    consent: str,
    now_ms: int,
) -> int:
    """Put a signed trading message in the gateway's outbox (the publisher sends it with QoS 1 on
        ``kyojo/v1/<gw>/trade/<enroll|order|meter>``; the row leaves only on PUBACK) and in the household's audit log,
        in one transaction (the audit entry keeps the signed message itself, so the household's page can hold the ledger
    to it). Filed under the energy-trading ``consent``: a withdrawal drops what is still queued.
        Returns the outbox sequence number."""
    kind = "enroll" if isinstance(msg, TradingEnrollment) else "order" if isinstance(msg, TradeOrder) else "meter"
    topic = trade_topic(gateway, kind)
    payload = msg.model_dump_json().encode()
    with tx(conn):
        seq = meta_add(conn, "seq", 1)
        conn.execute(
            "INSERT INTO outbox(seq, topic, payload, retain, consent, items, created) VALUES(?, ?, ?, 0, ?, 1, ?)",
            (seq, topic, payload, consent, now_ms),
        )
        if isinstance(msg, TradeOrder):  # its slot's metered value is reported after it (edge_agent.trade_meter)
            note_order(conn, msg.slot, msg.kind)
        audit.append(
            conn,
            "release",
            {
                "seq": seq,
                "topic": topic,
                "consent": consent,
                "subject": getattr(msg, "account", ""),
                "purpose": TRADING_PURPOSE,
                "category": "energy",
                "items": 1,
                "events": [f"trade.{kind}"],
                "sha256": hashlib.sha256(payload).hexdigest(),
                "recipient": RECIPIENT,
                # the signed message itself: the household's own copy, which its page compares with the ledger
                "message": msg.model_dump(mode="json"),
            },
            now_ms,
        )
    return seq

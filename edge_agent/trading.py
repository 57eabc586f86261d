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

from datetime import UTC, datetime
from typing import Literal

from kyojo.contract.wire import (
    SLOT_S,
    TRADING_PURPOSE,
    ConsentRecord,
    ConsentStatus,
    MeterReport,
    TradeOrder,
    TradingEnrollment,
    read_challenge,
)
from kyojo.keys import GatewayKeys

__all__ = ["account", "consent_record", "enrollment", "meter_report", "next_slot", "order", "read_headers"]


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

"""The ledger's intake and its clock: household messages in (refused ones typed, counted and logged, never fatal),
and the matcher's tick (clear the next slot before it begins, settle ended slots, checkpoint).

A message arrives with the identity its transport proved (the MQTT topic ``kyojo/v1/<gw>/trade/...`` that the
broker lets only the gateway with that certificate write; or any other channel that authenticates the gateway with
its certificate). Enrollments and withdrawals are checked against that gateway's registered signing key; orders and
meter reports against the trading key the account joined with, so a gateway can only ever act for its own account.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cloud_ingest.ledger.chain import Entry, LedgerError
from cloud_ingest.ledger.store import LedgerStore
from kyojo.contract.wire import (
    SLOT_S,
    ConsentRecord,
    MeterReport,
    TradeOrder,
    TradingEnrollment,
    WireError,
    decode_trade,
)

__all__ = ["LedgerService", "Timing"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timing:
    """When the matcher acts: a slot is cleared once it is less than ``gate_s`` away (gate closure: later orders for
    it are refused) and settled ``grace_s`` after it ended (time for both meters to report)."""

    gate_s: int = 300
    grace_s: int = 900


class LedgerService:
    """Household messages -> the store; :meth:`tick` runs the matcher. ``gateway_keys``: the CA's registry of
    gateway signing keys, ``{gateway: base64 Ed25519 key}``, or the path of the file the CA writes
    (``<ca>/gateway_keys.json``, the ingester's ``gateway_keys``), read again when a gateway is not in it."""

    def __init__(
        self, store: LedgerStore, gateway_keys: Mapping[str, str] | Path, timing: Timing | None = None
    ) -> None:
        self.store = store
        self._keys_path = gateway_keys if isinstance(gateway_keys, Path) else None
        self.gateway_keys: dict[str, str] = {} if isinstance(gateway_keys, Path) else dict(gateway_keys)
        self.timing = timing or Timing()
        self.counts: Counter[str] = Counter()

    def _gateway_key(self, gateway: str) -> str | None:
        if gateway not in self.gateway_keys and self._keys_path is not None:
            try:
                doc = json.loads(self._keys_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                log.warning("ledger: cannot read %s: %s", self._keys_path, err)
                return None
            self.gateway_keys = {str(k): str(v) for k, v in doc.items()}
        return self.gateway_keys.get(gateway)

    def handle(self, gateway: str, payload: bytes, *, now: datetime, consent: bool = False) -> Entry | None:
        """One message from ``gateway``: the entry it became, or None when refused (counted as ``refused:<cause>``
        and logged once per cause). ``consent``: the payload is a consent record (a withdrawal)."""
        try:
            if consent:
                record = ConsentRecord.model_validate_json(payload)
                entry = self.withdraw(gateway, record, now=now)
            else:
                entry = self.accept(gateway, decode_trade(payload), now=now)
        except (WireError, LedgerError, ValueError) as err:
            cause = getattr(err, "cause", "invalid")
            self.counts[f"refused:{cause}"] += 1
            if self.counts[f"refused:{cause}"] == 1:
                log.warning("ledger: refused a message from %s: %s", gateway, err)
            else:
                log.debug("ledger: refused a message from %s: %s", gateway, err)
            return None
        self.counts[f"accepted:{entry.kind}"] += 1
        return entry

    def accept(self, gateway: str, msg: TradingEnrollment | TradeOrder | MeterReport, *, now: datetime) -> Entry:
        """Append one decoded message; LedgerError when refused."""
        if isinstance(msg, TradingEnrollment):
            return self.store.enroll(msg, gateway=gateway, gateway_key=self._gateway_key(gateway), now=now)
        if isinstance(msg, TradeOrder):
            return self.store.submit_order(msg, now=now)
        return self.store.submit_meter(msg, now=now)

    def withdraw(self, gateway: str, record: ConsentRecord, *, now: datetime) -> Entry:
        return self.store.withdraw(record, gateway=gateway, gateway_key=self._gateway_key(gateway), now=now)

    def tick(self, now: datetime) -> list[Entry]:
        """Clear every slot with orders that starts within the gate, settle every cleared slot whose grace is over,
        and checkpoint after any settlement. Idempotent, and safe with a second matcher running (the one that comes
        second is refused and counts it): run it every minute (``kyojo ledger tick``)."""
        made: list[Entry] = []
        t = now.timestamp()
        for slot in self.store.slots_to_clear(now):
            if slot - t <= self.timing.gate_s:
                self._city_op(made, self.store.clear_slot, slot, now)
        settled = False
        for slot in self.store.slots_to_settle(now):
            if t >= slot + SLOT_S + self.timing.grace_s:
                settled |= self._city_op(made, self.store.settle_slot, slot, now)
        if settled:
            made.append(self.store.checkpoint(now=now))
        return made

    def _city_op(self, made: list[Entry], op: Callable[..., Entry], slot: int, now: datetime) -> bool:
        try:
            made.append(op(slot, now=now))
        except LedgerError as err:
            self.counts[f"matcher:{err.cause}"] += 1
            log.info("ledger: slot %d: %s", slot, err)
            return False
        return True

"""Metered values for the household's traded slots, from the home's own smart meter (issue 18 section 2).

The city settles a traded 30-minute slot from what both sides' meters measured over it (``cloud_ingest.ledger``).
This gateway measures it itself: ``[trading] meter`` names its B-route meter (``kind = "bmeter"`` with ``export =
true``), whose cumulative registers come in as ``energy`` of ``<meter>`` (0xE0, bought from the grid) and of
``<meter>-export`` (0xE3, sold to it). :class:`SlotMeters` keeps each register's value at every slot boundary
(interpolated between the two readings around it, only when they are at most :data:`MAX_GAP_S` apart: a gap would
be a guess), and, :data:`DELAY_S` after a slot in which the household placed an order ends, queues a signed meter
report: ``export`` for a slot it offered in, ``import`` for one it bid in (:func:`edge_agent.trading.queue`, under
its energy-trading consent, in the audit log like every release).

Only those slots are reported: the city learns nothing of the home's use in slots it did not trade. A slot the
meter did not cover (a gap around a boundary, a restart) is given up after :data:`GIVE_UP_S` and counted, never
estimated; a slot whose consent was withdrawn is not reported.

Offers from the home's own forecast (``[trading] offer_price``). Every measured slot's export and import stay on
the gateway (table ``slot_energy``, :data:`HISTORY_DAYS` days; never sent). :meth:`SlotMeters.offers` offers, for
the slot that begins ``offer_ahead`` from now, what the home is fairly sure to sell: the lower quartile of what it
exported in the same half hour on the last :data:`HISTORY_DAYS` days (at least :data:`MIN_DAYS` of them measured),
times ``offer_share``, if that is at least :data:`MIN_OFFER_WH`; once per slot, only after the household joined the
ledger (``kyojo trade join``) and while its energy-trading consent is active.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime

from edge_agent import audit, consent, trading
from kyojo.contract.vocab import Reading
from kyojo.contract.wire import SLOT_S, TRADING_PURPOSE
from kyojo.keys import GatewayKeys

log = logging.getLogger(__name__)

#: two readings further apart than this do not give a boundary's value (s)
MAX_GAP_S = 600.0
#: a slot is reported this long after it ends (the reading after its end boundary must have come)
DELAY_S = 120.0
#: a slot still without both boundaries this long after it ended is given up (s)
GIVE_UP_S = 6 * 3600.0
#: boundaries kept per register (two days)
KEEP = 96
#: days of per-slot energy kept on the gateway for the forecast
HISTORY_DAYS = 7
#: measured days of the same half hour needed before the gateway offers on its own
MIN_DAYS = 3
#: smaller offers are not worth a ledger entry (Wh)
MIN_OFFER_WH = 100


class SlotMeters:
    """The meter's registers at slot boundaries, and the reports due (see the module docstring)."""

    def __init__(self, meter: str) -> None:
        self.meter = meter
        self._devices = {meter: "import", f"{meter}-export": "export"}
        self._last: dict[str, tuple[float, float]] = {}  # direction -> (ts, Wh) of the newest reading
        self.at: dict[str, dict[int, float]] = {"import": {}, "export": {}}  # direction -> boundary -> Wh
        self._recorded: set[tuple[str, int]] = set()  # (direction, slot) already in slot_energy
        self._fresh = False  # a boundary was taken since the last record()
        self._checked = math.inf  # when due() last read the traded slots
        self._next_due = -math.inf  # before this, no traded slot can be due (the agent calls due() every flush)
        self._joined: set[str] = set()  # consent ids under which the household is known to have joined
        self.counts: dict[str, int] = {"reported": 0, "gave_up": 0, "no_consent": 0, "gaps": 0, "offered": 0}

    def observe(self, r: Reading) -> None:
        direction = self._devices.get(r.device)
        if direction is None or r.metric != "energy":
            return
        last = self._last.get(direction)
        if last is not None and r.ts > last[0]:
            t0, w0 = last
            first = int(t0 // SLOT_S + 1) * SLOT_S
            if r.ts - t0 > MAX_GAP_S:
                self.counts["gaps"] += first <= r.ts
            else:
                bounds = self.at[direction]
                for b in range(first, int(r.ts) + 1, SLOT_S):
                    bounds[b] = w0 + (r.value - w0) * (b - t0) / (r.ts - t0)
                    self._fresh = True
                for old in sorted(bounds)[:-KEEP]:
                    del bounds[old]
        if last is None or r.ts > last[0]:
            self._last[direction] = (r.ts, r.value)

    def due(self, conn: sqlite3.Connection, gateway: str, keys: GatewayKeys, now: float) -> int:
        """Queue the meter reports that are due; the number queued. The report is queued before its slot is marked:
        a crash between the two sends it twice, which the ledger refuses as a replay (never counted twice).
        Reports fall due only on the grid of slot ends + :data:`DELAY_S`: between two grid points nothing is read."""
        if self._checked <= now < self._next_due:  # (a clock set back checks again at once)
            return 0
        self._checked = now
        self._next_due = (int((now - DELAY_S) // SLOT_S) + 1) * SLOT_S + DELAY_S
        rows = conn.execute(
            "SELECT slot, direction FROM trade_slots WHERE state = 'open' AND slot + ? <= ? ORDER BY slot",
            (SLOT_S + DELAY_S, now),
        ).fetchall()
        if not rows:
            return 0
        active = [
            c
            for c in consent.list_consents(conn, include_inactive=False)
            if c.purpose == TRADING_PURPOSE and c.subject == gateway
        ]
        queued = 0
        for slot, direction in rows:
            start, end = self.at[direction].get(slot), self.at[direction].get(slot + SLOT_S)
            if not active:
                self._close(conn, slot, direction, "no_consent")
                continue
            if start is None or end is None:
                if now - (slot + SLOT_S) > GIVE_UP_S:
                    log.warning("traded slot %s (%s): the meter did not cover it; not reported", slot, direction)
                    self._close(conn, slot, direction, "gave_up")
                continue
            wh = max(0, round(end - start))
            msg = trading.meter_report(
                keys, gateway, slot=slot, direction=direction, wh=wh, now=datetime.fromtimestamp(now, tz=UTC)
            )
            trading.queue(conn, gateway, msg, consent=active[-1].id, now_ms=int(now * 1000))
            conn.execute(
                "UPDATE trade_slots SET state = 'reported', wh = ? WHERE slot = ? AND direction = ?",
                (wh, slot, direction),
            )
            self.counts["reported"] += 1
            queued += 1
        return queued

    def record(self, conn: sqlite3.Connection, now: float) -> None:
        """Keep each measured slot's export and import (local history for the forecast; pruned to a week)."""
        if not self._fresh:
            return
        self._fresh = False
        new = [
            (b, direction, max(0, round(bounds[b + SLOT_S] - bounds[b])))
            for direction, bounds in self.at.items()
            for b in bounds
            if b + SLOT_S in bounds and (direction, b) not in self._recorded
        ]
        if not new:
            return
        conn.executemany("INSERT OR IGNORE INTO slot_energy(slot, direction, wh) VALUES(?, ?, ?)", new)
        conn.execute("DELETE FROM slot_energy WHERE slot < ?", (now - (HISTORY_DAYS + 1) * 86_400,))
        self._recorded.update((d, b) for b, d, _ in new)
        self._recorded = {(d, b) for d, b in self._recorded if b in self.at[d]}

    def forecast(self, conn: sqlite3.Connection, slot: int) -> int | None:
        """What the home is fairly sure to export in ``slot``: the lower quartile of the same half hour's export on
        the last :data:`HISTORY_DAYS` days (None with fewer than :data:`MIN_DAYS` of them measured)."""
        past = [slot - d * 86_400 for d in range(1, HISTORY_DAYS + 1)]
        marks = ",".join("?" * len(past))
        rows = conn.execute(
            f"SELECT wh FROM slot_energy WHERE direction = 'export' AND slot IN ({marks})",  # noqa: S608 - marks
            past,
        ).fetchall()
        if len(rows) < MIN_DAYS:
            return None
        values = sorted(int(r[0]) for r in rows)
        return values[(len(values) - 1) // 4]

    def offers(
        self,
        conn: sqlite3.Connection,
        gateway: str,
        keys: GatewayKeys,
        now: float,
        *,
        price: int,
        share: float,
        ahead: float,
    ) -> int:
        """Offer the forecast surplus of the slot beginning ``ahead`` seconds from now (once); the number queued."""
        slot = int((now + ahead) // SLOT_S) * SLOT_S
        if (
            slot < now + ahead - 60
            or conn.execute("SELECT 1 FROM trade_slots WHERE slot = ? AND direction = 'export'", (slot,)).fetchone()
        ):
            return 0  # not the slot's first minute, or already offered in it (by hand or here)
        active = [
            c
            for c in consent.list_consents(conn, include_inactive=False)
            if c.purpose == TRADING_PURPOSE and c.subject == gateway
        ]
        if not active or not self._joined_under(conn, active[-1].id):
            return 0
        expected = self.forecast(conn, slot)
        if expected is None:
            return 0
        wh = int(expected * share) // 10 * 10
        if wh < MIN_OFFER_WH:
            return 0
        at = datetime.fromtimestamp(now, tz=UTC)
        msg = trading.order(keys, gateway, "offer", f"auto-{slot}", slot=slot, wh=wh, price=price, now=at)
        trading.queue(conn, gateway, msg, consent=active[-1].id, now_ms=int(now * 1000))
        self.counts["offered"] += 1
        return 1

    def _joined_under(self, conn: sqlite3.Connection, consent_id: str) -> bool:
        """The household joined the ledger under this consent (its enrollment is in the audit log; once found, it
        is remembered: an enrollment is never undone)."""
        if consent_id not in self._joined and any(
            e.kind == "release" and e.body.get("consent") == consent_id and e.body.get("events") == ["trade.enroll"]
            for e in audit.entries(conn)
        ):
            self._joined.add(consent_id)
        return consent_id in self._joined

    def _close(self, conn: sqlite3.Connection, slot: int, direction: str, state: str) -> None:
        conn.execute("UPDATE trade_slots SET state = ? WHERE slot = ? AND direction = ?", (state, slot, direction))
        self.counts[state] += 1

    def status(self) -> Mapping[str, object]:
        return {"meter": self.meter, **self.counts}

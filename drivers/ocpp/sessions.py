"""Charging sessions (OCPP 1.6 transactions) in SQLite, in the gateway's data dir.

OCPP 1.6 facts: the central system assigns ``transactionId`` (an integer) in StartTransaction.conf, and the
charge point uses it in MeterValues and StopTransaction until the transaction is over, across reconnects and
across restarts of either side. A charge point that got no answer retries StartTransaction/StopTransaction
(transaction-related messages are retried, section 4.10/4.11), so both are idempotent here: a retried
StartTransaction (same charge point, connector, meterStart, timestamp) gets the same id back.

Ids come from ``INTEGER PRIMARY KEY AUTOINCREMENT``: never reused, even after rows are deleted, and they survive
restarts because they are in the file.

Session energy is ``meterStop - meterStart`` (both Wh). Two exceptions: a register reading taken at or after the
stop time that is higher than meterStop (the closing MeterValues that BS-EV/Ocular send after StopTransaction)
wins; and when meterStop is unusable (smaller than meterStart: a register that restarts per session, or a 0 sent
by a charger that has no meter), the latest register reading is used (minus meterStart when it is above it).
Readings taken before the stop never override meterStop (fixtures mix registers of different meters).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_point TEXT NOT NULL,
    connector INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    tag_status TEXT NOT NULL DEFAULT 'Accepted',
    start_ts REAL NOT NULL,
    stop_ts REAL,
    meter_start_wh REAL NOT NULL,
    meter_stop_wh REAL,
    register_last_wh REAL,
    register_last_ts REAL,
    energy_wh REAL,
    max_power_w REAL,
    stop_reason TEXT
);
CREATE TABLE IF NOT EXISTS counters (device TEXT PRIMARY KEY, last_raw REAL, offset_wh REAL, resets INTEGER);
CREATE INDEX IF NOT EXISTS sessions_cp ON sessions (charge_point, connector, stop_ts);
"""


@dataclass(frozen=True, slots=True)
class Session:
    """One transaction. ``stop_ts``/``energy_wh`` are None while it runs; times are POSIX seconds UTC."""

    id: int
    charge_point: str
    connector: int
    id_tag: str
    tag_status: str
    start_ts: float
    stop_ts: float | None
    meter_start_wh: float
    meter_stop_wh: float | None
    energy_wh: float | None
    max_power_w: float | None
    stop_reason: str | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dict (what ``kyojo ocpp sessions --json`` prints)."""
        return asdict(self)


_COLUMNS = (
    "id, charge_point, connector, id_tag, tag_status, start_ts, stop_ts, meter_start_wh, meter_stop_wh, "
    "energy_wh, max_power_w, stop_reason"
)


def _energy(
    start: float, stop: float | None, stop_ts: float | None, last: float | None, last_ts: float | None
) -> float | None:
    """Session energy in Wh (see the module docstring); None while running or when unknowable."""
    if stop is None or stop_ts is None:
        return None
    if stop >= start:
        if last is not None and last_ts is not None and last_ts >= stop_ts and last > stop:
            return last - start
        return stop - start
    if last is None:
        return None
    # Register restarted for this session (non errata-3.9 chargers): its reading is the session's energy.
    return last - start if last >= start else last


class SessionStore:
    """The sessions table. One connection, guarded by a lock (the server and a CLI may share a process)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        charge_point: str,
        connector: int,
        id_tag: str,
        meter_start_wh: float,
        start_ts: float,
        tag_status: str = "Accepted",
    ) -> int:
        """Record StartTransaction.req and return its transactionId (the same one for a retried request)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM sessions WHERE charge_point=? AND connector=? AND meter_start_wh=? AND start_ts=?",
                (charge_point, connector, meter_start_wh, start_ts),
            ).fetchone()
            if row is not None:
                return int(row[0])
            cur = self._db.execute(
                "INSERT INTO sessions (charge_point, connector, id_tag, tag_status, start_ts, meter_start_wh) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (charge_point, connector, id_tag, tag_status, start_ts, meter_start_wh),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def meter(
        self,
        transaction_id: int,
        register_wh: float | None,
        power_w: float | None,
        register_ts: float | None = None,
    ) -> bool:
        """Fold a MeterValues batch of a transaction in (also after StopTransaction). False: unknown id."""
        with self._lock:
            row = self._db.execute(
                "SELECT meter_start_wh, meter_stop_wh, stop_ts, register_last_wh, register_last_ts, max_power_w "
                "FROM sessions WHERE id=?",
                (transaction_id,),
            ).fetchone()
            if row is None:
                return False
            start, stop, stop_ts, last, last_ts, max_p = row
            if register_wh is not None and register_ts is not None and (last_ts is None or register_ts >= last_ts):
                last, last_ts = register_wh, register_ts
            if power_w is not None:
                max_p = power_w if max_p is None else max(max_p, power_w)
            self._db.execute(
                "UPDATE sessions SET register_last_wh=?, register_last_ts=?, max_power_w=?, energy_wh=? WHERE id=?",
                (last, last_ts, max_p, _energy(start, stop, stop_ts, last, last_ts), transaction_id),
            )
            return True

    def stop(
        self, transaction_id: int, meter_stop_wh: float, stop_ts: float, reason: str | None = None
    ) -> Session | None:
        """Record StopTransaction.req (idempotent); None for an unknown transactionId."""
        with self._lock:
            row = self._db.execute(
                "SELECT meter_start_wh, register_last_wh, register_last_ts FROM sessions WHERE id=?",
                (transaction_id,),
            ).fetchone()
            if row is None:
                return None
            start, last, last_ts = row
            energy = _energy(start, meter_stop_wh, stop_ts, last, last_ts)
            # OCPP 1.6: a missing reason means Local (stopped at the charge point).
            self._db.execute(
                "UPDATE sessions SET stop_ts=?, meter_stop_wh=?, energy_wh=?, stop_reason=? WHERE id=?",
                (stop_ts, meter_stop_wh, energy, reason or "Local", transaction_id),
            )
        return self.get(transaction_id)

    def get(self, transaction_id: int) -> Session | None:
        """One session by transactionId."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id=?", (transaction_id,)).fetchone()  # noqa: S608
        return Session(*row) if row else None

    def sessions(self, charge_point: str | None = None, *, open_only: bool = False) -> list[Session]:
        """Sessions, oldest first."""
        sql = f"SELECT {_COLUMNS} FROM sessions"  # noqa: S608
        where: list[str] = []
        args: list[object] = []
        if charge_point is not None:
            where.append("charge_point=?")
            args.append(charge_point)
        if open_only:
            where.append("stop_ts IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [Session(*r) for r in rows]

    def open_transaction(self, charge_point: str, connector: int) -> int | None:
        """The running transaction on a connector (latest), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(id) FROM sessions WHERE charge_point=? AND connector=? AND stop_ts IS NULL",
                (charge_point, connector),
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def counter(self, device: str) -> dict[str, Any] | None:
        """Saved state of a device's monotonic ev_energy counter (see ``drivers.counter``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT last_raw, offset_wh, resets FROM counters WHERE device=?", (device,)
            ).fetchone()
        return {"last_raw": row[0], "offset": row[1], "resets": row[2]} if row else None

    def save_counter(self, device: str, state: dict[str, Any]) -> None:
        """Persist a device's monotonic counter so an offset survives a restart."""
        with self._lock:
            self._db.execute(
                "INSERT INTO counters (device, last_raw, offset_wh, resets) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(device) DO UPDATE SET last_raw=excluded.last_raw, offset_wh=excluded.offset_wh, "
                "resets=excluded.resets",
                (device, state.get("last_raw"), state.get("offset"), state.get("resets")),
            )

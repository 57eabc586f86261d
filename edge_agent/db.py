"""The gateway's one SQLite database: raw readings, window watermarks, consents, outbox, release log.

WAL mode so the agent, its publisher thread and the household CLI can each hold a connection; every change
that must be atomic (closing a window = queueing its messages + logging their release + moving the watermark)
is one transaction. ``synchronous=FULL``: a committed outbox row survives a power cut, not only kill -9.

The file holds raw health readings and the household's log: it is created 0600 (owner only), and SQLite gives
its ``-wal`` and ``-shm`` files the database file's permissions, so they are private too.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edge_agent import audit

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, subject TEXT NOT NULL, metric TEXT NOT NULL,
    category TEXT NOT NULL, UNIQUE(device, subject, metric));
CREATE TABLE IF NOT EXISTS raw(ts INTEGER NOT NULL, series INTEGER NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS raw_ts ON raw(ts);
CREATE TABLE IF NOT EXISTS watermark(category TEXT PRIMARY KEY, next_start INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counter_last(series INTEGER PRIMARY KEY, value REAL NOT NULL, ts INTEGER);
CREATE TABLE IF NOT EXISTS consents(
    id TEXT PRIMARY KEY, subject TEXT NOT NULL, purpose TEXT NOT NULL, categories TEXT NOT NULL,
    status TEXT NOT NULL, given_at INTEGER NOT NULL, expires_at INTEGER, withdrawn_at INTEGER,
    min_window_s INTEGER NOT NULL, catalog_version INTEGER NOT NULL,
    record TEXT NOT NULL, signature TEXT NOT NULL, key_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consent_events(
    consent TEXT NOT NULL, at INTEGER NOT NULL, event TEXT NOT NULL, by TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL,
    consent TEXT, items INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_consent ON outbox(consent);
CREATE TABLE IF NOT EXISTS events(
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, category TEXT NOT NULL, subject TEXT NOT NULL, device TEXT NOT NULL,
    ts INTEGER NOT NULL, severity TEXT NOT NULL, attrs TEXT NOT NULL, state TEXT NOT NULL, consent TEXT);
CREATE INDEX IF NOT EXISTS events_state ON events(state);
CREATE TABLE IF NOT EXISTS alert_acks(alert_id TEXT PRIMARY KEY, at INTEGER NOT NULL, by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refused(
    seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL,
    at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slot_energy(
    slot INTEGER NOT NULL, direction TEXT NOT NULL, wh INTEGER NOT NULL, PRIMARY KEY(slot, direction)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trade_slots(
    slot INTEGER NOT NULL, direction TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'open', wh INTEGER,
    PRIMARY KEY(slot, direction)) WITHOUT ROWID;
"""


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the gateway database (autocommit mode; use ``with tx(conn):`` for transactions)."""
    if not create and not path.exists():
        raise FileNotFoundError(f"no gateway database at {path} (has the agent run with this config?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _private(path)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA + audit.SCHEMA)
    if "ts" not in {row[1] for row in conn.execute("PRAGMA table_info(counter_last)")}:
        conn.execute("ALTER TABLE counter_last ADD COLUMN ts INTEGER")  # a database from before the time was kept
    if audit.counters_behind(conn):  # read first: most opens need no write lock
        with tx(conn):
            audit.catch_up_counters(conn)
    return conn


PRIVATE = 0o600


def _private(path: Path) -> None:
    """Create the database file owner-only before SQLite does (an empty file is an empty database); tighten a
    file we own that an older version created group/world readable, with its -wal and -shm siblings."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
        return
    except FileExistsError:
        pass
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = p.stat()
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                p.chmod(st.st_mode & 0o700)
        except FileNotFoundError:
            continue


class tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error): takes the write lock up front."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not exc_type:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR)
            self.conn.execute("ROLLBACK")


def storage_full(err: BaseException) -> bool:
    """Whether ``err`` says the gateway's storage is full: SQLite's SQLITE_FULL ("database or disk is full", also
    what a ``max_page_count`` cap gives) or the file system's ENOSPC/EDQUOT."""
    import errno

    if isinstance(err, sqlite3.OperationalError):
        code = getattr(err, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(err)
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def meta_get(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else default


def meta_add(conn: sqlite3.Connection, key: str, delta: int) -> int:
    """Add ``delta`` to an integer meta counter and return the new value (call inside a transaction)."""
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
        (key, delta, delta),
    )
    return meta_get(conn, key)

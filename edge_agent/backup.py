"""A damaged gateway database, and what survives it.

SD cards wear and power gets cut: a gateway's SQLite file can come up "malformed". The agent must not die on it
(under systemd that is a unit that ends failed, a home that goes dark), nor throw away what the household gave:

- :func:`backup` keeps a second small database, ``gateway-backup.sqlite3`` beside the main one (0600): the
  consents and their history, the audit log (appended incrementally), its anchor, the counters and watermarks.
  The agent refreshes it every minute and when it stops; the gateway's keys are files of their own
  (:mod:`kyojo.keys`) and are not in the database at all.
- :func:`open_checked` opens the database with an integrity check (``PRAGMA quick_check``). A damaged file is moved
  aside (``<name>.damaged-<UTC time>``, with its ``-wal`` and ``-shm``, kept for inspection), a fresh database
  is made, the backup is restored into it, and the log gets a ``database_recovered`` entry saying what happened
  and where the damaged file is. Raw readings, the queue of unsent messages and energy counter baselines are
  not restored: they were in the damaged file (what a minute of backups cannot hold is said in the entry).
- Message numbers (``seq``) jump ahead by :data:`SEQ_GAP` after a recovery, so a message queued after the last
  backup and lost with the file never shares its number with a new one; the cloud sees a log that was truncated,
  which it was, and says so.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent import audit
from edge_agent.db import _private, connect, meta_get, tx

log = logging.getLogger(__name__)

FILE = "gateway-backup.sqlite3"
#: tables copied whole on every backup (all small)
WHOLE = ("consents", "consent_events", "audit_anchor", "meta", "watermark")
#: how far message numbers jump after a recovery
SEQ_GAP = 1_000_000


class DatabaseDamaged(sqlite3.DatabaseError):
    """The gateway database failed its integrity check."""


def backup_path(db_path: Path) -> Path:
    return db_path.with_name(FILE)


def backup(conn: sqlite3.Connection, db_path: Path) -> int:
    """Refresh the backup from ``conn`` (the agent's connection); returns the audit entries newly copied."""
    path = backup_path(db_path)
    _private(path)
    with contextlib.closing(sqlite3.connect(path, timeout=30.0, isolation_level=None)) as bk:
        bk.execute("PRAGMA journal_mode=WAL")
        bk.executescript(_schema(conn))
    conn.execute("ATTACH DATABASE ? AS bk", (str(path),))
    try:
        with tx(conn):
            for table in WHOLE:
                conn.execute(f"DELETE FROM bk.{table}")  # noqa: S608 (constant table names)
                conn.execute(f"INSERT INTO bk.{table} SELECT * FROM main.{table}")  # noqa: S608
            before = conn.total_changes
            conn.execute(
                "INSERT INTO bk.audit SELECT * FROM main.audit WHERE n > (SELECT coalesce(max(n), 0) FROM bk.audit)"
            )
            return conn.total_changes - before
    finally:
        conn.execute("DETACH DATABASE bk")


def _schema(conn: sqlite3.Connection) -> str:
    names = (*WHOLE, "audit")
    marks = ",".join("?" * len(names))
    rows = conn.execute(
        f"SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",  # noqa: S608
        names,
    ).fetchall()
    return ";\n".join(str(sql).replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1) for (sql,) in rows) + ";"


def check(path: Path) -> None:
    """Raise :class:`sqlite3.DatabaseError` unless the database at ``path`` opens and passes ``quick_check``."""
    with contextlib.closing(sqlite3.connect(path, timeout=30.0, isolation_level=None)) as conn:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        raise DatabaseDamaged("; ".join(rows[:3]))


def open_checked(db_path: Path) -> tuple[sqlite3.Connection, dict[str, Any] | None]:
    """The agent's connection to its database, after an integrity check; with what was done when it failed."""
    if db_path.exists():
        try:
            check(db_path)
            return connect(db_path), None
        except sqlite3.DatabaseError as err:
            return _recover(db_path, err)
    return connect(db_path), None


def _recover(db_path: Path, err: BaseException) -> tuple[sqlite3.Connection, dict[str, Any]]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = db_path.with_name(db_path.name + suffix)
        if src.exists():
            src.replace(aside.with_name(aside.name + suffix))
    log.error("the gateway database %s is damaged (%s): kept at %s; starting on a fresh one", db_path, err, aside)
    conn = connect(db_path)
    restored = _restore(conn, backup_path(db_path))
    seq_from = meta_get(conn, "seq") + SEQ_GAP
    body: dict[str, Any] = {
        "error": str(err)[:200],
        "kept_at": aside.name,
        "seq": seq_from,
        **restored,
        "lost": "raw readings, unsent messages and the audit entries after the last backup",
    }
    with tx(conn):
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (seq_from,),
        )
        audit.append(conn, "database_recovered", body, int(datetime.now(UTC).timestamp() * 1000))
    return conn, {"at": stamp, **body}


def _restore(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    if not path.exists():
        log.error("no backup at %s: consents and the log start empty", path)
        return {"restored": False, "consents": 0, "entries": 0}
    try:
        check(path)
        conn.execute("ATTACH DATABASE ? AS bk", (str(path),))
    except sqlite3.DatabaseError as err:
        log.error("the backup %s is damaged too (%s): consents and the log start empty", path, err)
        return {"restored": False, "consents": 0, "entries": 0}
    try:
        with tx(conn):
            for table in (*WHOLE, "audit"):
                conn.execute(f"DELETE FROM main.{table}")  # noqa: S608
                conn.execute(f"INSERT INTO main.{table} SELECT * FROM bk.{table}")  # noqa: S608
        consents = int(conn.execute("SELECT count(*) FROM consents").fetchone()[0])
        entries = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        conn.execute("DETACH DATABASE bk")
    log.warning("restored %d consent(s) and %d log entries from %s", consents, entries, path)
    return {"restored": True, "consents": consents, "entries": entries}

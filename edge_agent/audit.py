"""The household's transparency log: append-only and hash-chained, on the gateway.

Every release (what left the home, when, for which purpose, under which consent, how many aggregates, and the
SHA-256 of the exact payload) and every consent event (given, withdrawn, expired, erased by the cloud) is one
entry. Entry ``n`` stores ``hash_n = SHA-256(hash_{n-1} || canonical JSON of (n, at, kind, body))``, so editing,
deleting or reordering any entry breaks every hash after it; :func:`verify` finds the first broken entry.
The current head travels with each uplink batch (``audit_head``), so the cloud holds anchors a local rewrite
of the log cannot match.

Entries are written in the same transaction as the outbox row they describe: a release is logged if and only
if it was queued.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit(
    n INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    n: int
    at: int  # epoch ms
    kind: str  # release | consent_given | consent_withdrawn | consent_expired | erasure_receipt
    body: dict[str, Any]
    prev: str
    hash: str

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.at / 1000, tz=UTC)


def _canonical(n: int, at: int, kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps([n, at, kind, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev: str, n: int, at: int, kind: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _canonical(n, at, kind, body)).hexdigest()


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(last entry number, its hash); (0, GENESIS) for an empty log."""
    row = conn.execute("SELECT n, hash FROM audit ORDER BY n DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def append(conn: sqlite3.Connection, kind: str, body: dict[str, Any], at_ms: int) -> Entry:
    """Append one entry (call inside the transaction that makes the fact true)."""
    n, prev = head(conn)
    n += 1
    digest = entry_hash(prev, n, at_ms, kind, body)
    conn.execute(
        "INSERT INTO audit(n, at, kind, body, prev, hash) VALUES(?, ?, ?, ?, ?, ?)",
        (n, at_ms, kind, json.dumps(body, sort_keys=True, ensure_ascii=False), prev, digest),
    )
    return Entry(n, at_ms, kind, body, prev, digest)


def entries(conn: sqlite3.Connection, *, since_ms: int | None = None, purpose: str | None = None) -> Iterator[Entry]:
    sql, args = "SELECT n, at, kind, body, prev, hash FROM audit", []
    if since_ms is not None:
        sql += " WHERE at >= ?"
        args.append(since_ms)
    for n, at, kind, body, prev, digest in conn.execute(sql + " ORDER BY n", args):
        doc = json.loads(body)
        if purpose is not None and doc.get("purpose") != purpose:
            continue
        yield Entry(int(n), int(at), str(kind), doc, str(prev), str(digest))


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    entries: int
    head: str
    first_bad: int | None = None
    reason: str = ""


def verify(conn: sqlite3.Connection) -> Verdict:
    """Recompute the chain. Detects an edited body, a deleted or inserted entry, and a reordering."""
    prev, expected_n, count = GENESIS, 1, 0
    for n, at, kind, body, stored_prev, digest in conn.execute(
        "SELECT n, at, kind, body, prev, hash FROM audit ORDER BY n"
    ):
        count += 1
        if n != expected_n:
            return Verdict(False, count, prev, int(n), f"entry {expected_n} is missing (found {n} next)")
        if stored_prev != prev:
            return Verdict(False, count, prev, int(n), "does not follow the previous entry (reordered or replaced)")
        try:
            doc = json.loads(body)
        except ValueError:
            return Verdict(False, count, prev, int(n), "body is not JSON")
        if entry_hash(prev, int(n), int(at), str(kind), doc) != digest:
            return Verdict(False, count, prev, int(n), "content does not match its hash (edited)")
        prev, expected_n = str(digest), expected_n + 1
    return Verdict(True, count, prev)


def describe(e: Entry, lang: str = "en") -> str:
    """One line of plain language for the household."""
    b = e.body
    when = e.when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if e.kind == "release":
        if lang == "ja":
            return (
                f"{when} 送信: 目的「{b['purpose']}」(同意 {b['consent']}) {b['category']} の要約 "
                f"{b['items']} 件 → {b['recipient']}"
            )
        return (
            f"{when} sent {b['items']} {b['category']} summaries for '{b['purpose']}' "
            f"(consent {b['consent']}) to {b['recipient']}"
        )
    labels = {
        "consent_given": ("gave consent", "同意しました"),
        "consent_withdrawn": ("withdrew consent", "同意を撤回しました"),
        "consent_expired": ("consent expired", "同意の期限が切れました"),
        "erasure_receipt": ("the cloud confirmed erasure", "クラウドが削除を確認しました"),
    }
    en, ja = labels.get(e.kind, (e.kind, e.kind))
    who = b.get("subject", "")
    if lang == "ja":
        return f"{when} {who}: {ja}（目的「{b.get('purpose', '')}」、同意 {b.get('consent', '')}）"
    return f"{when} {who}: {en} for '{b.get('purpose', '')}' (consent {b.get('consent', '')})"

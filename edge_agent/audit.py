"""The household's transparency log: append-only and hash-chained, on the gateway.

Every release and every consent event is one entry: a release when it is queued (``release``: what, when, for
which purpose, under which consent, how many items, the SHA-256 of the exact payload), when the broker
acknowledged it (``release_acked``), when it was dropped unsent (``release_dropped``: the outbox overflowed, or
its consent was withdrawn or expired) or refused by the broker (``release_refused``); consent given, renewed,
withdrawn or expired; and the cloud's erasure receipts (``erasure_receipt``, or ``erasure_incomplete`` when the
cloud admits data remains). Entry ``n`` stores ``hash_n = SHA-256(hash_{n-1} || canonical JSON of (n, at, kind,
body))``, so editing, deleting or reordering any entry breaks every hash after it; :func:`verify` finds the first
broken entry.

Deleting the newest entries leaves a shorter chain that is still valid, so :func:`verify` also checks the log
against what the gateway keeps outside it: the highest entry number written (``meta.audit_n``, moved in the same
transaction as every append) and the highest message sequence number the log names (``meta.audit_seq``, equal to
the outbox's ``meta.seq``), and against the cloud's anchor: every uplink batch carries ``audit_head =
"<n>:<hash>"``, the cloud keeps the highest it saw and sends it back retained (:class:`AuditAnchor`), and the
publisher stores the newest one here (:func:`store_anchor`). A log shorter than the anchor, a different hash at
the anchored entry, or an anchor reporting conflicts fails verification.

Entries are written in the same transaction as the fact they describe: a release is logged if and only if it
was queued, an acknowledgement if and only if its outbox row was deleted for it, a drop with the delete.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kyojo.contract.wire import AuditAnchor

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit(
    n INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_anchor(
    id INTEGER PRIMARY KEY CHECK (id = 1), gateway TEXT NOT NULL, n INTEGER NOT NULL, hash TEXT NOT NULL,
    seen_at INTEGER NOT NULL, conflicts INTEGER NOT NULL, received_at INTEGER NOT NULL);
"""

#: meta keys kept beside the log (see the module docstring)
AUDIT_N, AUDIT_SEQ = "audit_n", "audit_seq"


@dataclass(frozen=True, slots=True)
class Entry:
    n: int
    at: int  # epoch ms
    # release | release_acked | release_dropped | release_refused | consent_given | consent_renewed |
    # consent_withdrawn | consent_expired | erasure_receipt | erasure_incomplete
    kind: str
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


def head_text(conn: sqlite3.Connection) -> str | None:
    """The head as a batch carries it, ``"<n>:<hash>"`` (None for an empty log)."""
    n, digest = head(conn)
    return f"{n}:{digest}" if n else None


def _meta(conn: sqlite3.Connection, key: str) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


def _raise_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
        (key, value),
    )


def counters_behind(conn: sqlite3.Connection) -> bool:
    """True if ``meta.audit_n`` is missing or below the last entry (see :func:`catch_up_counters`)."""
    written = _meta(conn, AUDIT_N)
    return written is None or written < head(conn)[0]


def catch_up_counters(conn: sqlite3.Connection) -> None:
    """Bring the counters beside the log up to date (call inside a transaction, when the database is opened).

    ``audit_n`` starts from the log of a database written before it existed, and catches up with entries an older
    version appended without moving it (after a release rollback). Such a version may also have queued messages
    whose seq no entry names, so ``audit_seq`` is then dropped, to be set again by the next entry naming a seq.
    Counters only move up here: a log shorter than its counters (the newest entries deleted) stays detectable.
    """
    last, _ = head(conn)
    written = _meta(conn, AUDIT_N)
    if written is None or written < last:
        _raise_meta(conn, AUDIT_N, last)
        if written is not None:
            conn.execute("DELETE FROM meta WHERE key = ?", (AUDIT_SEQ,))


def append(conn: sqlite3.Connection, kind: str, body: dict[str, Any], at_ms: int) -> Entry:
    """Append one entry (call inside the transaction that makes the fact true).

    The number follows the highest ever written (``meta.audit_n``), not the last row present: after the newest
    rows were deleted, the next entry leaves a gap that :func:`verify` reports, instead of reusing their numbers.
    """
    last, prev = head(conn)
    n = max(last, _meta(conn, AUDIT_N) or 0) + 1
    digest = entry_hash(prev, n, at_ms, kind, body)
    conn.execute(
        "INSERT INTO audit(n, at, kind, body, prev, hash) VALUES(?, ?, ?, ?, ?, ?)",
        (n, at_ms, kind, json.dumps(body, sort_keys=True, ensure_ascii=False), prev, digest),
    )
    _raise_meta(conn, AUDIT_N, n)
    seq = body.get("seq")
    if isinstance(seq, int):
        _raise_meta(conn, AUDIT_SEQ, seq)
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


# -- the cloud's anchor ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Anchor:
    """The newest :class:`AuditAnchor` the gateway received (times in epoch ms)."""

    gateway: str
    n: int
    hash: str
    seen_at: int
    conflicts: int
    received_at: int

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["seen_at"] = datetime.fromtimestamp(self.seen_at / 1000, tz=UTC).isoformat()
        doc["received_at"] = datetime.fromtimestamp(self.received_at / 1000, tz=UTC).isoformat()
        return doc


def load_anchor(conn: sqlite3.Connection) -> Anchor | None:
    row = conn.execute("SELECT gateway, n, hash, seen_at, conflicts, received_at FROM audit_anchor").fetchone()
    return None if row is None else Anchor(str(row[0]), int(row[1]), str(row[2]), int(row[3]), int(row[4]), int(row[5]))


def store_anchor(conn: sqlite3.Connection, anchor: AuditAnchor, received_ms: int) -> bool:
    """Keep ``anchor`` if it is newer (by the cloud's ``seen_at``, then ``n``) than the one kept. Returns True
    if it was kept. A redelivered retained anchor changes nothing."""
    seen = int(anchor.seen_at.timestamp() * 1000)
    old = load_anchor(conn)
    if old is not None and (old.seen_at, old.n, old.conflicts) >= (seen, anchor.n, anchor.conflicts):
        return False
    conn.execute(
        "INSERT OR REPLACE INTO audit_anchor(id, gateway, n, hash, seen_at, conflicts, received_at) "
        "VALUES(1, ?, ?, ?, ?, ?, ?)",
        (anchor.gateway, anchor.n, anchor.hash, seen, anchor.conflicts, received_ms),
    )
    return True


def anchor_problem(conn: sqlite3.Connection, anchor: Anchor) -> tuple[int | None, str]:
    """Where and why the local log disagrees with the cloud's anchor: (first bad entry, reason); (None, "") when
    it agrees."""
    seen = datetime.fromtimestamp(anchor.seen_at / 1000, tz=UTC).isoformat()
    last, _ = head(conn)
    if last < anchor.n:
        return last + 1, (
            f"the cloud holds entry {anchor.n} (seen {seen}) but the log ends at entry {last}: "
            "the newest entries were deleted"
        )
    row = conn.execute("SELECT hash FROM audit WHERE n = ?", (anchor.n,)).fetchone()
    if row is None:
        return anchor.n, f"entry {anchor.n}, which the cloud holds (seen {seen}), is missing from the log"
    if str(row[0]) != anchor.hash:
        return anchor.n, f"entry {anchor.n} is not the one the cloud holds (seen {seen}): the log was rewritten"
    if anchor.conflicts:
        return None, (
            f"the cloud saw this gateway's log go back or change {anchor.conflicts} time(s): "
            "it was truncated or rewritten after the cloud had anchored it"
        )
    return None, ""


# -- verification ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    entries: int
    head: str
    first_bad: int | None = None
    reason: str = ""
    last_n: int = 0
    #: the cloud's anchor (:meth:`Anchor.as_dict`) with ``matches``; None when none was received yet
    anchor: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chain(conn: sqlite3.Connection) -> tuple[int, int, str, int | None, str, int | None]:
    """Recompute the chain: (entries, last n, head hash, first bad n, reason, highest seq named)."""
    prev, expected_n, count, top_seq = GENESIS, 1, 0, None
    for n, at, kind, body, stored_prev, digest in conn.execute(
        "SELECT n, at, kind, body, prev, hash FROM audit ORDER BY n"
    ):
        count += 1
        if n != expected_n:
            return count, expected_n - 1, prev, int(n), f"entry {expected_n} is missing (found {n} next)", top_seq
        if stored_prev != prev:
            return count, n - 1, prev, int(n), "does not follow the previous entry (reordered or replaced)", top_seq
        try:
            doc = json.loads(body)
        except ValueError:
            return count, n - 1, prev, int(n), "body is not JSON", top_seq
        if entry_hash(prev, int(n), int(at), str(kind), doc) != digest:
            return count, n - 1, prev, int(n), "content does not match its hash (edited)", top_seq
        seq = doc.get("seq") if isinstance(doc, dict) else None
        if isinstance(seq, int):
            top_seq = seq if top_seq is None else max(top_seq, seq)
        prev, expected_n = str(digest), expected_n + 1
    return count, expected_n - 1, prev, None, "", top_seq


def _counters_problem(conn: sqlite3.Connection, last: int, top_seq: int | None) -> tuple[int | None, str]:
    """Compare the log with the counters the gateway keeps beside it."""
    written = _meta(conn, AUDIT_N)
    if written is not None and written > last:
        return last + 1, (
            f"the log ends at entry {last} but the gateway wrote entries up to {written}: "
            f"the newest {written - last} entr{'y was' if written - last == 1 else 'ies were'} deleted"
        )
    logged_seq = _meta(conn, AUDIT_SEQ)
    if logged_seq is None:  # a log from before the counter: nothing to compare yet
        return None, ""
    if top_seq is None or top_seq < logged_seq:
        return last + 1, (
            f"the gateway logged message seq {logged_seq} but the log names none after seq {top_seq or 0}: "
            "entries were deleted"
        )
    queued = _meta(conn, "seq") or 0
    if queued > logged_seq:
        return last + 1, f"the gateway queued message seq {queued} but the log names none after seq {logged_seq}"
    return None, ""


def verify(conn: sqlite3.Connection) -> Verdict:
    """Recompute the chain, then compare it with the gateway's counters and the cloud's anchor.

    Detects an edited body, a deleted or inserted entry, a reordering, and the deletion of the newest entries.
    Reads one snapshot (a read transaction), so an entry the agent appends meanwhile is no false alarm.
    """
    own_tx = not conn.in_transaction
    if own_tx:
        conn.execute("BEGIN")
    try:
        count, last, prev, first_bad, reason, top_seq = _chain(conn)
        if not reason:
            first_bad, reason = _counters_problem(conn, last, top_seq)
        anchor = load_anchor(conn)
        anchor_doc = None
        if anchor is not None:
            bad, problem = anchor_problem(conn, anchor)
            anchor_doc = {**anchor.as_dict(), "matches": not problem}
            if problem and not reason:
                first_bad, reason = bad, problem
    finally:
        if own_tx:
            conn.execute("COMMIT")
    return Verdict(not reason, count, prev, first_bad, reason, last, anchor_doc)


# -- plain language ----------------------------------------------------------------------------------------------
# The household reads the log in its own language: messages are gettext ids of Kyojo's catalogs (kyojo/i18n, the
# home page's), times in JST said so in Japanese and in UTC in English; categories, recipients and purposes in words.


def N_(text: str) -> str:
    """Marks a message for the catalogs (``python -m kyojo.i18n.catalogs update``); translated where shown."""
    return text


_DROP_REASONS = {
    "outbox_full": N_("the send queue was full"),
    "consent_withdrawn": N_("consent was withdrawn"),
    "consent_expired": N_("consent expired"),
}
_CATEGORIES = {
    "health": N_("health data"),
    "energy": N_("electricity data"),
    "energy.estimated": N_("estimated appliance electricity"),
    "ev": N_("EV charging data"),
    "mobility": N_("vehicle position data"),
    "wellbeing": N_("watch-over notices"),
    "device": N_("device status"),
}
_CONSENT_EVENTS = {
    "consent_given": N_("gave consent"),
    "consent_renewed": N_("renewed consent"),
    "consent_withdrawn": N_("withdrew consent"),
    "consent_expired": N_("consent expired"),
    "erasure_receipt": N_("the cloud confirmed erasure"),
}


def _seqs(b: dict[str, Any]) -> str:
    seqs = [r["seq"] for r in b.get("releases", [])]
    shown = ", ".join(f"#{s}" for s in seqs[:10])
    return shown + (f" (+{len(seqs) - 10})" if len(seqs) > 10 else "")


def _purpose_title(purpose: str, lang: str) -> str:
    from edge_agent.consent import catalog

    p = catalog().get(purpose)
    return p.title.get(lang, purpose) if p is not None else purpose


def describe(e: Entry, lang: str = "en") -> str:
    """One line of plain language for the household, in ``lang`` (``ja`` or ``en``)."""
    from kyojo.i18n import gettext_for, local_time

    _ = gettext_for(lang).gettext
    b = e.body
    words: dict[str, Any] = {
        "when": local_time(e.when, lang, seconds=True),
        "purpose": _purpose_title(str(b.get("purpose", "")), lang),
        "consent": b.get("consent", ""),
        "who": b.get("subject", ""),
        "items": b.get("items", 0),
        "k": len(b.get("releases", [])),
        "seqs": _seqs(b),
    }
    if e.kind == "release":
        category = str(b.get("category", ""))
        words |= {
            "what": _("events") if "events" in b else _("summaries"),
            "category": _(_CATEGORIES[category]) if category in _CATEGORIES else category,
            "recipient": _(str(b.get("recipient", ""))),
            "seq": b.get("seq"),
        }
        return (
            _(
                "%(when)s queued to send %(items)s %(what)s of %(category)s for '%(purpose)s' (consent %(consent)s) "
                "to %(recipient)s (#%(seq)s)"
            )
            % words
        )
    if e.kind == "release_acked":
        return (
            _(
                "%(when)s sent (the broker acknowledged it): %(k)s message(s) %(seqs)s with %(items)s item(s) for "
                "'%(purpose)s' (consent %(consent)s)"
            )
            % words
        )
    if e.kind == "release_refused":
        words["reason"] = b.get("reason", "")
        return (
            _(
                "%(when)s not sent (the broker refused it: %(reason)s): %(k)s message(s) %(seqs)s for '%(purpose)s' "
                "(consent %(consent)s)"
            )
            % words
        )
    if e.kind == "release_dropped":
        reason = str(b.get("reason"))
        words["why"] = _(_DROP_REASONS[reason]) if reason in _DROP_REASONS else reason
        return (
            _(
                "%(when)s dropped without sending (%(why)s): %(k)s message(s) %(seqs)s with %(items)s item(s) for "
                "'%(purpose)s' (consent %(consent)s)"
            )
            % words
        )
    if e.kind == "database_recovered":
        words |= {"kept": b.get("kept_at", ""), "consents": b.get("consents", 0), "entries": b.get("entries", 0)}
        if not b.get("restored"):
            return (
                _(
                    "%(when)s the gateway's database was damaged and set aside (%(kept)s); there was no usable backup: "
                    "consents and this log start again here"
                )
                % words
            )
        return (
            _(
                "%(when)s the gateway's database was damaged and set aside (%(kept)s); %(consents)s consent(s) and "
                "%(entries)s log entries were restored from the backup; readings and unsent messages of before are lost"
            )
            % words
        )
    if e.kind == "erasure_incomplete":
        words["left"] = b.get("receipt", {}).get("remaining", "?")
        return (
            _(
                "%(when)s %(who)s: the cloud reported that %(left)s data point(s) remain after erasure for "
                "'%(purpose)s' (consent %(consent)s)"
            )
            % words
        )
    words["what"] = _(_CONSENT_EVENTS[e.kind]) if e.kind in _CONSENT_EVENTS else e.kind
    return _("%(when)s %(who)s: %(what)s for '%(purpose)s' (consent %(consent)s)") % words

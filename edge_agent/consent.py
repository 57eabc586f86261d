"""Consent on the gateway: the purpose catalog, and consent records per subject and purpose.

Default deny: an aggregate leaves only under an active consent whose purpose covers its category, for a
window that starts at or after the consent was given and ends before it was withdrawn or expired. One consent
per subject and purpose covers every present and future device of those categories ("once-only").

Granting or withdrawing is one transaction that also queues the record for the cloud (retained, on its own
topic) in the outbox, so the cloud learns of a consent before any data that relies on it, and a withdrawal
drops every queued message of that consent in the same breath.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from drivers.base import Category, KyojoError
from edge_agent.db import meta_add, meta_get, tx
from edge_agent.wire import ConsentRecord, ConsentStatus, consent_topic, valid_id


class ConsentError(KyojoError, ValueError):
    """Unknown purpose, unknown consent, or an operation the consent's state forbids."""


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    categories: frozenset[Category]
    min_window_s: int
    controller: str
    title: dict[str, str]
    notice: dict[str, str]


@cache
def catalog() -> dict[str, Purpose]:
    """The purpose catalog shipped with the agent (edge_agent/purposes.json)."""
    doc = json.loads(resources.files("edge_agent").joinpath("purposes.json").read_text(encoding="utf-8"))
    return {
        name: Purpose(
            name=name,
            categories=frozenset(Category(c) for c in spec["categories"]),
            min_window_s=int(spec["min_window_s"]),
            controller=spec["controller"],
            title=spec["title"],
            notice=spec["notice"],
        )
        for name, spec in doc["purposes"].items()
    }


@dataclass(frozen=True, slots=True)
class Consent:
    """A consent as the gateway's gate sees it (times in epoch ms)."""

    id: str
    subject: str
    purpose: str
    categories: frozenset[Category]
    status: ConsentStatus
    given_at: int
    expires_at: int | None
    withdrawn_at: int | None

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """True if a window [start, end) may be released under this consent."""
        if start_ms < self.given_at:
            return False
        if self.withdrawn_at is not None and end_ms > self.withdrawn_at:
            return False
        return self.expires_at is None or end_ms <= self.expires_at


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _row_to_consent(row: tuple[Any, ...]) -> Consent:
    cid, subject, purpose, cats, status, given, expires, withdrawn = row[:8]
    return Consent(
        id=str(cid),
        subject=str(subject),
        purpose=str(purpose),
        categories=frozenset(Category(c) for c in json.loads(str(cats))),
        status=ConsentStatus(str(status)),
        given_at=int(given),
        expires_at=None if expires is None else int(expires),
        withdrawn_at=None if withdrawn is None else int(withdrawn),
    )


_COLS = "id, subject, purpose, categories, status, given_at, expires_at, withdrawn_at"


def list_consents(conn: sqlite3.Connection, *, include_inactive: bool = True) -> list[Consent]:
    sql = f"SELECT {_COLS} FROM consents"  # noqa: S608 - constant column list
    if not include_inactive:
        sql += " WHERE status = 'active'"
    return [_row_to_consent(r) for r in conn.execute(sql + " ORDER BY given_at, id")]


def get_consent(conn: sqlite3.Connection, consent_id: str) -> Consent:
    row = conn.execute(f"SELECT {_COLS} FROM consents WHERE id = ?", (consent_id,)).fetchone()  # noqa: S608
    if row is None:
        raise ConsentError(f"no consent {consent_id!r} on this gateway")
    return _row_to_consent(row)


def consent_version(conn: sqlite3.Connection) -> int:
    """Changes whenever a consent is granted, withdrawn or expires (the agent reloads its gate then)."""
    return meta_get(conn, "consent_version")


def _record(gateway: str, c: Consent) -> ConsentRecord:
    return ConsentRecord(
        gateway=gateway,
        id=c.id,
        subject=c.subject,
        purpose=c.purpose,
        categories=sorted(c.categories),
        status=c.status,
        given_at=datetime.fromtimestamp(c.given_at / 1000, tz=UTC),
        expires_at=_dt(c.expires_at),
        withdrawn_at=_dt(c.withdrawn_at),
    )


def _queue_record(conn: sqlite3.Connection, gateway: str, c: Consent, now_ms: int) -> None:
    payload = _record(gateway, c).model_dump_json().encode()
    conn.execute(
        "INSERT INTO outbox(seq, topic, payload, retain, consent, items, created) VALUES(?, ?, ?, 1, NULL, 0, ?)",
        (meta_add(conn, "seq", 1), consent_topic(gateway, c.id), payload, now_ms),
    )
    conn.execute("UPDATE consents SET record = ? WHERE id = ?", (payload.decode(), c.id))
    meta_add(conn, "consent_version", 1)


def grant(
    conn: sqlite3.Connection,
    gateway: str,
    purpose: str,
    subject: str,
    *,
    now: datetime | None = None,
    expires_at: datetime | None = None,
) -> Consent:
    """Give consent for ``subject`` to ``purpose``; granting again while active returns the existing one."""
    spec = catalog().get(purpose)
    if spec is None:
        raise ConsentError(f"unknown purpose {purpose!r}; the catalog has: {', '.join(sorted(catalog()))}")
    if not valid_id(subject):
        raise ConsentError(f"subject {subject!r} is not a valid id")
    now = now or datetime.now(UTC)
    if expires_at is not None and expires_at <= now:
        raise ConsentError("expiry must be in the future")
    with tx(conn):
        for existing in list_consents(conn, include_inactive=False):
            if existing.subject == subject and existing.purpose == purpose:
                return existing  # once-only: one consent per subject and purpose
        c = Consent(
            id=f"c-{secrets.token_hex(6)}",
            subject=subject,
            purpose=purpose,
            categories=spec.categories,
            status=ConsentStatus.ACTIVE,
            given_at=_ms(now),  # type: ignore[arg-type]
            expires_at=_ms(expires_at),
            withdrawn_at=None,
        )
        conn.execute(
            f"INSERT INTO consents({_COLS}, record) VALUES(?, ?, ?, ?, ?, ?, ?, ?, '')",
            (
                c.id,
                c.subject,
                c.purpose,
                json.dumps(sorted(c.categories)),
                c.status.value,
                c.given_at,
                c.expires_at,
                None,
            ),
        )
        _queue_record(conn, gateway, c, c.given_at)
    return c


def withdraw(conn: sqlite3.Connection, gateway: str, consent_id: str, *, now: datetime | None = None) -> int:
    """Withdraw a consent: stop releasing, drop its queued messages, tell the cloud. Returns rows dropped."""
    now_ms = _ms(now or datetime.now(UTC))
    assert now_ms is not None
    with tx(conn):
        c = get_consent(conn, consent_id)
        if c.status is not ConsentStatus.ACTIVE:
            raise ConsentError(f"consent {consent_id} is already {c.status.value}")
        conn.execute("UPDATE consents SET status = 'withdrawn', withdrawn_at = ? WHERE id = ?", (now_ms, consent_id))
        dropped = conn.execute("DELETE FROM outbox WHERE consent = ?", (consent_id,)).rowcount
        meta_add(conn, "outbox_withdrawn_dropped", dropped)
        _queue_record(conn, gateway, get_consent(conn, consent_id), now_ms)
    return dropped


def expire_due(conn: sqlite3.Connection, gateway: str, now_ms: int) -> list[str]:
    """Mark consents past their expiry as expired and tell the cloud. Returns the ids expired."""
    with tx(conn):
        due = [
            c
            for c in list_consents(conn, include_inactive=False)
            if c.expires_at is not None and c.expires_at <= now_ms
        ]
        for c in due:
            conn.execute("UPDATE consents SET status = 'expired' WHERE id = ?", (c.id,))
            conn.execute("DELETE FROM outbox WHERE consent = ?", (c.id,))
            _queue_record(conn, gateway, get_consent(conn, c.id), now_ms)
    return [c.id for c in due]

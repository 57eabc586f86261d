"""Consent on the gateway: the purpose catalog, signed consent records, and the gate's view of them.

Default deny: an aggregate leaves only under an active consent whose purpose covers its category, for a window
that starts at or after the consent was given and ends before it was withdrawn or expired, at a granularity no
finer than the purpose allows. One consent per subject and purpose covers every present and future device of
those categories ("once-only").

Catalog versions: a consent remembers the categories and granularity it was given for. A new catalog version
that narrows a purpose applies at once (the gate uses the intersection); one that widens it does not, until the
household grants again, which renews the same consent with the wider scope ("asks again").

Records are shaped after ISO/IEC TS 27560 / the Kantara Consent Receipt: record id, subject, controller,
purpose, categories, granularity, recipients, storage location, retention, jurisdiction, notice text with its
version and language, withdrawal method and an event history. They are stored on the gateway and signed with
the gateway's Ed25519 key. What travels to the cloud (retained, on its own topic) is only what the cloud needs
to enforce it, with the subject as its per-purpose pseudonym.

Granting, renewing, withdrawing and expiring are each one transaction that also queues the cloud's copy in the
outbox and appends to the audit log; a withdrawal drops every queued message of that consent in the same breath,
and logs which releases it dropped.

Erasure receipts from the cloud are believed only for a withdrawn or expired consent of this gateway, about the
pseudonym the cloud was given for that consent's subject and purpose, and only as "confirmed" when the cloud
reports nothing remaining; a receipt that admits data remains is logged as such (:meth:`ConsentStore.take_receipt`).
"""

from __future__ import annotations

import fnmatch
import json
import secrets
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from edge_agent import audit
from edge_agent.config import AgentConfig
from edge_agent.db import meta_add, tx
from kyojo.contract.vocab import Category, KyojoError
from kyojo.contract.wire import ConsentRecord, ConsentStatus, ErasureReceipt, consent_topic, receipt_topic, valid_id
from kyojo.keys import GatewayKeys, load_keys

RECORD_SHAPE = "ISO/IEC TS 27560:2023 (consent record information structure), Kantara Consent Receipt v1.1"


class ConsentError(KyojoError, ValueError):
    """Unknown purpose, unknown consent, or an operation the consent's state forbids."""


class ReceiptError(KyojoError, ValueError):
    """An erasure receipt the gateway does not believe; ``cause`` is a stable counter label."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    categories: frozenset[Category]
    min_window_s: int
    controller: str
    title: dict[str, str]
    notice: dict[str, str]
    notice_version: str
    recipients: tuple[str, ...]
    storage_location: str
    retention_days: int
    jurisdiction: str
    withdrawal_method: dict[str, str]
    #: which events the purpose releases (globs such as ``watchover.*``); None: every event of its categories
    event_kinds: tuple[str, ...] | None = None

    def releases_event(self, kind: str) -> bool:
        return self.event_kinds is None or any(fnmatch.fnmatchcase(kind, g) for g in self.event_kinds)


@dataclass(frozen=True, slots=True)
class Catalog:
    version: int
    purposes: dict[str, Purpose]


def load_catalog(path: Path | None = None) -> Catalog:
    """Read a purpose catalog (default: the one shipped with the agent, kyojo/contract/purposes.json)."""
    if path is None:
        text = resources.files("kyojo.contract").joinpath("purposes.json").read_text(encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    return Catalog(
        version=int(doc["catalog_version"]),
        purposes={
            name: Purpose(
                name=name,
                categories=frozenset(Category(c) for c in spec["categories"]),
                min_window_s=int(spec["min_window_s"]),
                controller=spec["controller"],
                title=spec["title"],
                notice=spec["notice"],
                notice_version=str(spec["notice_version"]),
                recipients=tuple(spec["recipients"]),
                storage_location=spec["storage_location"],
                retention_days=int(spec["retention_days"]),
                jurisdiction=spec["jurisdiction"],
                withdrawal_method=spec["withdrawal_method"],
                event_kinds=tuple(spec["event_kinds"]) if "event_kinds" in spec else None,
            )
            for name, spec in doc["purposes"].items()
        },
    )


@cache
def default_catalog() -> Catalog:
    return load_catalog()


def catalog() -> dict[str, Purpose]:
    """The purposes of the shipped catalog."""
    return default_catalog().purposes


@dataclass(frozen=True, slots=True)
class Consent:
    """A consent as the gate sees it (times in epoch ms). ``subject`` is the local id (never sent)."""

    id: str
    subject: str
    purpose: str
    categories: frozenset[Category]
    status: ConsentStatus
    given_at: int
    expires_at: int | None
    withdrawn_at: int | None
    min_window_s: int = 0
    catalog_version: int = 1

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """True if a window [start, end) may be released under this consent."""
        if start_ms < self.given_at:
            return False
        if self.withdrawn_at is not None and end_ms > self.withdrawn_at:
            return False
        if (end_ms - start_ms) < self.min_window_s * 1000:
            return False
        return self.expires_at is None or end_ms <= self.expires_at

    def effective_categories(self, cat: Catalog) -> frozenset[Category]:
        """What the gate releases: as granted, narrowed by the current catalog, never widened by it."""
        purpose = cat.purposes.get(self.purpose)
        return self.categories & purpose.categories if purpose else frozenset()

    def needs_renewal(self, cat: Catalog) -> bool:
        """The current catalog asks for more than was granted: the household must grant again."""
        purpose = cat.purposes.get(self.purpose)
        if purpose is None or self.status is not ConsentStatus.ACTIVE:
            return False
        return not purpose.categories <= self.categories or purpose.min_window_s < self.min_window_s

    def narrowed(self, cat: Catalog) -> bool:
        """The current catalog asks for less than was granted (fewer categories or coarser summaries): it applies
        at once, and the household is only told."""
        purpose = cat.purposes.get(self.purpose)
        if purpose is None or self.status is not ConsentStatus.ACTIVE or self.needs_renewal(cat):
            return False
        return purpose.categories < self.categories or purpose.min_window_s > self.min_window_s


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


_COLS = "id, subject, purpose, categories, status, given_at, expires_at, withdrawn_at, min_window_s, catalog_version"


def _row(row: tuple[Any, ...]) -> Consent:
    cid, subject, purpose, cats, status, given, expires, withdrawn, min_win, cat_ver = row
    return Consent(
        id=str(cid),
        subject=str(subject),
        purpose=str(purpose),
        categories=frozenset(Category(c) for c in json.loads(str(cats))),
        status=ConsentStatus(str(status)),
        given_at=int(given),
        expires_at=None if expires is None else int(expires),
        withdrawn_at=None if withdrawn is None else int(withdrawn),
        min_window_s=int(min_win),
        catalog_version=int(cat_ver),
    )


def list_consents(conn: sqlite3.Connection, *, include_inactive: bool = True) -> list[Consent]:
    sql = f"SELECT {_COLS} FROM consents"  # noqa: S608 - constant column list
    if not include_inactive:
        sql += " WHERE status = 'active'"
    return [_row(r) for r in conn.execute(sql + " ORDER BY given_at, id")]


def get_consent(conn: sqlite3.Connection, consent_id: str) -> Consent:
    row = conn.execute(f"SELECT {_COLS} FROM consents WHERE id = ?", (consent_id,)).fetchone()  # noqa: S608
    if row is None:
        raise ConsentError(f"no consent {consent_id!r} on this gateway")
    return _row(row)


def consent_version(conn: sqlite3.Connection) -> int:
    """Changes whenever a consent is granted, renewed, withdrawn or expires (the gate reloads then)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'consent_version'").fetchone()
    return int(row[0]) if row else 0


def events(conn: sqlite3.Connection, consent_id: str) -> list[dict[str, Any]]:
    return [
        {"event": e, "at": _iso(int(at)), "by": by, **json.loads(detail)}
        for at, e, by, detail in conn.execute(
            "SELECT at, event, by, detail FROM consent_events WHERE consent = ? ORDER BY rowid", (consent_id,)
        )
    ]


def signed_record(conn: sqlite3.Connection, consent_id: str) -> dict[str, Any]:
    """The full local record, with its signature and the signing key's id."""
    row = conn.execute("SELECT record, signature, key_id FROM consents WHERE id = ?", (consent_id,)).fetchone()
    if row is None:
        raise ConsentError(f"no consent {consent_id!r} on this gateway")
    return {"record": json.loads(row[0]), "signature": row[1], "key_id": row[2]}


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ConsentStore:
    """Grant, renew, withdraw and expire consents on one gateway database."""

    def __init__(self, conn: sqlite3.Connection, gateway: str, keys: GatewayKeys, cat: Catalog | None = None) -> None:
        self.conn = conn
        self.gateway = gateway
        self.keys = keys
        self.catalog = cat or default_catalog()

    # -- the record ----------------------------------------------------------------------------------------
    def _full_record(self, c: Consent, purpose: Purpose, lang: str) -> dict[str, Any]:
        return {
            "record_shape": RECORD_SHAPE,
            "record_id": c.id,
            "gateway": self.gateway,
            "subject": c.subject,
            "subject_pseudonym": self.keys.pseudonym(c.purpose, c.subject),
            "controller": purpose.controller,
            "purpose": c.purpose,
            "purpose_title": purpose.title,
            "categories": sorted(c.categories),
            "granularity_s": c.min_window_s,
            "recipients": list(purpose.recipients),
            "storage_location": purpose.storage_location,
            "retention_days": purpose.retention_days,
            "jurisdiction": purpose.jurisdiction,
            "notice": {"text": purpose.notice, "version": purpose.notice_version, "language": lang},
            "withdrawal_method": purpose.withdrawal_method,
            "catalog_version": c.catalog_version,
            "status": c.status.value,
            "given_at": _iso(c.given_at),
            "expires_at": _iso(c.expires_at),
            "withdrawn_at": _iso(c.withdrawn_at),
        }

    def _save(self, c: Consent, lang: str, now_ms: int, event: str, by: str) -> None:
        """Record an event, re-sign the record, queue the cloud's copy, log it. Inside a transaction."""
        purpose = self.catalog.purposes.get(c.purpose) or default_catalog().purposes[c.purpose]
        self.conn.execute(
            "INSERT INTO consent_events(consent, at, event, by, detail) VALUES(?, ?, ?, ?, ?)",
            (c.id, now_ms, event, by, json.dumps({"catalog_version": c.catalog_version})),
        )
        record = self._full_record(c, purpose, lang)
        record["events"] = events(self.conn, c.id)
        self.conn.execute(
            "UPDATE consents SET record = ?, signature = ?, key_id = ? WHERE id = ?",
            (json.dumps(record, ensure_ascii=False), self.keys.sign(canonical(record)), self.keys.key_id, c.id),
        )
        cloud = ConsentRecord(
            gateway=self.gateway,
            id=c.id,
            subject=self.keys.pseudonym(c.purpose, c.subject),
            purpose=c.purpose,
            categories=sorted(c.categories),
            status=c.status,
            given_at=datetime.fromtimestamp(c.given_at / 1000, tz=UTC),
            expires_at=None if c.expires_at is None else datetime.fromtimestamp(c.expires_at / 1000, tz=UTC),
            withdrawn_at=None if c.withdrawn_at is None else datetime.fromtimestamp(c.withdrawn_at / 1000, tz=UTC),
        )
        # signed with the key registered at enrollment: the cloud takes no record it cannot trace to this gateway
        cloud = cloud.model_copy(update={"sig": self.keys.sign(cloud.signing_bytes())})
        seq = meta_add(self.conn, "seq", 1)
        self.conn.execute(
            "INSERT INTO outbox(seq, topic, payload, retain, consent, items, created) VALUES(?, ?, ?, 1, NULL, 0, ?)",
            (seq, consent_topic(self.gateway, c.id), cloud.model_dump_json().encode(), now_ms),
        )
        audit.append(
            self.conn,
            f"consent_{event}",
            {
                "consent": c.id,
                "subject": c.subject,
                "purpose": c.purpose,
                "categories": sorted(c.categories),
                "by": by,
                "seq": seq,  # the cloud's copy of the record; every seq the gateway issues is named in the log
            },
            now_ms,
        )
        meta_add(self.conn, "consent_version", 1)

    # -- operations ----------------------------------------------------------------------------------------
    def grant(
        self,
        purpose_name: str,
        subject: str,
        *,
        now: datetime | None = None,
        expires_at: datetime | None = None,
        by: str = "household",
        lang: str = "en",
    ) -> Consent:
        """Give consent (or renew it when the catalog widened the purpose); otherwise return the active one."""
        purpose = self.catalog.purposes.get(purpose_name)
        if purpose is None:
            raise ConsentError(
                f"unknown purpose {purpose_name!r}; the catalog has: {', '.join(sorted(self.catalog.purposes))}"
            )
        if not valid_id(subject):
            raise ConsentError(f"subject {subject!r} is not a valid id (letters, digits, . _ -)")
        now_ms = _ms(now or datetime.now(UTC))
        if expires_at is not None and _ms(expires_at) <= now_ms:
            raise ConsentError("expiry must be in the future")
        with tx(self.conn):
            for existing in list_consents(self.conn, include_inactive=False):
                if existing.subject == subject and existing.purpose == purpose_name:
                    if not existing.needs_renewal(self.catalog):
                        return existing  # once-only: one consent per subject and purpose
                    renewed = Consent(
                        id=existing.id,
                        subject=subject,
                        purpose=purpose_name,
                        categories=purpose.categories,
                        status=ConsentStatus.ACTIVE,
                        given_at=existing.given_at,
                        expires_at=existing.expires_at,
                        withdrawn_at=None,
                        min_window_s=purpose.min_window_s,
                        catalog_version=self.catalog.version,
                    )
                    self.conn.execute(
                        "UPDATE consents SET categories = ?, min_window_s = ?, catalog_version = ? WHERE id = ?",
                        (
                            json.dumps(sorted(renewed.categories)),
                            renewed.min_window_s,
                            renewed.catalog_version,
                            renewed.id,
                        ),
                    )
                    self._save(renewed, lang, now_ms, "renewed", by)
                    return renewed
            c = Consent(
                id=f"c-{secrets.token_hex(6)}",
                subject=subject,
                purpose=purpose_name,
                categories=purpose.categories,
                status=ConsentStatus.ACTIVE,
                given_at=now_ms,
                expires_at=None if expires_at is None else _ms(expires_at),
                withdrawn_at=None,
                min_window_s=purpose.min_window_s,
                catalog_version=self.catalog.version,
            )
            self.conn.execute(
                f"INSERT INTO consents({_COLS}, record, signature, key_id) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', '')",
                (
                    c.id,
                    c.subject,
                    c.purpose,
                    json.dumps(sorted(c.categories)),
                    c.status.value,
                    c.given_at,
                    c.expires_at,
                    None,
                    c.min_window_s,
                    c.catalog_version,
                ),
            )
            self._save(c, lang, now_ms, "given", by)
        return c

    def withdraw(self, consent_id: str, *, now: datetime | None = None, by: str = "household") -> int:
        """Withdraw: stop releasing, drop its queued messages, tell the cloud. Returns the rows dropped."""
        now_ms = _ms(now or datetime.now(UTC))
        with tx(self.conn):
            c = get_consent(self.conn, consent_id)
            if c.status is not ConsentStatus.ACTIVE:
                raise ConsentError(f"consent {consent_id} is already {c.status.value}")
            self.conn.execute(
                "UPDATE consents SET status = 'withdrawn', withdrawn_at = ? WHERE id = ?", (now_ms, consent_id)
            )
            self._save(get_consent(self.conn, consent_id), "en", now_ms, "withdrawn", by)
            dropped = drop_queued(self.conn, queued_of(self.conn, consent_id), "consent_withdrawn", now_ms)
            meta_add(self.conn, "outbox_withdrawn_dropped", dropped)
        return dropped

    def expire_due(self, now_ms: int) -> list[str]:
        """Mark consents past their expiry as expired, drop what they still had queued, tell the cloud."""
        due = [
            c
            for c in list_consents(self.conn, include_inactive=False)
            if c.expires_at is not None and c.expires_at <= now_ms
        ]
        if not due:
            return []
        with tx(self.conn):
            for c in due:
                self.conn.execute("UPDATE consents SET status = 'expired' WHERE id = ?", (c.id,))
                self._save(get_consent(self.conn, c.id), "en", now_ms, "expired", "gateway")
                drop_queued(self.conn, queued_of(self.conn, c.id), "consent_expired", now_ms)
        return [c.id for c in due]

    def take_receipt(self, topic: str, receipt: ErasureReceipt, now_ms: int) -> str:
        """Check an erasure receipt against this gateway's own consent and keep it with the consent and in the
        audit log: ``"confirmed"`` (``erasure_receipt``: nothing remains), ``"incomplete"``
        (``erasure_incomplete``: the cloud admits data remains) or ``"known"`` (kept before; retained receipts
        come again on every reconnect). Raises :class:`ReceiptError` for a receipt about anything else."""
        if receipt.gateway != self.gateway:
            raise ReceiptError("wrong_gateway", f"receipt for gateway {receipt.gateway!r}")
        if topic != receipt_topic(self.gateway, receipt.consent):
            raise ReceiptError("topic_mismatch", f"receipt for consent {receipt.consent!r} on {topic!r}")
        with tx(self.conn):
            try:
                c = get_consent(self.conn, receipt.consent)
            except ConsentError as err:
                raise ReceiptError("unknown_consent", str(err)) from err
            if c.status is ConsentStatus.ACTIVE:
                raise ReceiptError("consent_active", f"consent {c.id} is active: nothing was asked to be erased")
            if receipt.purpose != c.purpose:
                raise ReceiptError("purpose_mismatch", f"receipt for {receipt.purpose!r}; {c.id} is for {c.purpose!r}")
            if receipt.subject != self.keys.pseudonym(c.purpose, c.subject):
                raise ReceiptError("subject_mismatch", f"receipt about {receipt.subject!r}, not {c.id}'s subject")
            doc = receipt.model_dump(mode="json")
            confirmed = receipt.remaining == 0
            event = "erased" if confirmed else "erasure_incomplete"
            same = (event, doc["erased_at"], doc["remaining"])
            if any((e["event"], e.get("erased_at"), e.get("remaining")) == same for e in events(self.conn, c.id)):
                return "known"
            self.conn.execute(
                "INSERT INTO consent_events(consent, at, event, by, detail) VALUES(?, ?, ?, 'cloud', ?)",
                (c.id, now_ms, event, json.dumps(doc, sort_keys=True)),
            )
            audit.append(
                self.conn,
                "erasure_receipt" if confirmed else "erasure_incomplete",
                {"consent": c.id, "subject": c.subject, "purpose": c.purpose, "receipt": doc},
                now_ms,
            )
        return "confirmed" if confirmed else "incomplete"


#: a queued release as :func:`drop_queued` takes it: (seq, topic, consent, items)
QueuedRow = tuple[int, str, str, int]


def queued_of(conn: sqlite3.Connection, consent_id: str) -> list[QueuedRow]:
    """The releases still queued under a consent."""
    return [
        (int(seq), str(topic), str(cid), int(items))
        for seq, topic, cid, items in conn.execute(
            "SELECT seq, topic, consent, items FROM outbox WHERE consent = ? ORDER BY seq", (consent_id,)
        )
    ]


def release_list(rows: Iterable[tuple[int, str, int]]) -> list[dict[str, Any]]:
    """(seq, topic, items) -> what an audit entry names for each message."""
    return [{"seq": seq, "category": topic.rsplit("/", 1)[-1], "items": items} for seq, topic, items in rows]


def log_releases(
    conn: sqlite3.Connection,
    kind: str,
    rows: Iterable[QueuedRow],
    now_ms: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """One audit entry per consent naming the messages (seq, category, items) of ``rows``: ``release_acked``,
    ``release_dropped`` or ``release_refused``. Call inside the transaction that makes it true."""
    per: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for seq, topic, cid, items in rows:
        per[cid].append((seq, topic, items))
    for cid, msgs in per.items():
        c = get_consent(conn, cid)
        releases = release_list(sorted(msgs))
        body = {
            "consent": cid,
            "subject": c.subject,
            "purpose": c.purpose,
            "releases": releases,
            "items": sum(r["items"] for r in releases),
            **(extra or {}),
        }
        audit.append(conn, kind, body, now_ms)


def drop_queued(conn: sqlite3.Connection, rows: list[QueuedRow], reason: str, now_ms: int) -> int:
    """Delete queued releases unsent and log which, per consent, and why (in the caller's transaction)."""
    if not rows:
        return 0
    conn.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in rows])
    log_releases(conn, "release_dropped", rows, now_ms, {"reason": reason})
    return len(rows)


def open_store(config: AgentConfig, conn: sqlite3.Connection) -> ConsentStore:
    """The consent store of the gateway this config describes."""
    return ConsentStore(conn, config.gateway.id, load_keys(config.gateway.data_dir))

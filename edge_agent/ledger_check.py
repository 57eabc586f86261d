"""The household's own ledger entries, read from the city and checked on the gateway (issue 18 section 2).

The gateway does not simply believe the city:

- every entry it reads must match its own seal (``hash``, :func:`kyojo.contract.ledger.entry_hash`);
- every offer, bid and meter report the home sent (its audit log keeps each signed message, ``edge_agent.trading.
  queue``) must be on the ledger unchanged, and every offer, bid and meter report the ledger shows for the
  household must carry the household's own trading-key signature; a sent message that is missing, or shown
  differently, is a :class:`Finding`;
- the city's entries (join, leave, clearings, settlements) must be signed by the ledger's key in force at that
  entry, whose certificate the city CA (the one the gateway trusts) issued with the role ``ledger``; the read API
  sends the genesis and ``key`` entries for that (``ledger_keys``).

What the gateway cannot check from its own entries alone: the entries between them (the whole chain is
``kyojo ledger verify``'s), and an entry the city never appended for a message the home never sent.
:func:`fetch` does the one HTTP request (a short timeout; :class:`LedgerUnavailable` on any failure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kyojo.contract.errors import KyojoError
from kyojo.contract.ledger import ACCOUNT_KINDS, CITY_KINDS, LedgerEntry, canonical, signing_input
from kyojo.contract.wire import TRADING_PURPOSE, MeterReport, TradeOrder
from kyojo.keys import verify_signature

__all__ = [
    "Checked",
    "Finding",
    "LedgerAnswer",
    "LedgerEntry",
    "LedgerUnavailable",
    "Sent",
    "answer_of",
    "check",
    "fetch",
    "load_ca",
    "sent_messages",
]

#: how long after the broker's acknowledgement a message may still be on its way into the ledger
GRACE_MS = 120_000
#: the most the page reads from the ledger (a household's entries for years fit; a runaway answer does not)
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class LedgerUnavailable(KyojoError):
    """The ledger could not be read: ``cause`` is ``unreachable``, ``refused`` (401/403: not enrolled, or the
    clocks disagree) or ``bad_answer``."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


@dataclass(frozen=True, slots=True)
class LedgerAnswer:
    account: str
    balance_wh: int
    head: str
    entries: list[LedgerEntry]
    keys: list[LedgerEntry]


@dataclass(frozen=True, slots=True)
class Sent:
    """One trading message the home queued, from its audit log: ``kind`` enroll | offer | bid | meter (``order``
    for an order logged before the audit kept the message); ``state`` queued | sent | dropped | refused."""

    n: int
    at_ms: int
    seq: int
    kind: str
    message: dict[str, Any] | None
    sha256: str
    state: str
    #: when the city's broker acknowledged it (epoch ms; None: not sent)
    acked_ms: int | None = None

    def ident(self) -> tuple[str, ...] | None:
        """What names this message on the ledger (an order's kind and id; a meter report's slot and direction)."""
        m = self.message
        if m is None:
            return None
        if self.kind in ("offer", "bid"):
            return (self.kind, str(m.get("id")))
        if self.kind == "meter":
            return ("meter", str(m.get("slot")), str(m.get("direction")))
        return None


def _ident(e: LedgerEntry) -> tuple[str, ...]:
    """The same names as :meth:`Sent.ident`, as text (a hostile body may hold lists, which cannot be keys)."""
    if e.kind == "meter":
        return ("meter", str(e.body.get("slot")), str(e.body.get("direction")))
    return (e.kind, str(e.body.get("id")))


def sent_messages(conn: sqlite3.Connection) -> list[Sent]:
    """Every trading message in the gateway's audit log, oldest first, with what became of it."""
    state: dict[int, str] = {int(r[0]): "queued" for r in conn.execute("SELECT seq FROM outbox")}
    acked: dict[int, int] = {}
    queued: list[tuple[int, int, dict[str, Any]]] = []
    rows = conn.execute(
        "SELECT n, at, kind, body FROM audit WHERE json_extract(body, '$.purpose') = ? ORDER BY n", (TRADING_PURPOSE,)
    )
    for n, at, kind, text in rows:
        body = json.loads(text)
        if kind == "release" and any(str(ev).startswith("trade.") for ev in body.get("events", [])):
            queued.append((int(n), int(at), body))
        elif kind in ("release_acked", "release_dropped", "release_refused"):
            word = {"release_acked": "sent", "release_dropped": "dropped", "release_refused": "refused"}[kind]
            for r in body.get("releases", []):
                if isinstance(r.get("seq"), int):
                    state.setdefault(int(r["seq"]), word)
                    if kind == "release_acked":
                        acked.setdefault(int(r["seq"]), int(at))
    out: list[Sent] = []
    for n, at, body in queued:
        event = str(body["events"][0]).removeprefix("trade.")
        message = body.get("message") if isinstance(body.get("message"), dict) else None
        kind = str(message.get("kind", "order")) if event == "order" and message is not None else event
        seq = int(body.get("seq", 0))
        digest = str(body.get("sha256", ""))
        out.append(Sent(n, at, seq, kind, message, digest, state.get(seq, "queued"), acked.get(seq)))
    return out


def fetch(
    url: str, account: str, headers: Mapping[str, str], *, timeout: float, cafile: Path | None = None
) -> LedgerAnswer:
    """``GET <url>/ledger/v1/accounts/<account>`` with the signed read headers (:func:`edge_agent.trading.
    read_headers`); :class:`LedgerUnavailable` on any failure, after about ``timeout`` seconds per network step.
    HTTPS trusts the system's roots and ``cafile`` (the city CA, for a ledger behind a city-issued certificate)."""
    req = urllib.request.Request(f"{url.rstrip('/')}/ledger/v1/accounts/{account}", headers=dict(headers))  # noqa: S310
    try:
        tls = ssl.create_default_context()
        if cafile is not None and url.startswith("https:"):
            tls.load_verify_locations(cafile=str(cafile))
        with urllib.request.urlopen(req, timeout=timeout, context=tls) as resp:  # noqa: S310 - the configured URL
            raw = resp.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as err:
        cause = "refused" if err.code in (401, 403) else "bad_answer"
        raise LedgerUnavailable(cause, f"HTTP {err.code}") from err
    except (OSError, ValueError) as err:  # URLError, timeouts, refused connections, TLS failures
        raise LedgerUnavailable("unreachable", str(getattr(err, "reason", err))) from err
    if len(raw) > MAX_ANSWER_BYTES:
        raise LedgerUnavailable("bad_answer", "the answer is too large")
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise LedgerUnavailable("bad_answer", f"not JSON: {err}") from err
    return answer_of(doc, account)


def answer_of(doc: Any, account: str) -> LedgerAnswer:
    """The read API's JSON document as a :class:`LedgerAnswer` for ``account`` (LedgerUnavailable otherwise)."""
    try:
        answer = LedgerAnswer(
            account=str(doc["account"]),
            balance_wh=int(doc["balance_wh"]),
            head=str(doc["head"]),
            entries=[LedgerEntry.from_json(e) for e in doc["entries"]],
            keys=[LedgerEntry.from_json(e) for e in doc.get("ledger_keys", [])],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LedgerUnavailable("bad_answer", f"not a ledger answer: {err}") from err
    if answer.account != account:
        raise LedgerUnavailable("bad_answer", "the answer is for another account")
    return answer


def load_ca(path: Path | None) -> x509.Certificate | None:
    """The city CA certificate (None: not configured or unreadable; the city's signatures then go unchecked)."""
    if path is None:
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the gateway found wrong: ``cause`` is ``missing`` (a message the home sent is not on the ledger),
    ``altered`` (it is there, but not as sent), ``not_yours`` (an order or meter report under the household's name
    that its key did not sign), ``seal`` (an entry that does not match its own hash), ``city_signature`` (a city
    entry not signed by the ledger's certified key) or ``ledger_key`` (the ledger's key is not certified by the
    city CA the gateway trusts)."""

    cause: str
    seq: int | None = None
    sent: Sent | None = None
    shown: dict[str, Any] | None = None
    detail: str = ""


@dataclass
class Checked:
    """What :func:`check` found: the problems, the entries that match what the home sent (entry -> message), the
    city entries whose signature checked out, and whether the city's signatures could be checked at all."""

    findings: list[Finding] = field(default_factory=list)
    confirmed: dict[int, Sent] = field(default_factory=dict)
    city_ok: set[int] = field(default_factory=set)
    city_checked: bool = False
    #: sent a moment ago and not on the ledger yet (the ledger appends within seconds; not a finding yet)
    pending: list[Sent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, e: LedgerEntry) -> bool:
    if not e.sig:
        return False
    try:
        key.verify(base64.b64decode(e.sig), signing_input(e.seq, e.kind, e.prev, e.body), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _ledger_key(pem: str, ca: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    """The key of ``pem`` if the city CA issued it with the role ``ledger`` (OU), else None."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return None
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    key = cert.public_key()
    if not ou or ou[0].value != "ledger" or not isinstance(key, ec.EllipticCurvePublicKey):
        return None
    return key


def _city_keys(
    keys: Iterable[LedgerEntry], ca: x509.Certificate, out: Checked
) -> list[tuple[int, ec.EllipticCurvePublicKey]]:
    """(first entry it signs, key) for the genesis key and each handover, each certified by ``ca`` and each handover
    signed by the key before it."""
    chain: list[tuple[int, ec.EllipticCurvePublicKey]] = []
    for e in keys:
        key = _ledger_key(str(e.body.get("cert", "")), ca)
        signer = key if e.kind == "genesis" else (chain[-1][1] if chain else None)
        if key is None or signer is None or not e.sealed() or not _ecdsa_ok(signer, e):
            out.findings.append(Finding("ledger_key", e.seq))
            break
        chain.append((e.seq if e.kind == "genesis" else e.seq + 1, key))
    return chain


def _same(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> bool:
    try:
        return b is not None and canonical(a) == canonical(b)
    except TypeError:
        return False


def _missing(out: Checked, s: Sent, recent: bool) -> None:
    if recent:
        out.pending.append(s)
    else:
        out.findings.append(Finding("missing", sent=s))


def check(
    answer: LedgerAnswer,
    sent: Iterable[Sent],
    *,
    trading_key: str,
    ca: x509.Certificate | None,
    now_ms: int,
    grace_ms: int = GRACE_MS,
) -> Checked:
    """Hold the ledger's answer to the home's own record (``sent``), its trading key (``trading_key``, base64) and
    the city CA (``ca``; None: the city's signatures are not checked, and the page says so). A message the broker
    acknowledged less than ``grace_ms`` before ``now_ms`` and not on the ledger yet is ``pending``, not missing."""
    out = Checked()
    by_ident: dict[tuple[str, ...], list[LedgerEntry]] = {}
    by_sha: dict[str, LedgerEntry] = {}
    for e in answer.entries:
        if not e.sealed():
            out.findings.append(Finding("seal", e.seq))
        if e.kind in ACCOUNT_KINDS:
            msg: TradeOrder | MeterReport | None
            try:
                msg = MeterReport.model_validate(e.body) if e.kind == "meter" else TradeOrder.model_validate(e.body)
            except ValueError:
                msg = None
            if msg is None or msg.sig is None or not verify_signature(trading_key, msg.signing_bytes(), msg.sig):
                out.findings.append(Finding("not_yours", e.seq, shown=e.body))
            if msg is not None:
                by_sha[hashlib.sha256(msg.model_dump_json().encode()).hexdigest()] = e
            by_ident.setdefault(_ident(e), []).append(e)
    joined = any(e.kind == "join" for e in answer.entries)
    for s in sent:
        if s.state != "sent":
            # still queued (or its acknowledgement not logged yet), or never sent: not expected on the ledger, but
            # confirmed when it is there as made, and flagged when it is there otherwise
            ident = s.ident()
            on_ledger = by_ident.get(ident, []) if ident else []
            found = [e for e in on_ledger if _same(e.body, s.message)]
            if found and s.state == "queued":
                out.confirmed[found[0].seq] = s
            elif on_ledger and not found:  # it got there, but not as the home made it
                out.findings.append(Finding("altered", on_ledger[0].seq, sent=s, shown=on_ledger[0].body))
            continue
        recent = s.acked_ms is not None and now_ms - s.acked_ms < grace_ms
        if s.kind == "enroll":
            if not joined:
                _missing(out, s, recent)
            continue
        ident = s.ident()
        if ident is None:  # logged before the audit kept the message: only its digest can be compared
            if s.sha256 in by_sha:
                out.confirmed[by_sha[s.sha256].seq] = s
            else:
                _missing(out, s, recent)
            continue
        same = [e for e in by_ident.get(ident, []) if _same(e.body, s.message)]
        if same:
            out.confirmed[same[0].seq] = s
        elif by_ident.get(ident):
            shown = by_ident[ident][0]
            out.findings.append(Finding("altered", shown.seq, sent=s, shown=shown.body))
        else:
            _missing(out, s, recent)
    if ca is not None and answer.keys:  # (a read API without ``ledger_keys``: the city's signatures go unchecked)
        out.city_checked = True
        chain = _city_keys(answer.keys, ca, out)
        if not chain:  # the genesis key itself is not the city CA's: one finding says it, not one per entry
            return out
        for e in answer.entries:
            if e.kind not in CITY_KINDS:
                continue
            key = next((k for start, k in reversed(chain) if start <= e.seq), None)
            if key is not None and _ecdsa_ok(key, e):
                out.city_ok.add(e.seq)
            else:
                out.findings.append(Finding("city_signature", e.seq))
    return out

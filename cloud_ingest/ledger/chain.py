"""The ledger's entries, their hash chain and signatures, and the offline check of a whole ledger (no I/O).

An entry is ``{seq, kind, prev, body, sig, hash}``:

- ``seq`` counts from 1 without gaps; ``prev`` is the previous entry's ``hash`` (64 zeros for the first);
- ``hash`` = SHA-256 of the canonical JSON (sorted keys, no spaces) of ``{seq, kind, prev, body, sig}``;
- who signs what: the entries a household makes (``offer``, ``bid``, ``meter``) are its signed wire messages
  verbatim (:class:`~kyojo.contract.wire.TradeOrder`, :class:`~kyojo.contract.wire.MeterReport`), signed with the
  account's trading key, and carry no ``sig`` of their own. Every other entry (``genesis``, ``key``, ``join``,
  ``leave``, ``match``, ``settle``, ``checkpoint``) is the city's: ``sig`` is the ledger key's ECDSA P-256 / SHA-256
  signature (DER, base64) over the canonical JSON of ``{seq, kind, prev, body}``, so the city commits to the
  entry's place in the chain too. The ledger key's certificate is in the genesis entry and must be issued by the
  city CA with the role ``ledger`` (its OU); a ``key`` entry, signed by the current key, hands the ledger to the
  key of the certificate it names (a renewal, a replacement).

:func:`verify` replays a ledger from its entries and the CA certificate alone and reports every break it finds
(the module docstring of :mod:`cloud_ingest.ledger` states the rules it holds the ledger to). The format itself
(canonical bytes, signing input, hash) is :mod:`kyojo.contract.ledger`, which the gateway checks its own entries with.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from cloud_ingest.ledger.market import DELIVERY, MatchPair, Order, clear, settle
from kyojo.contract.errors import KyojoError
from kyojo.contract.ledger import (
    ACCOUNT_KINDS,
    CITY_KINDS,
    GENESIS_PREV,
    LedgerEntry,
    canonical,
    entry_hash,
    signing_input,
)
from kyojo.contract.wire import SLOT_S, MeterReport, TradeOrder

__all__ = [
    "ACCOUNT_KINDS",
    "CITY_KINDS",
    "DELIVERY",
    "GENESIS_PREV",
    "CitySigner",
    "Entry",
    "LedgerError",
    "Problem",
    "Report",
    "canonical",
    "entry_hash",
    "signing_input",
    "verify",
]


class LedgerError(KyojoError, ValueError):
    """A message or an operation the ledger refuses; ``cause`` is a stable counter label (``bad_signature``,
    ``replayed``, ``not_joined``, ``slot_closed`` ...)."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


#: one ledger entry (see the module docstring): the shared format of :mod:`kyojo.contract.ledger`
Entry = LedgerEntry


def entry_of(doc: Mapping[str, Any]) -> Entry:
    """An entry from its JSON object; :class:`LedgerError` ``malformed`` when it is not one."""
    try:
        return LedgerEntry.from_json(doc)
    except (KeyError, TypeError, ValueError) as err:
        raise LedgerError("malformed", f"entry {str(doc)[:120]}") from err


class CitySigner:
    """The city's ledger key (EC P-256) and its certificate (issued by the city CA, role ``ledger``)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert_pem: bytes) -> None:
        self.key = key
        self.cert_pem = cert_pem

    @classmethod
    def load(cls, key_path: Any, cert_path: Any) -> CitySigner:
        """From the files ``kyojo provision service <id> --role ledger`` + ``install`` leave in ``<state>/tls/``."""
        from pathlib import Path

        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise LedgerError("bad_key", f"{key_path} is not an EC key")
        return cls(key, Path(cert_path).read_bytes())

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()

    def same_key(self, cert_pem: bytes) -> bool:
        """True when ``cert_pem`` certifies this signer's key."""
        from cryptography.hazmat.primitives import serialization

        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        theirs = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(*spki)
        return theirs == self.key.public_key().public_bytes(*spki)

    def make(self, seq: int, kind: str, prev: str, body: dict[str, Any]) -> Entry:
        """A signed, hashed city entry at ``seq`` after ``prev``."""
        sig = self.sign(signing_input(seq, kind, prev, body))
        return Entry(seq, kind, prev, body, sig, entry_hash(seq, kind, prev, body, sig))


def account_entry(seq: int, kind: str, prev: str, message: TradeOrder | MeterReport) -> Entry:
    """An entry holding a household's signed message verbatim."""
    body = message.model_dump(mode="json")
    return Entry(seq, kind, prev, body, None, entry_hash(seq, kind, prev, body, None))


def ed25519_ok(key_b64: str, data: bytes, sig_b64: str | None) -> bool:
    if not sig_b64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64)).verify(base64.b64decode(sig_b64), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def ledger_cert_problem(cert_pem: bytes, ca: x509.Certificate, when: datetime | None = None) -> str | None:
    """Why ``cert_pem`` cannot be the ledger's key (None: it can): issued by ``ca``, OU ``ledger``, in validity."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        return f"the ledger certificate is not issued by this CA ({err or type(err).__name__})"
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not ou or ou[0].value != "ledger":
        return "the certificate is not a ledger identity (OU != ledger)"
    if when is not None and not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        return f"the ledger certificate is not valid at {when.isoformat()}"
    return None


@dataclass(frozen=True, slots=True)
class Problem:
    """One break :func:`verify` found: the entry and a stable cause."""

    seq: int
    cause: str
    detail: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.cause}: {self.detail}"


@dataclass
class Report:
    """What :func:`verify` checked and found."""

    entries: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    checkpoints: int = 0
    last_checkpoint: int = 0
    balances: dict[str, int] = field(default_factory=dict)
    minted: int = 0
    head: str = GENESIS_PREV
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def causes(self) -> set[str]:
        return {p.cause for p in self.problems}

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "kinds": dict(sorted(self.kinds.items())),
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "after_last_checkpoint": self.entries - self.last_checkpoint,
            "tokens_minted_wh": self.minted,
            "balances_sum": sum(self.balances.values()),
            "head": f"{self.entries}:{self.head}",
            "problems": [str(p) for p in self.problems],
        }


@dataclass
class _Replay:
    """The state :func:`verify` rebuilds entry by entry (what the store keeps in its index tables)."""

    report: Report
    city_key: ec.EllipticCurvePublicKey | None = None
    keys: dict[str, str] = field(default_factory=dict)
    left: set[str] = field(default_factory=set)
    #: slot -> the orders for it (entry number, order), until the slot is cleared
    orders: dict[int, list[tuple[int, TradeOrder]]] = field(default_factory=dict)
    order_ids: set[tuple[str, str, str]] = field(default_factory=set)
    meters: dict[tuple[str, int, str], int] = field(default_factory=dict)
    matches: dict[int, list[MatchPair]] = field(default_factory=dict)
    settled: set[int] = field(default_factory=set)

    def problem(self, seq: int, cause: str, detail: str) -> None:
        self.report.problems.append(Problem(seq, cause, detail))

    def move(self, frm: str, to: str, wh: int) -> None:
        bal = self.report.balances
        bal[frm] = bal.get(frm, 0) - wh
        bal[to] = bal.get(to, 0) + wh


def verify(entries: Iterable[Entry], ca: x509.Certificate, *, expect_head: tuple[int, str] | None = None) -> Report:
    """Check a whole ledger offline against the city CA's certificate: chain, signatures, replays, the market's
    and the settlement's rules, double entry, checkpoints. ``expect_head`` (``(seq, hash)``, e.g. a head the
    household saw earlier): the ledger must still contain that entry unchanged (a cut-off tail is caught)."""
    st = _Replay(Report())
    prev, expected_seq = GENESIS_PREV, 1
    seen_heads: dict[int, str] = {}
    for e in entries:
        rep = st.report
        rep.entries += 1
        rep.kinds[e.kind] += 1
        if e.seq != expected_seq:
            st.problem(e.seq, "gap", f"expected entry {expected_seq} (entries deleted or reordered)")
        if e.prev != prev:
            st.problem(e.seq, "broken_chain", "prev is not the previous entry's hash")
        if e.computed_hash() != e.hash:
            st.problem(e.seq, "altered", "the entry's content does not match its hash")
        _check_entry(st, e, ca)
        prev, expected_seq = e.hash, e.seq + 1
        seen_heads[e.seq] = e.hash
        rep.head = e.hash
    rep = st.report
    if rep.entries == 0:
        st.problem(0, "empty", "no entries")
    total = sum(rep.balances.values())
    if total != 0:
        st.problem(rep.entries, "unbalanced", f"balances sum to {total}, not 0")
    for account, wh in rep.balances.items():
        if account != DELIVERY and wh < 0:
            st.problem(rep.entries, "negative_balance", f"{account} holds {wh}")
    if expect_head is not None and seen_heads.get(expect_head[0]) != expect_head[1]:
        st.problem(expect_head[0], "head_missing", f"the ledger no longer holds entry {expect_head[0]} as it was seen")
    return rep


def _check_entry(st: _Replay, e: Entry, ca: x509.Certificate) -> None:
    if e.seq == 1 or e.kind == "genesis":
        _check_genesis(st, e, ca)
        return
    if e.kind in CITY_KINDS:
        if st.city_key is None or not _city_sig_ok(st.city_key, e):
            st.problem(e.seq, "bad_signature", f"{e.kind} entry not signed by the city's ledger key")
            return
    elif e.kind in ACCOUNT_KINDS:
        if e.sig is not None:
            st.problem(e.seq, "malformed", "an account entry carries no city signature")
    else:
        st.problem(e.seq, "unknown_kind", e.kind)
        return
    checks: dict[str, Callable[[_Replay, Entry], None]] = {
        "join": _check_join,
        "leave": _check_leave,
        "offer": _check_order,
        "bid": _check_order,
        "meter": _check_meter,
        "match": _check_match,
        "settle": _check_settle,
        "checkpoint": _check_checkpoint,
        "key": lambda st_, e_: _check_key(st_, e_, ca),
    }
    try:
        checks[e.kind](st, e)
    except (KeyError, TypeError, ValueError) as err:
        st.problem(e.seq, "malformed", f"{e.kind}: {str(err)[:160]}")


def _city_sig_ok(key: ec.EllipticCurvePublicKey, e: Entry) -> bool:
    if not e.sig:
        return False
    try:
        key.verify(base64.b64decode(e.sig), e.signed_part(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_genesis(st: _Replay, e: Entry, ca: x509.Certificate) -> None:
    if e.seq != 1 or e.kind != "genesis":
        st.problem(e.seq, "genesis", "the first entry, and only it, is the genesis")
        return
    pem = str(e.body.get("cert", "")).encode()
    why = ledger_cert_problem(pem, ca)
    if why is not None:
        st.problem(e.seq, "untrusted_ledger_key", why)
        return
    key = x509.load_pem_x509_certificate(pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not _city_sig_ok(key, e):
        st.problem(e.seq, "bad_signature", "genesis not signed by the key of its certificate")
        return
    st.city_key = key


def _check_key(st: _Replay, e: Entry, ca: x509.Certificate) -> None:
    """A new ledger key (the old certificate expires, or the key is replaced): signed by the key it replaces
    (checked above), its certificate issued by the city CA with the role ``ledger``; later city entries must be
    signed by it."""
    pem = str(e.body["cert"]).encode()
    why = ledger_cert_problem(pem, ca)
    if why is not None:
        st.problem(e.seq, "untrusted_ledger_key", why)
        return
    key = x509.load_pem_x509_certificate(pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        st.problem(e.seq, "untrusted_ledger_key", "the new ledger key is not an EC key")
        return
    st.city_key = key


def _check_join(st: _Replay, e: Entry) -> None:
    account, key = str(e.body["account"]), str(e.body["key"])
    if account in st.keys or account == DELIVERY:
        st.problem(e.seq, "replayed", f"{account} joined twice")
        return
    st.keys[account] = key
    st.report.balances.setdefault(account, 0)


def _check_leave(st: _Replay, e: Entry) -> None:
    account = str(e.body["account"])
    if account not in st.keys:
        st.problem(e.seq, "not_joined", account)
    st.left.add(account)


def _account_sig(st: _Replay, e: Entry, msg: TradeOrder | MeterReport) -> bool:
    key = st.keys.get(msg.account)
    if key is None:
        st.problem(e.seq, "not_joined", msg.account)
        return False
    if not ed25519_ok(key, msg.signing_bytes(), msg.sig):
        st.problem(e.seq, "bad_signature", f"{e.kind} not signed by {msg.account}'s trading key (forged)")
        return False
    return True


def _check_order(st: _Replay, e: Entry) -> None:
    order = TradeOrder.model_validate(e.body)
    if order.kind != e.kind:
        st.problem(e.seq, "malformed", "entry kind and order kind differ")
    if not _account_sig(st, e, order):
        return
    if order.account in st.left:
        st.problem(e.seq, "left", f"{order.account} left the ledger before this order")
    ident = (order.account, order.kind, order.id)
    if ident in st.order_ids:
        st.problem(e.seq, "replayed", f"order {order.id} of {order.account} appears twice")
        return
    if order.slot in st.matches:
        st.problem(e.seq, "slot_closed", f"order for slot {order.slot} after it was cleared")
    st.order_ids.add(ident)
    st.orders.setdefault(order.slot, []).append((e.seq, order))


def _check_meter(st: _Replay, e: Entry) -> None:
    rep = MeterReport.model_validate(e.body)
    if not _account_sig(st, e, rep):
        return
    ident = (rep.account, rep.slot, rep.direction)
    if ident in st.meters:
        st.problem(e.seq, "replayed", f"second {rep.direction} report of {rep.account} for slot {rep.slot}")
        return
    if rep.slot in st.settled:
        st.problem(e.seq, "slot_settled", f"meter report for slot {rep.slot} after its settlement")
    st.meters[ident] = rep.wh


def _slot_orders(st: _Replay, slot: int) -> tuple[list[Order], list[Order]]:
    offers: list[Order] = []
    bids: list[Order] = []
    for seq, o in st.orders.pop(slot, []):  # a cleared slot takes no more orders: they are not needed again
        (offers if o.kind == "offer" else bids).append(Order(seq, o.account, o.wh, o.price))
    return offers, bids


def _check_match(st: _Replay, e: Entry) -> None:
    slot = int(e.body["slot"])
    if slot in st.matches or slot % SLOT_S:
        st.problem(e.seq, "replayed", f"slot {slot} cleared twice (or not a slot)")
        return
    made = datetime.fromisoformat(str(e.body["at"]))
    if made.timestamp() >= slot:
        st.problem(e.seq, "late_match", f"slot {slot} cleared at {made.isoformat()}, after delivery began")
    offers, bids = _slot_orders(st, slot)
    left = st.left
    price, pairs = clear([o for o in offers if o.account not in left], [b for b in bids if b.account not in left])
    got = [MatchPair.from_json(p) for p in e.body["pairs"]]
    if got != pairs or e.body.get("price") != price:
        st.problem(e.seq, "bad_match", f"slot {slot}: the pairs or the price are not what the stated rule gives")
    st.matches[slot] = got


def _check_settle(st: _Replay, e: Entry) -> None:
    slot = int(e.body["slot"])
    if slot in st.settled or slot not in st.matches:
        st.problem(e.seq, "bad_settle", f"slot {slot} settled twice or before it was cleared")
        return
    made = datetime.fromisoformat(str(e.body["at"]))
    if made.timestamp() < slot + SLOT_S:
        st.problem(e.seq, "early_settle", f"slot {slot} settled before delivery ended")
    want = settle(st.matches[slot], st.meters, slot)
    got = [tuple(t) for t in e.body["transfers"]]
    if got != [tuple(t) for t in want]:
        st.problem(e.seq, "bad_settle", f"slot {slot}: transfers are not what the metered values give")
        return
    st.settled.add(slot)
    for frm, to, wh in want:
        if to == DELIVERY:
            st.problem(e.seq, "destroyed", "tokens moved back to the delivery account")
        if frm == DELIVERY:
            st.report.minted += wh
        st.move(frm, to, wh)


def _check_checkpoint(st: _Replay, e: Entry) -> None:
    rep = st.report
    rep.checkpoints += 1
    if int(e.body["head_seq"]) != e.seq - 1 or e.body["head"] != e.prev:
        st.problem(e.seq, "bad_checkpoint", "the checkpoint's head is not the entry before it")
    have = {k: v for k, v in rep.balances.items() if v}
    if {str(k): int(v) for k, v in dict(e.body["balances"]).items() if v} != have:
        st.problem(e.seq, "bad_checkpoint", "the checkpoint's balances are not the ledger's")
    rep.last_checkpoint = e.seq

"""The trading ledger's entry format, shared by the city (``cloud_ingest.ledger.chain``, which writes and verifies
the whole ledger) and the gateway (``edge_agent.ledger_check``, which checks a household's own entries): the
canonical bytes, what the city signs and how an entry is hashed. No I/O, no keys (signatures are checked by each
side with cryptography, which this leaf package does not import).

An entry is ``{seq, kind, prev, body, sig, hash}``; ``hash`` is SHA-256 over the canonical JSON of
``{seq, kind, prev, body, sig}``; the city's ``sig`` covers the canonical JSON of ``{seq, kind, prev, body}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "ACCOUNT_KINDS",
    "CITY_KINDS",
    "GENESIS_PREV",
    "KEY_KINDS",
    "LedgerEntry",
    "canonical",
    "entry_hash",
    "signing_input",
]

GENESIS_PREV = "0" * 64
#: entries the city signs with its ledger key
CITY_KINDS = frozenset({"genesis", "key", "join", "leave", "match", "settle", "checkpoint"})
#: entries that are a household's signed message verbatim (signed with its trading key, no ``sig`` of their own)
ACCOUNT_KINDS = frozenset({"offer", "bid", "meter"})
#: entries that name the ledger's key (its certificate, issued by the city CA with the role ``ledger``)
KEY_KINDS = frozenset({"genesis", "key"})


def canonical(doc: Any) -> bytes:
    """The bytes that are hashed and signed: JSON with sorted keys, no spaces, UTF-8."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def signing_input(seq: int, kind: str, prev: str, body: Mapping[str, Any]) -> bytes:
    """What the city's ``sig`` covers: the entry without its ``sig`` and ``hash``."""
    return canonical({"seq": seq, "kind": kind, "prev": prev, "body": body})


def entry_hash(seq: int, kind: str, prev: str, body: Mapping[str, Any], sig: str | None) -> str:
    """An entry's ``hash``."""
    return hashlib.sha256(canonical({"seq": seq, "kind": kind, "prev": prev, "body": body, "sig": sig})).hexdigest()


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One entry, as the ledger keeps it, exports it (one JSON object per line) and the read API sends it."""

    seq: int
    kind: str
    prev: str
    body: dict[str, Any]
    sig: str | None
    hash: str

    def signed_part(self) -> bytes:
        """What the city's ``sig`` covers."""
        return signing_input(self.seq, self.kind, self.prev, self.body)

    def computed_hash(self) -> str:
        return entry_hash(self.seq, self.kind, self.prev, self.body, self.sig)

    def sealed(self) -> bool:
        """The entry's content matches its ``hash`` (False too when it cannot be put in canonical form)."""
        try:
            return self.computed_hash() == self.hash
        except TypeError:  # orjson: an integer beyond 64 bits, ...
            return False

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "prev": self.prev, "body": self.body, "sig": self.sig,
                "hash": self.hash}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LedgerEntry:
        """An entry from its JSON object (KeyError, TypeError or ValueError when it is not one)."""
        body = doc["body"]
        if not isinstance(body, dict):
            raise TypeError("body is not an object")
        sig = doc.get("sig")
        return cls(int(doc["seq"]), str(doc["kind"]), str(doc["prev"]), body, None if sig is None else str(sig),
                   str(doc["hash"]))  # fmt: skip

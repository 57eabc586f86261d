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
from typing import Any

import orjson

__all__ = ["ACCOUNT_KINDS", "CITY_KINDS", "GENESIS_PREV", "KEY_KINDS", "canonical", "entry_hash", "signing_input"]

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

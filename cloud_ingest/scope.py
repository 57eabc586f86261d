"""The cloud's own household tag: what binds every stored point to the gateway that sent it.

A gateway names subjects and devices with per-purpose pseudonyms the cloud cannot check: a hostile gateway could
name another household's (visible) pseudonym. So the cloud never lets a name chosen by a gateway decide whose data
a point is. Every point the ingester writes carries the tag ``household`` = a keyed hash of (the authenticated
gateway id from the topic, which the broker's ACL binds to the certificate; the purpose):

- a point is identified by measurement + tag set + time, so a hostile gateway that reuses a victim's subject
  pseudonym writes *other* series (its own ``household``) and can never overwrite the victim's points;
- erasure deletes ``WHERE household = <the withdrawing gateway's tag> AND subject = ... AND purpose = ...``, so a
  withdrawal can only ever erase the withdrawing gateway's own points;
- community rollups count contributors per ``household``, so inventing subjects does not make one gateway into
  several households (k-anonymity and dominance are judged per household).

The hash is keyed (``scope_key``, a secret shared by the ingesters, the eraser and the rollup, never by analysts):
unkeyed, anyone with the list of gateway ids could compute each gateway's tag and so find a home in the data. It
differs per purpose, so a household's health and energy series cannot be joined through it either.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

log = logging.getLogger(__name__)

#: The tag key of the household scope on every point the ingester writes.
HOUSEHOLD_TAG = "household"

#: Used only when no key is configured (in-process tests and the local demo); services started from the CLI
#: refuse to run without a real key.
DEVELOPMENT_KEY = b"kyojo-development-scope-key-not-for-production"


def new_key() -> str:
    """A fresh scope key (256 bits, hex) for ``scope_key``."""
    return secrets.token_hex(32)


def parse_key(text: str) -> bytes:
    """A configured key: at least 32 hex digits (128 bits); raises ValueError otherwise."""
    value = text.strip()
    try:
        raw = bytes.fromhex(value)
    except ValueError as err:
        raise ValueError("scope_key must be hex (kyojo ingest new-key prints one)") from err
    if len(raw) < 16:
        raise ValueError("scope_key must be at least 128 bits (32 hex digits)")
    return raw


class Scope:
    """Computes (and caches) the ``household`` tag of a gateway under a purpose."""

    __slots__ = ("_cache", "_key")

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            log.warning("no scope_key configured: household tags use the development key (not for production)")
            key = DEVELOPMENT_KEY
        self._key = key[:64]  # BLAKE2b takes keys up to 64 bytes
        self._cache: dict[tuple[str, str], str] = {}

    def household(self, gateway: str, purpose: str) -> str:
        """``h-`` + 20 hex digits (80 bits): the gateway's tag under ``purpose``."""
        key = (gateway, purpose)
        tag = self._cache.get(key)
        if tag is None:
            digest = hashlib.blake2b(
                b"kyojo-household\x00" + gateway.encode() + b"\x00" + purpose.encode(), key=self._key, digest_size=10
            )
            tag = "h-" + digest.hexdigest()
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[key] = tag
        return tag

"""What the cloud checks itself instead of believing a gateway: purpose rules, consent signatures, audit heads.

- :func:`load_purpose_rules`: the city's purpose catalog (the same file the gateways ship) decides which categories a
  purpose may cover and its finest window; a consent record or a batch beyond that is refused, whatever the gateway
  says.
- :class:`GatewayKeys`: each gateway's Ed25519 signing key, registered at enrollment (``kyojo provision sign
  --signing-key``); a consent record must be signed by its own gateway's key.
- :func:`load_gateway_areas`: the area each gateway was enrolled in (``kyojo provision enroll --area``); a disaster
  status is taken only for the area its gateway is registered in, so a gateway cannot speak for another area.
- :class:`AuditTrail`: the audit heads (``"<n>:<hash>"``) a gateway sent with its batches. An honest gateway's
  heads never go back as its batch numbers go up, and an entry's hash never changes; a truncated or rewritten log
  shows up as a conflict, which the ingester counts, logs and sends back in the gateway's retained anchor.
"""

from __future__ import annotations

import base64
import bisect
import fnmatch
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kyojo.contract.vocab import valid_id
from kyojo.contract.wire import ConsentRecord


@dataclass(frozen=True, slots=True)
class PurposeRules:
    """What a purpose allows: its categories and its finest window (seconds)."""

    categories: frozenset[str]
    min_window_s: int
    #: globs of the event kinds the purpose may carry (``watchover.*``); None: any event of its categories
    event_kinds: tuple[str, ...] | None = None

    def allows_events(self, kinds: Iterable[str]) -> bool:
        pats = self.event_kinds
        return pats is None or all(any(fnmatch.fnmatchcase(k, g) for g in pats) for k in kinds)


def load_purpose_rules(path: Path | None = None) -> dict[str, PurposeRules]:
    """Purpose -> rules from a catalog file (default: the catalog the gateways ship, kyojo/contract/purposes.json)."""
    if path is None:
        text = resources.files("kyojo.contract").joinpath("purposes.json").read_text(encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    return {
        name: PurposeRules(
            frozenset(str(c) for c in spec["categories"]),
            int(spec["min_window_s"]),
            tuple(str(k) for k in spec["event_kinds"]) if "event_kinds" in spec else None,
        )
        for name, spec in doc["purposes"].items()
    }


def load_gateway_areas(path: Path) -> dict[str, str]:
    """``{gateway id: area}`` from the file the CA writes (``kyojo provision area --out``); ValueError when bad."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not all(valid_id(k) and isinstance(v, str) and valid_id(v) for k, v in doc.items()):
        raise ValueError(f"{path}: expected {{gateway id: area}}")
    return {str(k): str(v) for k, v in doc.items()}


class GatewayKeys:
    """Registered signing keys: ``{gateway id: base64 raw Ed25519 public key}``."""

    def __init__(self, keys: dict[str, str]) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._keys = {gw: Ed25519PublicKey.from_public_bytes(base64.b64decode(k)) for gw, k in keys.items()}

    @classmethod
    def load(cls, path: Path) -> GatewayKeys:
        """Read the registry the CA writes (``<ca>/gateway_keys.json``); bad entries raise ValueError."""
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not all(valid_id(k) and isinstance(v, str) for k, v in doc.items()):
            raise ValueError(f"{path}: expected {{gateway id: base64 key}}")
        return cls(doc)

    def __contains__(self, gateway: str) -> bool:
        return gateway in self._keys

    def verify(self, record: ConsentRecord) -> bool:
        """True when ``record`` carries a valid signature by its own gateway's registered key."""
        from cryptography.exceptions import InvalidSignature

        key = self._keys.get(record.gateway)
        if key is None or not record.sig:
            return False
        try:
            key.verify(base64.b64decode(record.sig, validate=True), record.signing_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True


class AuditTrail:
    """The audit heads one gateway sent, by batch number (bounded to the newest ``keep``)."""

    __slots__ = ("_by_n", "_keep", "_n", "_seqs", "conflicts", "last_conflict")

    def __init__(self, keep: int = 4096) -> None:
        self._keep = keep
        self._seqs: list[int] = []  # sorted batch numbers
        self._n: dict[int, int] = {}  # batch number -> audit entry number
        self._by_n: dict[int, str] = {}  # audit entry number -> hash
        self.conflicts = 0
        self.last_conflict = ""

    @property
    def head(self) -> tuple[int, str] | None:
        """The highest (entry number, hash) seen."""
        if not self._by_n:
            return None
        n = max(self._by_n)
        return n, self._by_n[n]

    def seed(self, n: int, digest: str, seq: int | None) -> None:
        """Take a head the cloud already anchored (from the retained anchor) without judging it."""
        self._by_n.setdefault(n, digest)
        if seq is not None and seq not in self._n:
            bisect.insort(self._seqs, seq)
            self._n[seq] = n

    def add(self, seq: int, n: int, digest: str) -> str | None:
        """Record the head batch ``seq`` carried; the reason when it contradicts what was seen before."""
        reason = None
        known = self._by_n.get(n)
        if known is not None and known != digest:
            reason = f"entry {n} changed its hash (the log was rewritten)"
        else:
            i = bisect.bisect_left(self._seqs, seq)
            if i < len(self._seqs) and self._seqs[i] == seq:
                if self._n[seq] != n:
                    reason = f"batch {seq} came with entry {n}, before with {self._n[seq]}"
            else:
                if i > 0 and self._n[self._seqs[i - 1]] > n:
                    prev = self._seqs[i - 1]
                    reason = f"batch {seq} names entry {n}, older batch {prev} named {self._n[prev]} (truncated log)"
                elif i < len(self._seqs) and self._n[self._seqs[i]] < n:
                    nxt = self._seqs[i]
                    reason = f"batch {seq} names entry {n}, newer batch {nxt} named {self._n[nxt]} (truncated log)"
                bisect.insort(self._seqs, seq)
                self._n[seq] = n
        if reason is not None:
            self.conflicts += 1
            self.last_conflict = reason
            return reason
        self._by_n[n] = digest
        while len(self._seqs) > self._keep:
            old = self._seqs.pop(0)
            self._n.pop(old, None)
        if len(self._by_n) > self._keep:
            for stale in sorted(self._by_n)[: len(self._by_n) - self._keep]:
                del self._by_n[stale]
        return None

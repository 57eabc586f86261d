"""The household's copy of everything that left the home: the audit log, its verdict and the signed consents.

One document for ``kyojo audit export`` and the web page's "download" button, signed by the gateway's key (the
same Ed25519 key as the consent records) over its canonical JSON without the ``signature`` field, so a household
can show a third party exactly what its gateway recorded.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from edge_agent import audit, consent
from edge_agent.config import AgentConfig
from kyojo.keys import load_keys, verify_signature


def export_log(config: AgentConfig, conn: sqlite3.Connection, now: datetime | None = None) -> dict[str, Any]:
    """The whole log (entries, verdict, signed consent records, public key), signed by the gateway."""
    keys = load_keys(config.gateway.data_dir)
    verdict = audit.verify(conn)
    doc: dict[str, Any] = {
        "gateway": config.gateway.id,
        "exported_at": (now or datetime.now(UTC)).isoformat(),
        "public_key": keys.public_key_b64(),
        "key_id": keys.key_id,
        "verify": verdict.as_dict(),
        "consents": [consent.signed_record(conn, c.id) for c in consent.list_consents(conn)],
        "entries": [
            {"n": e.n, "at": e.when.isoformat(), "kind": e.kind, "body": e.body, "prev": e.prev, "hash": e.hash}
            for e in audit.entries(conn)
        ],
    }
    doc["signature"] = keys.sign(consent.canonical(doc))
    return doc


def check_export(doc: dict[str, Any]) -> bool:
    """True if an exported document's signature holds under the public key it names."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return verify_signature(str(doc.get("public_key", "")), consent.canonical(body), str(doc.get("signature", "")))

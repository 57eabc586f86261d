"""Safety status in a disaster (安否確認, issue 17 section 2), the gateway's side.

The city declares a disaster for an area with a message signed by its CA's key (``kyojo provision declare``),
retained on :func:`kyojo.contract.wire.disaster_topic`. The publisher hands every such message to
:class:`Declarations`, which takes it only when

- the signature verifies against the city CA's certificate the gateway already trusts for its broker connection
  (``[mqtt.tls] ca``, or ``[safety] city_ca``), and nothing else;
- its ``seq`` is above every one taken before (a replayed or older declaration is refused, also across restarts:
  the highest is kept in ``disaster.json``);
- it is not issued in the future (beyond ``MAX_SKEW_S``) and, for an active one, has not ended.

Each refusal is counted by cause (``status.safety.refused``) and logged once per cause. A declaration for another
area is remembered (so its end is understood) but not answered.

While a declaration for the gateway's area (``[gateway] area``) is active, :meth:`SafetyStatus.due` makes, every
``[safety] interval``, one ``safety.status`` event per person who granted ``disaster-safety``: only whether the
home showed a sign of life in the last 1, 3 and 12 hours (the watch-over processor's signals), whether the meter
reports power, and the household's own "we are safe" / "please check on us" (``kyojo safety``). The events go the
usual way: consent gate (the purpose carries ``safety.*`` events only), audit log, outbox. Nothing is sent once the
declaration ends or expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from kyojo.contract.errors import KyojoError
from kyojo.contract.vocab import Category, Event
from kyojo.contract.wire import DisasterDeclaration
from kyojo.runtime.files import atomic_write_text

log = logging.getLogger(__name__)

MAX_SKEW_S = 300.0
STATE_FILE = "disaster.json"
PRESS_FILE = "safety-press.json"


class DeclarationError(KyojoError):
    """A declaration the gateway refuses; ``cause``: malformed, signature, replayed, future, ended."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause


def load_city_key(ca_cert: Path) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_certificate(ca_cert.read_bytes()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeclarationError("malformed", f"{ca_cert}: the city CA key is not an EC key")
    return key


@dataclass
class Declarations:
    """The declarations the gateway has taken (thread-safe: the publisher writes, the agent reads)."""

    data_dir: Path
    city_key: ec.EllipticCurvePublicKey | None
    refused: dict[str, int] = field(default_factory=dict)
    taken: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.last_seq = 0
        self.current: dict[str, DisasterDeclaration] = {}  # area -> newest declaration taken
        try:
            doc = json.loads((self.data_dir / STATE_FILE).read_text(encoding="utf-8"))
            self.last_seq = int(doc["last_seq"])
            for d in doc.get("current", []):
                decl = DisasterDeclaration.model_validate(d)
                self.current[decl.area] = decl
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged file: refuse nothing older than 0
            log.warning("%s unreadable (%s): starting from no declaration", STATE_FILE, err)

    def take(self, payload: bytes, now: float) -> DisasterDeclaration:
        """Verify and keep one message; :class:`DeclarationError` (counted) when refused."""
        try:
            decl = self._verify(payload, now)
        except DeclarationError as err:
            with self._lock:
                self.refused[err.cause] = self.refused.get(err.cause, 0) + 1
            level = logging.DEBUG if err.cause in self._warned else logging.WARNING
            self._warned.add(err.cause)
            log.log(level, "refused a disaster declaration: %s", err)
            raise
        with self._lock:
            self.last_seq = decl.seq
            self.current[decl.area] = decl
            self.taken += 1
            doc = {"last_seq": self.last_seq, "current": [d.model_dump(mode="json") for d in self.current.values()]}
        atomic_write_text(self.data_dir / STATE_FILE, json.dumps(doc), mode=0o644)
        log.info("disaster declaration %s (%s, %s) for %s taken", decl.id, decl.kind, decl.status, decl.area)
        return decl

    def _verify(self, payload: bytes, now: float) -> DisasterDeclaration:
        try:
            decl = DisasterDeclaration.model_validate_json(payload)
        except ValueError as err:
            raise DeclarationError("malformed", str(err).replace("\n", " ")[:200]) from None
        if self.city_key is None:
            raise DeclarationError("signature", "no city CA certificate configured to check it against")
        try:
            self.city_key.verify(
                base64.b64decode(decl.sig or "", validate=True), decl.signing_bytes(), ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError):
            raise DeclarationError("signature", f"{decl.id}: not signed by the city CA") from None
        if decl.seq <= self.last_seq:
            raise DeclarationError("replayed", f"{decl.id}: number {decl.seq} <= {self.last_seq} already taken")
        if decl.issued_at.timestamp() > now + MAX_SKEW_S:
            raise DeclarationError("future", f"{decl.id}: issued {decl.issued_at.isoformat()}")
        if decl.status == "active" and decl.ends_at.timestamp() <= now:
            raise DeclarationError("ended", f"{decl.id}: ended {decl.ends_at.isoformat()}")
        return decl

    def active(self, area: str | None, now: float) -> DisasterDeclaration | None:
        """The declaration in force for ``area`` at ``now`` (None: none, ended or expired)."""
        if area is None:
            return None
        with self._lock:
            decl = self.current.get(area)
        if decl is None or decl.status != "active" or not decl.issued_at.timestamp() <= now < decl.ends_at.timestamp():
            return None
        return decl


def press(data_dir: Path, *, safe: bool, check_on_us: bool, now: float, contact: str | None = None) -> None:
    """The household's own word ("we are safe", "please check on us" with, if they want to be found, a name and
    address: the only thing that names them), kept for the next status."""
    doc = {"at": now, "safe": safe, "check_on_us": check_on_us, "contact": (contact or "").strip()[:200] or None}
    atomic_write_text(data_dir / PRESS_FILE, json.dumps(doc), mode=0o644)


def read_press(data_dir: Path) -> dict[str, object]:
    try:
        doc = json.loads((data_dir / PRESS_FILE).read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class SafetyStatus:
    """Makes the ``safety.status`` events while a declaration for this gateway's area is in force."""

    declarations: Declarations
    area: str | None
    interval_s: float
    last: dict[str, float] = field(default_factory=dict)  # declaration id -> when the last status was made
    made: int = 0

    def due(
        self,
        now: float,
        subjects: list[str],
        *,
        last_activity: float | None,
        power_seen: float | None,
        device: str,
        watched: bool = True,
    ) -> list[Event]:
        """The status events due at ``now`` (one per subject), or none. ``watched``: the gateway has a meter under
        watch-over; without one, activity and power are unknown and left out (never reported as "none")."""
        decl = self.declarations.active(self.area, now)
        if decl is None or not subjects or now - self.last.get(decl.id, -1e18) < self.interval_s:
            return []
        self.last[decl.id] = now
        pressed = read_press(self.declarations.data_dir)
        pressed_at = pressed.get("at")
        fresh = isinstance(pressed_at, int | float) and pressed_at >= decl.issued_at.timestamp()
        attrs: dict[str, str | float | int | bool] = {"declaration": decl.id, "area": decl.area}
        if last_activity is not None:
            for hours in (1, 3, 12):
                attrs[f"active_{hours}h"] = now - last_activity <= hours * 3600
        if watched:
            attrs["power"] = power_seen is not None and now - power_seen <= 600
        attrs["safe"] = bool(fresh and pressed.get("safe"))
        attrs["check_on_us"] = bool(fresh and pressed.get("check_on_us"))
        contact = pressed.get("contact")
        if attrs["check_on_us"] and isinstance(contact, str) and contact:
            attrs["contact"] = contact[:200]
        stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%S")
        self.made += len(subjects)
        return [
            Event(
                id="ss-" + hashlib.sha256(f"{decl.id}|{s}|{stamp}".encode()).hexdigest()[:24],
                kind="safety.status",
                category=Category.WELLBEING,
                subject=s,
                device=device,
                ts=now,
                severity="warning" if attrs["check_on_us"] else "info",
                attrs=attrs,
            )
            for s in subjects
        ]

"""The gateway's own secrets: the pseudonym key and the signing key. Neither ever leaves the gateway.

Pseudonyms: the cloud never sees a person's name, a household id or a device serial. Each subject and device
gets one pseudonym per purpose, ``HMAC-SHA256(key, purpose NUL id)`` truncated to 80 bits, so the same person's
preventive-care and energy data carry unrelated ids and an analyst cannot join them, while the gateway (and
only the gateway) can map them back for the household and for erasure.

Signing: consent records are signed with the gateway's Ed25519 key so a record shown to the household, or
exported, can be checked against the gateway's public key (provisioning registers that key with the operator).

Both the agent (pseudonyms, signatures) and ``kyojo provision gateway`` (the public key rides in the enrollment
CSR, and the key is made there on a fresh gateway) open this store, so it lives in the shared glue rather than in
either part: a leaf that imports the standard library and ``cryptography`` only (an import-linter contract).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) atomically; if another process (agent or CLI) won the race, keep its key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


@dataclass(frozen=True)
class GatewayKeys:
    pseudonym_key: bytes
    signing_key: Ed25519PrivateKey

    def pseudonym(self, purpose: str, subject: str) -> str:
        """The subject's id for this purpose as the cloud sees it."""
        return "s-" + self._mac(purpose, subject)

    def device_pseudonym(self, purpose: str, device: str) -> str:
        return "d-" + self._mac(purpose, "device:" + device)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self.pseudonym_key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()[:20]

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.signing_key.sign(data)).decode()

    def public_key_b64(self) -> str:
        raw = self.signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def purpose_signing_key(self, purpose: str) -> Ed25519PrivateKey:
        """A signing key of this gateway for one purpose only (the trading ledger's): derived from the pseudonym
        key, so it needs no file of its own, and its public key says nothing about the gateway's enrolled key, so
        entries signed with it cannot be joined to the gateway's other purposes."""
        seed = hmac.new(self.pseudonym_key, f"signing-key\0{purpose}".encode(), hashlib.sha256).digest()
        return Ed25519PrivateKey.from_private_bytes(seed)

    def purpose_sign(self, purpose: str, data: bytes) -> str:
        """Sign ``data`` with :meth:`purpose_signing_key` (base64)."""
        return base64.b64encode(self.purpose_signing_key(purpose).sign(data)).decode()

    def purpose_public_key_b64(self, purpose: str) -> str:
        """The public half of :meth:`purpose_signing_key` (base64 of the 32 raw bytes)."""
        pub = self.purpose_signing_key(purpose).public_key()
        return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()

    @property
    def key_id(self) -> str:
        return hashlib.sha256(base64.b64decode(self.public_key_b64())).hexdigest()[:16]


def verify_signature(public_key_b64: str, data: bytes, signature_b64: str) -> bool:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    try:
        key.verify(base64.b64decode(signature_b64), data)
    except Exception:
        return False
    return True


@lru_cache(maxsize=16)
def load_keys(data_dir: Path) -> GatewayKeys:
    """Load the gateway's keys from ``data_dir/keys``, creating them (mode 0600) on first use."""
    kdir = data_dir / "keys"
    pkey, skey = kdir / "pseudonym.key", kdir / "signing.pem"
    if not pkey.exists():
        _write_secret(pkey, secrets.token_bytes(32))
    if not skey.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_secret(skey, pem)
    private = serialization.load_pem_private_key(skey.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{skey} is not an Ed25519 key")
    return GatewayKeys(pkey.read_bytes(), private)

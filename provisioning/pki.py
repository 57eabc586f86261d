"""The city CA, gateway and service identities, enrollment, renewal and revocation (``cryptography`` only).

Who runs what:

* CA host (offline, operator): :func:`init_ca`, :meth:`CertificateAuthority.enroll` (prints a one-time code),
  :meth:`CertificateAuthority.sign_csr`, :meth:`CertificateAuthority.revoke`,
  :meth:`CertificateAuthority.write_crl`, :meth:`CertificateAuthority.issue_server`.
* Gateway (installer, on the Pi): :func:`create_request` makes the EC P-256 key *on the device* (mode 0600,
  it never leaves the state directory) and a CSR whose CN is the gateway id; :func:`install_certificate`
  puts the signed certificate next to the key; :func:`create_renewal_request` when :func:`renewal_due`.
* Services (ingesters) use the same request/sign flow with a different role.

How a CSR is bound to an identity (nothing but the CSR file travels from the device to the CA host):

* First enrollment: the operator runs ``enroll <id>``, which stores a random one-time code for that id (expires
  after ``enroll_ttl``; deleted on use). The installer types the code on the device. The CSR carries, in the
  PKCS#9 ``challengePassword`` attribute, ``enroll:`` + HMAC-SHA256(code, domain || CN || SubjectPublicKeyInfo).
  The code itself never travels; an intercepted CSR cannot be replayed with another key or another CN.
* Renewal: the CSR carries ``renew:`` + an ECDSA signature, made with the *current* key, over
  (domain || CN || new SubjectPublicKeyInfo). The CA verifies it against the CN's current certificate in its
  index (valid, not revoked). No code is needed; a revoked or expired identity must enroll again.

Identities are the certificate CN, which the broker uses as MQTT username *and* client id. CNs are unique across
roles (a gateway can never be called ``ingest-1``), and must match the wire's identifier pattern, so they carry
no ``/``, ``+`` or ``#`` that could escape an ACL pattern.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

from kyojo.contract.errors import KyojoError
from kyojo.contract.vocab import ID_PATTERN, valid_id
from kyojo.runtime.files import atomic_write

if TYPE_CHECKING:
    from kyojo.contract.wire import DisasterDeclaration

__all__ = [
    "CertificateAuthority",
    "IssuedRecord",
    "Lifetimes",
    "PkiError",
    "Role",
    "create_renewal_request",
    "create_request",
    "identity_of",
    "init_ca",
    "install_certificate",
    "load_certificate",
    "renew_at",
    "renewal_due",
    "write_private",
]


_ENROLL_DOMAIN = b"kyojo-enroll-v1\x00"
_RENEW_DOMAIN = b"kyojo-renew-v1\x00"
_ORG = "Kyojo"

# Enrollment codes: 10 characters of Crockford-like base32 without look-alikes, ~50 bits, typed by an installer.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
_CODE_LEN = 10


class PkiError(KyojoError, ValueError):
    """A refused operation: bad CSR, wrong or expired code, CN mismatch, unknown serial, unsafe files."""


class Role(StrEnum):
    """What an identity may do; written in the certificate subject's OU and in the CA index."""

    GATEWAY = "gateway"
    INGEST = "ingest"
    BROKER = "broker"
    #: the erasure service: reads consent records, the only writer of erasure receipts (and, with the
    #: ingesters, of audit anchors); see provisioning/broker.py
    ERASER = "eraser"
    #: the broker's dynamic-security administrator (``kyojo provision broker-sync``); no data topics at all
    ADMIN = "admin"
    #: the city's trading ledger (cloud_ingest/ledger): signs matches, settlements and checkpoints; no broker access
    LEDGER = "ledger"


@dataclass(frozen=True)
class Lifetimes:
    """Validity periods. Short leaf lifetimes + renewal at 2/3 keep a stolen key useful only briefly."""

    ca_days: int = 3650
    gateway_days: int = 90
    service_days: int = 90
    server_days: int = 365
    #: CRL ``nextUpdate``: OpenSSL (so Mosquitto) refuses *every* client once the CRL is past it, so the
    #: operator must re-run ``crl`` (cron/timer) well within this period.
    crl_days: int = 7
    enroll_ttl_minutes: int = 120

    def leaf_days(self, role: Role) -> int:
        """Lifetime of a certificate of ``role``."""
        if role is Role.GATEWAY:
            return self.gateway_days
        return self.server_days if role is Role.BROKER else self.service_days


@dataclass
class IssuedRecord:
    """One issued certificate in the CA index (``index.json``)."""

    serial: str  # hex
    cn: str
    role: str
    not_before: str  # ISO 8601 UTC
    not_after: str
    sha256: str
    revoked_at: str | None = None
    reason: str | None = None

    @property
    def revoked(self) -> bool:
        """True once revoked."""
        return self.revoked_at is not None

    def valid_at(self, when: dt.datetime) -> bool:
        """Not revoked and within its validity period at ``when``."""
        nb = dt.datetime.fromisoformat(self.not_before)
        na = dt.datetime.fromisoformat(self.not_after)
        return not self.revoked and nb <= when <= na


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _check_id(name: str) -> str:
    if not valid_id(name):
        raise PkiError(f"identity {name!r} must match {ID_PATTERN} (no '/', '+', '#', spaces)")
    return name


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably with mode 0600 (created so, never chmod-ed after the fact)."""
    atomic_write(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    """Write a public file (certificate, CRL, CSR) atomically and durably with mode 0644."""
    atomic_write(path, data, mode=0o644, exact=True)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PkiError(f"{path} is mode {mode:o}; a private key must be 0600 (chmod 600 {path})")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: not an EC private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def identity_of(cert_path: Path) -> str:
    """The CN of a certificate: the identity the broker will use as username and client id.

    The agent should refuse to start when this differs from its configured gateway id: every publish would
    otherwise be refused with PUBACK 0x87 (its topics are ``kyojo/v1/<gateway id>/...``, the ACL uses the CN).
    """
    return _cn(load_certificate(cert_path).subject)


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise PkiError("the subject must have exactly one CN")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def _enroll_mac(code: str, cn: str, spki: bytes) -> str:
    return hmac.new(code.encode(), _ENROLL_DOMAIN + cn.encode() + b"\x00" + spki, hashlib.sha256).hexdigest()


def _subject(cn: str, role: Role) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Lifetime and renewal
# --------------------------------------------------------------------------------------------------


def renew_at(cert: x509.Certificate) -> dt.datetime:
    """When to renew: two thirds into the certificate's lifetime (UTC)."""
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    return nb + (na - nb) * 2 / 3


def renewal_due(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """True once two thirds of the lifetime have passed (and also when already expired)."""
    return (now or _now()) >= renew_at(cert)


# --------------------------------------------------------------------------------------------------
# Device side (gateway on the Pi, or a service host)
# --------------------------------------------------------------------------------------------------

KEY_NAME = "identity.key"
CSR_NAME = "identity.csr"
CERT_NAME = "identity.crt"
CA_NAME = "ca.crt"
NEXT_KEY_NAME = "identity.next.key"


def _tls_dir(state_dir: Path) -> Path:
    path = Path(state_dir) / "tls"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def create_request(
    state_dir: Path, ident: str, code: str, role: Role = Role.GATEWAY, *, signing_key: str | None = None
) -> Path:
    """Generate the identity key on this machine and a CSR for ``ident`` bound to the enrollment ``code``.

    Files under ``<state_dir>/tls/``: ``identity.key`` (0600, kept; an existing key is reused so a lost CSR
    can be re-made) and ``identity.csr`` (public; this is what goes to the CA host). Returns the CSR path.

    ``signing_key``: a gateway's Ed25519 consent-signing public key (base64 of the 32 raw bytes). It travels in
    the CSR as a subjectAltName URI (:data:`SIGNING_KEY_URI`), covered by the CSR's signature, so registering it
    at the CA needs no second step and cannot be swapped in transit; the CA records it in ``gateway_keys.json``.
    """
    _check_id(ident)
    tls = _tls_dir(state_dir)
    key_path = tls / KEY_NAME
    if key_path.exists():
        key = _load_key(key_path)
    else:
        key = _new_key()
        write_private(key_path, _key_pem(key))
    mac = _enroll_mac(code.strip().upper(), ident, _spki(key.public_key()))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(ident, role))
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, f"enroll:{mac}".encode())
    )
    if signing_key is not None:
        _check_signing_key(signing_key)
        uri = x509.UniformResourceIdentifier(SIGNING_KEY_URI + signing_key)
        builder = builder.add_extension(x509.SubjectAlternativeName([uri]), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    csr_path = tls / CSR_NAME
    _write_public(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return csr_path


#: subjectAltName URI prefix of a gateway's consent-signing key in its enrollment CSR
SIGNING_KEY_URI = "urn:kyojo:signing-key:ed25519:"
#: the CA's registry of gateway signing keys, ``{gateway: base64 key}``, for the cloud's ``gateway_keys`` setting
GATEWAY_KEYS_NAME = "gateway_keys.json"
#: ``{gateway id: area}``: where each gateway is, as the operator enrolled it (``kyojo provision enroll --area``)
GATEWAY_AREAS_NAME = "gateway_areas.json"


def _check_signing_key(value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as err:
        raise PkiError("signing key is not base64") from err
    if len(raw) != 32:
        raise PkiError("signing key must be 32 bytes (Ed25519)")
    return raw


def _csr_signing_key(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    keys = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SIGNING_KEY_URI)]
    if len(keys) != 1:
        raise PkiError("a CSR names at most one signing key") if keys else PkiError("unexpected subjectAltName")
    value = keys[0].removeprefix(SIGNING_KEY_URI)
    _check_signing_key(value)
    return value


def pending_renewal(state_dir: Path) -> Path | None:
    """The renewal CSR still waiting for the CA (its key ``identity.next.key`` not installed yet), or None."""
    tls = _tls_dir(state_dir)
    csr, nxt = tls / CSR_NAME, tls / NEXT_KEY_NAME
    return csr if csr.exists() and nxt.exists() else None


def create_renewal_request(state_dir: Path) -> Path:
    """A renewal CSR: a fresh key (``identity.next.key``, 0600) proven by a signature of the current key.

    The current key and certificate stay in use until :func:`install_certificate` installs the new one.
    """
    tls = _tls_dir(state_dir)
    current_key = _load_key(tls / KEY_NAME)
    cert = load_certificate(tls / CERT_NAME)
    cn = _cn(cert.subject)
    role = Role(str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value))
    new_key = _new_key()
    write_private(tls / NEXT_KEY_NAME, _key_pem(new_key))
    proof = current_key.sign(
        _RENEW_DOMAIN + cn.encode() + b"\x00" + _spki(new_key.public_key()), ec.ECDSA(hashes.SHA256())
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(cn, role))
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"renew:" + base64.b64encode(proof))
        .sign(new_key, hashes.SHA256())
    )
    csr_path = tls / CSR_NAME
    _write_public(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return csr_path


def install_certificate(state_dir: Path, cert_pem: bytes, ca_pem: bytes | None = None) -> Path:
    """Install a signed certificate (and the CA certificate) next to the key it belongs to.

    Accepts the certificate for ``identity.key`` or, after a renewal request, for ``identity.next.key`` (which
    then replaces the old key). Refuses a certificate that matches neither key or that the CA did not sign.
    """
    tls = _tls_dir(state_dir)
    cert = x509.load_pem_x509_certificate(cert_pem)
    if ca_pem is not None:
        ca = x509.load_pem_x509_certificate(ca_pem)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise PkiError(f"the certificate was not issued by this CA: {err}") from err
        _write_public(tls / CA_NAME, ca_pem)
    spki = _spki_of_cert(cert)
    nxt, cur = tls / NEXT_KEY_NAME, tls / KEY_NAME
    if nxt.exists() and _spki(_load_key(nxt).public_key()) == spki:
        _write_public(tls / CERT_NAME, cert_pem)
        os.replace(nxt, cur)
    elif cur.exists() and _spki(_load_key(cur).public_key()) == spki:
        _write_public(tls / CERT_NAME, cert_pem)
    else:
        raise PkiError("the certificate does not belong to this device's key")
    return tls / CERT_NAME


def _spki_of_cert(cert: x509.Certificate) -> bytes:
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise PkiError("not an EC certificate")
    return _spki(pub)


# --------------------------------------------------------------------------------------------------
# CA host
# --------------------------------------------------------------------------------------------------


def init_ca(ca_dir: Path, name: str = "Kyojo City CA", lifetimes: Lifetimes | None = None) -> CertificateAuthority:
    """Create a new root CA in ``ca_dir`` (refuses to overwrite one) and an empty CRL.

    Files: ``ca.key`` (0600), ``ca.crt``, ``settings.json``, ``index.json`` (0600), ``crl.pem``; the directory
    itself is 0700. Keep this directory on an offline machine.
    """
    ca_dir = Path(ca_dir)
    if (ca_dir / "ca.key").exists():
        raise PkiError(f"{ca_dir} already holds a CA (ca.key); refusing to overwrite it")
    life = lifetimes or Lifetimes()
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    key = _new_key()
    now = _now()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=life.ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(ca_dir / "ca.key", _key_pem(key))
    _write_public(ca_dir / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write_public(ca_dir / "settings.json", json.dumps(asdict(life), indent=2).encode())
    write_private(ca_dir / "index.json", b"[]")
    ca = CertificateAuthority(ca_dir)
    ca.write_crl()
    return ca


@dataclass
class CertificateAuthority:
    """A CA directory made by :func:`init_ca`. Every method re-reads and rewrites its files (no caching)."""

    ca_dir: Path
    lifetimes: Lifetimes = field(init=False)

    def __post_init__(self) -> None:
        self.ca_dir = Path(self.ca_dir)
        if not (self.ca_dir / "ca.key").exists():
            raise PkiError(f"no CA in {self.ca_dir} (run: kyojo provision ca init --dir {self.ca_dir})")
        self.lifetimes = Lifetimes(**json.loads((self.ca_dir / "settings.json").read_text()))

    # -- files ------------------------------------------------------------------------------------------
    @property
    def cert_path(self) -> Path:
        """The CA certificate (distribute to gateways, ingesters and the broker)."""
        return self.ca_dir / "ca.crt"

    @property
    def crl_path(self) -> Path:
        """The current CRL (PEM), for Mosquitto's ``crlfile``."""
        return self.ca_dir / "crl.pem"

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return load_certificate(self.cert_path)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        return _load_key(self.ca_dir / "ca.key")

    def declare(
        self,
        area: str,
        hours: float,
        *,
        kind: str = "earthquake",
        end: str | None = None,
        now: dt.datetime | None = None,
    ) -> DisasterDeclaration:
        """Sign a disaster declaration for ``area`` lasting ``hours`` (or, with ``end=<id>``, the end of that
        declaration). Numbers grow per CA (``declarations.json``), so gateways can refuse a replayed one."""
        from kyojo.contract.wire import DisasterDeclaration

        log_path = self.ca_dir / "declarations.json"
        issued: list[dict[str, Any]] = json.loads(log_path.read_text()) if log_path.exists() else []
        now = now or _now()
        seq = 1 + max((int(d["seq"]) for d in issued), default=0)
        if end is not None:
            before = [d for d in issued if d["id"] == end and d["status"] == "active"]
            if not before:
                raise PkiError(f"no active declaration {end!r} was issued by this CA")
            area, kind, ident = before[-1]["area"], before[-1]["kind"], end
        else:
            ident = f"d{seq}-{_check_id(area)}"
        decl = DisasterDeclaration(
            id=ident,
            seq=seq,
            area=area,
            kind=kind,
            status="ended" if end is not None else "active",
            issued_at=now,
            ends_at=now if end is not None else now + dt.timedelta(hours=hours),
        )
        der = self._key().sign(decl.signing_bytes(), ec.ECDSA(hashes.SHA256()))
        decl = decl.model_copy(update={"sig": base64.b64encode(der).decode()})
        issued.append(decl.model_dump(mode="json", exclude={"sig"}))
        atomic_write(log_path, json.dumps(issued, indent=1).encode(), mode=0o644)
        return decl

    def records(self) -> list[IssuedRecord]:
        """Everything issued so far (``index.json``)."""
        return [IssuedRecord(**r) for r in json.loads((self.ca_dir / "index.json").read_text())]

    def _save(self, records: Sequence[IssuedRecord]) -> None:
        write_private(self.ca_dir / "index.json", json.dumps([asdict(r) for r in records], indent=2).encode())

    def identities(self, role: Role) -> list[str]:
        """CNs of ``role`` with at least one valid (unexpired, unrevoked) certificate, sorted."""
        now = _now()
        return sorted({r.cn for r in self.records() if r.role == role.value and r.valid_at(now)})

    # -- enrollment -------------------------------------------------------------------------------------
    def _enroll_path(self, ident: str) -> Path:
        return self.ca_dir / "enroll" / f"{ident}.json"

    def enroll(
        self, ident: str, role: Role = Role.GATEWAY, ttl: dt.timedelta | None = None, *, area: str | None = None
    ) -> str:
        """Open a one-time enrollment for ``ident`` (with ``role``); return the code to give the installer.

        ``area`` (gateways only): the city's area the gateway is installed in, registered when its CSR is signed
        (:meth:`gateway_areas`); the cloud then takes a disaster status from it for that area only, whatever the
        gateway's own configuration says. A new call replaces an earlier, unused code. The code file is 0600 and
        deleted when a CSR uses it.
        """
        _check_id(ident)
        if area is not None:
            if role is not Role.GATEWAY:
                raise PkiError("only a gateway has an area")
            _check_id(area)
        self._check_role_free(ident, role)
        ttl = ttl or dt.timedelta(minutes=self.lifetimes.enroll_ttl_minutes)
        code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LEN))
        record = {"id": ident, "role": role.value, "code": code, "expires": (_now() + ttl).isoformat()}
        if area is not None:
            record["area"] = area
        write_private(self._enroll_path(ident), json.dumps(record).encode())
        return code

    def _check_role_free(self, ident: str, role: Role) -> None:
        for rec in self.records():
            if rec.cn == ident and rec.role != role.value:
                raise PkiError(f"{ident!r} is already a {rec.role} identity; CNs are unique across roles")

    # -- signing ----------------------------------------------------------------------------------------
    def sign_csr(self, csr_pem: bytes, *, expected_id: str | None = None, now: dt.datetime | None = None) -> bytes:
        """Check a CSR's proof (enrollment code or renewal signature) and issue its certificate (PEM).

        ``expected_id`` (optional) must equal the CSR's CN: the operator states which gateway they meant.
        Refuses: a bad CSR signature, a CN that is not a valid identifier or differs from ``expected_id``, no
        open enrollment for the CN, an expired or wrong code, a renewal whose signature does not verify with the
        CN's current (valid, unrevoked) certificate.
        """
        now = now or _now()
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise PkiError(f"not a PEM CSR: {err}") from err
        if not csr.is_signature_valid:
            raise PkiError("the CSR's self-signature is invalid")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise PkiError("identity keys must be EC P-256")
        cn = _check_id(_cn(csr.subject))
        if expected_id is not None and cn != expected_id:
            raise PkiError(f"CSR CN {cn!r} does not match the planned identity {expected_id!r}")
        try:
            proof = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
        except x509.AttributeNotFound as err:
            raise PkiError("the CSR carries no enrollment proof (challengePassword)") from err
        proof_s = proof.decode() if isinstance(proof, bytes) else str(proof)
        if proof_s.startswith("enroll:"):
            asked = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
            planned = self._planned_role(cn)
            if asked and planned is not None and str(asked[0].value) != planned.value:
                # refused before the code is used: the operator enrolls again with the right --role
                raise PkiError(
                    f"{cn!r} was enrolled as {planned.value} but its CSR asks for {asked[0].value!s}: "
                    f"enroll it again with --role {asked[0].value!s}"
                )
            role, area = self._consume_enrollment(cn, proof_s.removeprefix("enroll:"), _spki(pub), now)
        elif proof_s.startswith("renew:"):
            role, area = self._check_renewal(cn, proof_s.removeprefix("renew:"), _spki(pub), now), None
        else:
            raise PkiError("unknown proof in the CSR's challengePassword")
        signing_key = _csr_signing_key(csr)
        if signing_key is not None and role is not Role.GATEWAY:
            raise PkiError("only a gateway registers a consent-signing key")
        cert = self._issue(cn, role, pub, now)
        if signing_key is not None:
            self.register_signing_key(cn, signing_key)
        if area is not None:
            self.register_area(cn, area)
        return cert.public_bytes(serialization.Encoding.PEM)

    @property
    def gateway_keys_path(self) -> Path:
        """``gateway_keys.json``: what the cloud services read as ``gateway_keys``."""
        return self.ca_dir / GATEWAY_KEYS_NAME

    def gateway_keys(self) -> dict[str, str]:
        """Registered consent-signing keys by gateway."""
        try:
            doc = json.loads(self.gateway_keys_path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in doc.items()}

    def register_signing_key(self, gateway: str, key_b64: str) -> None:
        """Record (or, at a re-enrollment, replace) a gateway's consent-signing key."""
        _check_id(gateway)
        _check_signing_key(key_b64)
        keys = self.gateway_keys()
        keys[gateway] = key_b64
        _write_public(self.gateway_keys_path, json.dumps(dict(sorted(keys.items())), indent=2).encode())

    @property
    def gateway_areas_path(self) -> Path:
        """``gateway_areas.json``: what the cloud services read as ``gateway_areas``."""
        return self.ca_dir / GATEWAY_AREAS_NAME

    def gateway_areas(self) -> dict[str, str]:
        """The area each gateway was enrolled (or moved) in."""
        try:
            doc = json.loads(self.gateway_areas_path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in doc.items()}

    def register_area(self, gateway: str, area: str | None) -> None:
        """Record where ``gateway`` is (an operator's decision: at enrollment, or when the gateway moves; None
        forgets it)."""
        _check_id(gateway)
        areas = self.gateway_areas()
        if area is None:
            areas.pop(gateway, None)
        else:
            areas[gateway] = _check_id(area)
        _write_public(self.gateway_areas_path, json.dumps(dict(sorted(areas.items())), indent=2).encode())

    def _planned_role(self, cn: str) -> Role | None:
        """The role of ``cn``'s open enrollment (None: none open)."""
        try:
            return Role(json.loads(self._enroll_path(cn).read_text())["role"])
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def _consume_enrollment(self, cn: str, mac: str, spki: bytes, now: dt.datetime) -> tuple[Role, str | None]:
        path = self._enroll_path(cn)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise PkiError(f"no open enrollment for {cn!r} (run: kyojo provision enroll {cn})") from None
        if now > dt.datetime.fromisoformat(record["expires"]):
            path.unlink()
            raise PkiError(f"the enrollment code for {cn!r} expired at {record['expires']}; enroll again")
        if not hmac.compare_digest(_enroll_mac(record["code"], cn, spki), mac):
            # Wrong code (or a CSR altered in transit): the code stays open until it expires.
            raise PkiError(f"the CSR's enrollment proof for {cn!r} is wrong (wrong code?)")
        path.unlink()  # one-time
        role = Role(record["role"])
        self._check_role_free(cn, role)
        area = record.get("area")
        return role, str(area) if isinstance(area, str) else None

    def _check_renewal(self, cn: str, sig_b64: str, spki: bytes, now: dt.datetime) -> Role:
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except ValueError as err:
            raise PkiError("malformed renewal proof") from err
        current = [r for r in self.records() if r.cn == cn and r.valid_at(now)]
        if not current:
            raise PkiError(f"{cn!r} has no valid certificate to renew from (revoked or expired): enroll again")
        for rec in current:
            cert = load_certificate(self.ca_dir / "issued" / f"{rec.serial}.pem")
            pub = cert.public_key()
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                continue
            try:
                pub.verify(sig, _RENEW_DOMAIN + cn.encode() + b"\x00" + spki, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return Role(rec.role)
        raise PkiError(f"the renewal proof for {cn!r} does not verify with its current certificate")

    def _issue(
        self,
        cn: str,
        role: Role,
        pub: ec.EllipticCurvePublicKey,
        now: dt.datetime,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> x509.Certificate:
        ca_cert = self.certificate
        ca_key = self._key()
        days = self.lifetimes.leaf_days(role)
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if role is Role.BROKER else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(cn, role))
            .issuer_name(ca_cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if dns or ips:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        serial = format(cert.serial_number, "x")
        _write_public(self.ca_dir / "issued" / f"{serial}.pem", cert.public_bytes(serialization.Encoding.PEM))
        records = self.records()
        records.append(
            IssuedRecord(
                serial=serial,
                cn=cn,
                role=role.value,
                not_before=cert.not_valid_before_utc.isoformat(),
                not_after=cert.not_valid_after_utc.isoformat(),
                sha256=cert.fingerprint(hashes.SHA256()).hex(),
            )
        )
        self._save(records)
        return cert

    def issue_server(self, name: str, out_dir: Path, *, dns: Sequence[str] = (), ips: Sequence[str] = ()) -> Path:
        """Broker (TLS server) key and certificate in ``out_dir`` (``<name>.key`` 0600, ``<name>.crt``).

        The key is made here, on the CA host, and must be copied to the broker over a trusted channel; SANs
        carry the names/IPs clients connect to (hostname verification uses the SAN, not the CN).
        """
        _check_id(name)
        self._check_role_free(name, Role.BROKER)
        key = _new_key()
        cert = self._issue(name, Role.BROKER, key.public_key(), _now(), dns=dns or (name,), ips=ips)
        out_dir = Path(out_dir)
        write_private(out_dir / f"{name}.key", _key_pem(key))
        _write_public(out_dir / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        return out_dir / f"{name}.crt"

    # -- revocation -------------------------------------------------------------------------------------
    def revoke(self, what: str, reason: str = "unspecified") -> list[IssuedRecord]:
        """Revoke by serial (hex) or by CN (every unrevoked certificate of that CN); rewrite the CRL.

        Returns the records revoked now. The broker must then load the new CRL (see ``broker-config``).
        """
        now = _now()
        records = self.records()
        hits = [r for r in records if (r.serial == what.lower() or r.cn == what) and not r.revoked]
        if not hits:
            raise PkiError(f"no unrevoked certificate with serial or CN {what!r}")
        for rec in hits:
            rec.revoked_at = now.isoformat()
            rec.reason = reason
        self._save(records)
        self.write_crl(now)
        return hits

    def write_crl(self, now: dt.datetime | None = None) -> Path:
        """(Re)write ``crl.pem``: every revoked, not yet expired certificate; ``nextUpdate`` = now + crl_days."""
        now = now or _now()
        ca_cert = self.certificate
        key = self._key()
        number_path = self.ca_dir / "crlnumber"
        number = int(number_path.read_text()) + 1 if number_path.exists() else 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=self.lifetimes.crl_days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        )
        for rec in self.records():
            if rec.revoked and rec.revoked_at is not None and dt.datetime.fromisoformat(rec.not_after) > now:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(rec.serial, 16))
                    .revocation_date(dt.datetime.fromisoformat(rec.revoked_at))
                    .build()
                )
        crl = builder.sign(key, hashes.SHA256())
        _write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        number_path.write_text(str(number))
        return self.crl_path

    def iter_status(self, now: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """One dict per issued certificate with its state (valid/expired/revoked) and renewal time."""
        now = now or _now()
        for rec in self.records():
            state = "revoked" if rec.revoked else ("valid" if rec.valid_at(now) else "expired")
            yield {**asdict(rec), "state": state}

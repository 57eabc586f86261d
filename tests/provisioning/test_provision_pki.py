"""The city CA, enrollment, renewal, revocation and the `kyojo provision` CLI (no broker needed)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, NameOID
from typer.testing import CliRunner

from provisioning import pki
from provisioning.broker import BrokerSettings, render_acl, render_mosquitto_conf
from provisioning.cli import app


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca", lifetimes=pki.Lifetimes(gateway_days=30))


def enroll(ca: pki.CertificateAuthority, state: Path, name: str) -> x509.Certificate:
    code = ca.enroll(name)
    pem = ca.sign_csr(pki.create_request(state, name, code).read_bytes(), expected_id=name)
    pki.install_certificate(state, pem, ca.cert_path.read_bytes())
    return x509.load_pem_x509_certificate(pem)


def test_ca_files_are_private_and_not_overwritten(ca: pki.CertificateAuthority) -> None:
    assert mode(ca.ca_dir) == 0o700
    assert mode(ca.ca_dir / "ca.key") == 0o600
    assert mode(ca.ca_dir / "index.json") == 0o600
    cert = ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(cert.public_key())
    assert len(crl) == 0
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.init_ca(ca.ca_dir)


def test_gateway_enrollment_issues_a_client_certificate(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    state = tmp_path / "pi"
    cert = enroll(ca, state, "gw-0042")
    assert mode(state / "tls" / pki.KEY_NAME) == 0o600
    assert pki.identity_of(state / "tls" / pki.CERT_NAME) == "gw-0042"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-0042"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)
    cert.verify_directly_issued_by(ca.certificate)
    # The key never left: the CSR holds only the public key, and the cert matches the on-device key.
    key = serialization.load_pem_private_key((state / "tls" / pki.KEY_NAME).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_enrollment_code_is_one_time_and_bound(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    code = ca.enroll("gw-1")
    csr = pki.create_request(tmp_path / "pi", "gw-1", "WRONGCODE1").read_bytes()
    with pytest.raises(pki.PkiError, match="wrong code"):
        ca.sign_csr(csr)
    csr = pki.create_request(tmp_path / "pi", "gw-1", code).read_bytes()
    with pytest.raises(pki.PkiError, match="does not match the planned identity"):
        ca.sign_csr(csr, expected_id="gw-2")
    ca.sign_csr(csr, expected_id="gw-1")
    with pytest.raises(pki.PkiError, match="no open enrollment"):
        ca.sign_csr(csr)  # one-time


def test_no_code_for_that_cn_and_expired_code(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    code = ca.enroll("gw-1")
    # The right code, but a CSR for another CN: no enrollment is open for gw-9.
    with pytest.raises(pki.PkiError, match="no open enrollment"):
        ca.sign_csr(pki.create_request(tmp_path / "x", "gw-9", code).read_bytes())
    csr = pki.create_request(tmp_path / "pi", "gw-1", code).read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=ca.lifetimes.enroll_ttl_minutes + 1)
    with pytest.raises(pki.PkiError, match="expired"):
        ca.sign_csr(csr, now=later)


def test_intercepted_proof_cannot_be_reused_with_another_key(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    code = ca.enroll("gw-1")
    genuine = x509.load_pem_x509_csr(pki.create_request(tmp_path / "pi", "gw-1", code).read_bytes())
    proof = genuine.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(genuine.subject)
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, proof)  # type: ignore[arg-type]
        .sign(attacker, hashes.SHA256())
    )
    with pytest.raises(pki.PkiError, match="wrong"):
        ca.sign_csr(forged.public_bytes(serialization.Encoding.PEM))


def test_cn_must_be_a_safe_identifier_and_unique_across_roles(ca: pki.CertificateAuthority) -> None:
    for bad in ("gw/1", "gw+", "#", "_ingest", "a b", ""):
        with pytest.raises(pki.PkiError, match="must match"):
            ca.enroll(bad)
    ca.enroll("ingest-1", pki.Role.INGEST)
    ca.issue_server("broker", ca.ca_dir / "srv", ips=["127.0.0.1"])
    with pytest.raises(pki.PkiError, match="already a broker identity"):
        ca.enroll("broker")


def test_renewal_at_two_thirds_signed_by_the_current_key(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    state = tmp_path / "pi"
    old = enroll(ca, state, "gw-7")
    assert pki.renew_at(old) == old.not_valid_before_utc + (old.not_valid_after_utc - old.not_valid_before_utc) * 2 / 3
    assert not pki.renewal_due(old)
    assert pki.renewal_due(old, pki.renew_at(old))
    old_key = (state / "tls" / pki.KEY_NAME).read_bytes()
    csr = pki.create_renewal_request(state).read_bytes()
    new_pem = ca.sign_csr(csr, expected_id="gw-7")  # no enrollment code needed
    pki.install_certificate(state, new_pem)
    assert (state / "tls" / pki.KEY_NAME).read_bytes() != old_key  # a fresh key replaced the old one
    assert not (state / "tls" / pki.NEXT_KEY_NAME).exists()
    assert mode(state / "tls" / pki.KEY_NAME) == 0o600
    # Someone else's key cannot produce a renewal for gw-7, and a revoked identity cannot renew.
    other = tmp_path / "other"
    enroll(ca, other, "gw-8")
    (other / "tls" / pki.CERT_NAME).write_bytes((state / "tls" / pki.CERT_NAME).read_bytes())
    with pytest.raises(pki.PkiError, match="does not verify"):
        ca.sign_csr(pki.create_renewal_request(other).read_bytes())
    ca.revoke("gw-7")
    with pytest.raises(pki.PkiError, match="no valid certificate to renew"):
        ca.sign_csr(pki.create_renewal_request(state).read_bytes())


def test_install_refuses_a_foreign_certificate(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    enroll(ca, tmp_path / "a", "gw-a")
    enroll(ca, tmp_path / "b", "gw-b")
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.install_certificate(tmp_path / "a", (tmp_path / "b" / "tls" / pki.CERT_NAME).read_bytes())
    rogue = pki.init_ca(tmp_path / "rogue")
    with pytest.raises(pki.PkiError, match="not issued by this CA"):
        pki.install_certificate(
            tmp_path / "a", (tmp_path / "a" / "tls" / pki.CERT_NAME).read_bytes(), rogue.cert_path.read_bytes()
        )


def test_revocation_lists_serials_in_the_crl(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    cert = enroll(ca, tmp_path / "pi", "gw-1")
    enroll(ca, tmp_path / "pi2", "gw-2")
    (rec,) = ca.revoke("gw-1", "stolen")
    assert rec.serial == format(cert.serial_number, "x")
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert len(crl) == 1
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=ca.lifetimes.crl_days - 1)
    assert ca.identities(pki.Role.GATEWAY) == ["gw-2"]
    with pytest.raises(pki.PkiError, match="no unrevoked"):
        ca.revoke("gw-1")


def test_rendered_config_and_acl_bind_identity_to_the_certificate(tmp_path: Path) -> None:
    s = BrokerSettings(*(tmp_path / n for n in ("ca.crt", "b.crt", "b.key", "crl.pem", "acl")))
    conf = render_mosquitto_conf(s)
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"crlfile {tmp_path / 'crl.pem'}",
        "max_queued_messages 500000",
    ):
        assert line in conf.splitlines()
    acl = render_acl(["ingest-1"])
    assert not [ln for ln in acl.splitlines() if "%c" in ln and not ln.startswith("#")]
    assert "pattern write kyojo/v1/%u/agg/+" in acl.splitlines()
    assert "user ingest-1" in acl.splitlines()


def test_cli_end_to_end(tmp_path: Path) -> None:
    run = CliRunner().invoke
    ca_dir, pi = tmp_path / "ca", tmp_path / "pi"
    assert run(app, ["ca", "init", "--dir", str(ca_dir), "--gateway-days", "60"]).exit_code == 0
    res = run(app, ["enroll", "gw-9", "--ca-dir", str(ca_dir)])
    assert res.exit_code == 0, res.output
    code = res.output.strip()
    res = run(app, ["gateway", "gw-9", "--code", code, "--state-dir", str(pi)])
    assert res.exit_code == 0, res.output
    csr = pi / "tls" / pki.CSR_NAME
    out = tmp_path / "gw-9.crt"
    res = run(app, ["sign", str(csr), "--ca-dir", str(ca_dir), "--expect", "gw-8", "--out", str(out)])
    assert res.exit_code == 2
    assert "does not match" in res.output
    res = run(app, ["sign", str(csr), "--ca-dir", str(ca_dir), "--expect", "gw-9", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = run(app, ["install", str(out), "--ca", str(ca_dir / "ca.crt"), "--state-dir", str(pi)])
    assert res.exit_code == 0, res.output
    res = run(app, ["gateway", "gw-9", "--renew", "--state-dir", str(pi)])
    assert "not due" in res.output
    assert run(app, ["enroll", "ingest-1", "--role", "ingest", "--ca-dir", str(ca_dir)]).exit_code == 0
    res = run(
        app, ["broker-config", "--ca-dir", str(ca_dir), "--out-dir", str(tmp_path / "etc"), "--ingest", "ingest-1"]
    )
    assert res.exit_code == 0, res.output
    assert "ingest:ingest-1" in (tmp_path / "etc" / "dynamic-security.json").read_text()
    assert "group = 'kyojo-ingest-" in res.output
    assert run(app, ["revoke", "gw-9", "--ca-dir", str(ca_dir)]).exit_code == 0
    assert run(app, ["crl", "--ca-dir", str(ca_dir)]).exit_code == 0
    assert '"state": "revoked"' in run(app, ["list", "--ca-dir", str(ca_dir)]).output


def test_enrollment_registers_the_gateways_consent_signing_key(tmp_path: Path) -> None:
    """The agent's Ed25519 key rides in the enrollment CSR (covered by its signature); the CA records it for the
    cloud, which then checks every consent record's signature against it (issue 14 finding 6)."""
    from kyojo.keys import load_keys

    ca = pki.init_ca(tmp_path / "ca")
    code = ca.enroll("gw-k", pki.Role.GATEWAY)
    key = load_keys(tmp_path / "pi").public_key_b64()
    csr = pki.create_request(tmp_path / "pi", "gw-k", code, signing_key=key)
    ca.sign_csr(csr.read_bytes(), expected_id="gw-k")
    assert ca.gateway_keys() == {"gw-k": key}
    # a service identity may not register one; a malformed key is refused before anything is issued
    code = ca.enroll("ingest-k", pki.Role.INGEST)
    csr = pki.create_request(tmp_path / "svc", "ingest-k", code, pki.Role.INGEST, signing_key=key)
    with pytest.raises(pki.PkiError, match="only a gateway"):
        ca.sign_csr(csr.read_bytes())
    with pytest.raises(pki.PkiError, match="32 bytes"):
        pki.create_request(tmp_path / "pi2", "gw-x", "CODE", signing_key="AAAA")
    res = CliRunner().invoke(app, ["gateway-keys", "--ca-dir", str(tmp_path / "ca")])
    assert res.exit_code == 0 and json.loads(res.output) == {"gw-k": key}


def test_a_csr_for_another_role_than_enrolled_is_refused_without_using_the_code(tmp_path: Path) -> None:
    """An ingester enrolled without --role used to become a gateway identity whose name could never be reused."""
    ca = pki.init_ca(tmp_path / "ca")
    code = ca.enroll("ingest-9")  # the operator forgot --role ingest
    csr = pki.create_request(tmp_path / "svc", "ingest-9", code, pki.Role.INGEST)
    with pytest.raises(pki.PkiError, match="enroll it again with --role ingest"):
        ca.sign_csr(csr.read_bytes())
    assert ca.identities(pki.Role.GATEWAY) == [] and ca.identities(pki.Role.INGEST) == []
    code = ca.enroll("ingest-9", pki.Role.INGEST)  # the name is still free
    csr = pki.create_request(tmp_path / "svc", "ingest-9", code, pki.Role.INGEST)
    ca.sign_csr(csr.read_bytes())
    assert ca.identities(pki.Role.INGEST) == ["ingest-9"]


def test_a_service_name_enrolled_without_a_role_is_refused_not_made_a_gateway(tmp_path: Path) -> None:
    """Issue 22 item 9: ``enroll ingest-1`` without ``--role`` silently made a gateway identity, and a CN is one
    identity for good. It is refused with the flag to use; an explicit role (even gateway) is taken as said."""
    run = CliRunner().invoke
    ca_dir = tmp_path / "ca"
    assert run(app, ["ca", "init", "--dir", str(ca_dir)]).exit_code == 0
    for name, role in (("ingest-1", "ingest"), ("eraser-1", "eraser"), ("broker-admin", "admin")):
        res = run(app, ["enroll", name, "--ca-dir", str(ca_dir)])
        assert res.exit_code == 2 and f"--role {role}" in res.output, res.output
        assert run(app, ["enroll", name, "--role", role, "--ca-dir", str(ca_dir)]).exit_code == 0
    assert run(app, ["enroll", "home-001", "--ca-dir", str(ca_dir)]).exit_code == 0  # gateways need no flag
    assert run(app, ["enroll", "ingest-hall", "--role", "gateway", "--ca-dir", str(ca_dir)]).exit_code == 0

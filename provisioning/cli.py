"""``kyojo provision``: the city CA, gateway/service identities, revocation and the broker configuration.

Mounted by the main CLI as ``kyojo provision``. Typical flow::

    # CA host (offline)
    kyojo provision ca init --dir /srv/kyojo-ca
    kyojo provision enroll gw-0042 --ca-dir /srv/kyojo-ca            # prints a one-time code
    # Pi (installer)
    kyojo provision gateway gw-0042 --code K7QX2M9PRT                # key stays in /var/lib/kyojo/tls
    # CA host, with the CSR file carried over
    kyojo provision sign identity.csr --ca-dir /srv/kyojo-ca --expect gw-0042 --out gw-0042.crt
    # Pi
    kyojo provision install gw-0042.crt --ca ca.crt
    # Pi, updates (docs/RELEASES.md)
    kyojo provision release install kyojo-0.2.0-py3-none-any.whl --version 0.2.0
    kyojo provision release activate 0.2.0      # switch, restart, health gate; rolls back on failure
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioning import broker, pki
from provisioning import release as rel

app = typer.Typer(help="City CA, gateway identities, revocation, broker configuration.", no_args_is_help=True)
ca_app = typer.Typer(help="The city CA (run on the offline CA host).", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
release_app = typer.Typer(
    help="Versioned agent releases under /opt/kyojo: install, activate (health-gated), rollback, list, verify.",
    no_args_is_help=True,
)
app.add_typer(release_app, name="release")

_DEFAULT_STATE = Path(os.environ.get("KYOJO_STATE_DIR", "/var/lib/kyojo"))
CaDir = Annotated[
    Path, typer.Option("--ca-dir", "--dir", help="CA directory (env KYOJO_CA_DIR)", envvar="KYOJO_CA_DIR")
]
StateDir = Annotated[Path, typer.Option("--state-dir", help="device state directory (env KYOJO_STATE_DIR)")]


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


def _ca(ca_dir: Path) -> pki.CertificateAuthority:
    try:
        return pki.CertificateAuthority(ca_dir)
    except pki.PkiError as err:
        raise _fail(err) from err


@ca_app.command("init")
def ca_init(
    ca_dir: CaDir,
    name: Annotated[str, typer.Option(help="CA common name")] = "Kyojo City CA",
    ca_days: Annotated[int, typer.Option(min=30)] = pki.Lifetimes.ca_days,
    gateway_days: Annotated[int, typer.Option(min=1, help="gateway certificate lifetime")] = pki.Lifetimes.gateway_days,
    service_days: Annotated[
        int, typer.Option(min=1, help="ingester certificate lifetime")
    ] = pki.Lifetimes.service_days,
    server_days: Annotated[int, typer.Option(min=1, help="broker certificate lifetime")] = pki.Lifetimes.server_days,
    crl_days: Annotated[
        int, typer.Option(min=1, help="CRL nextUpdate; re-run `crl` before it")
    ] = pki.Lifetimes.crl_days,
    enroll_ttl_minutes: Annotated[int, typer.Option(min=1)] = pki.Lifetimes.enroll_ttl_minutes,
) -> None:
    """Create the root CA (EC P-256; ca.key mode 0600) and an empty CRL."""
    life = pki.Lifetimes(ca_days, gateway_days, service_days, server_days, crl_days, enroll_ttl_minutes)
    try:
        ca = pki.init_ca(ca_dir, name, life)
    except pki.PkiError as err:
        raise _fail(err) from err
    typer.echo(f"CA ready in {ca.ca_dir}: {ca.cert_path} (distribute), ca.key (keep offline), {ca.crl_path}")


_SERVICE_NAME = re.compile(r"^(ingest|eraser|broker-admin|admin)(?:[-_.]|$)")
_SERVICE_ROLE = {"ingest": "ingest", "eraser": "eraser", "broker-admin": "admin", "admin": "admin"}


@app.command("enroll")
def enroll(
    ident: Annotated[str, typer.Argument(help="planned gateway (or service) id = certificate CN")],
    ca_dir: CaDir,
    role: Annotated[pki.Role | None, typer.Option(help="gateway (the default), ingest, eraser or admin")] = None,
    ttl_minutes: Annotated[int | None, typer.Option(min=1, help="code lifetime (default from the CA)")] = None,
    area: Annotated[
        str | None,
        typer.Option(help="the city's area the gateway is installed in (disaster declarations are per area)"),
    ] = None,
) -> None:
    """Open a one-time enrollment for IDENT and print the code for the installer."""
    if role is None:
        # a CN is one identity for good: an ingester enrolled by mistake as a gateway could never take its name
        service = _SERVICE_NAME.match(ident)
        if service:
            raise _fail(
                pki.PkiError(
                    f"{ident!r} looks like a service identity ({service.group(1)}): say --role "
                    f"{_SERVICE_ROLE[service.group(1)]} (or --role gateway if it really is a gateway)"
                )
            )
        role = pki.Role.GATEWAY
    ca = _ca(ca_dir)
    ttl = dt.timedelta(minutes=ttl_minutes) if ttl_minutes else None
    try:
        code = ca.enroll(ident, role, ttl, area=area)
    except pki.PkiError as err:
        raise _fail(err) from err
    typer.echo(code)


def _request(ident: str | None, code: str | None, state_dir: Path, role: pki.Role, renew: bool, force: bool) -> None:
    try:
        if renew:
            cert = pki.load_certificate(state_dir / "tls" / pki.CERT_NAME)
            ident = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
            waiting = pki.pending_renewal(state_dir)
            if waiting is not None and not force:
                # idempotent for the daily timer: a new key every day would void the request the CA has
                typer.echo(
                    f"renewal request waiting: {waiting}; on the CA host: kyojo provision sign {waiting.name} "
                    f"--ca-dir <ca-dir> --expect {ident}, then here: kyojo provision install <cert>"
                )
                return
            if not (force or pki.renewal_due(cert)):
                typer.echo(f"not due: renew after {pki.renew_at(cert).isoformat()} (or pass --force)")
                return
            csr = pki.create_renewal_request(state_dir)
        else:
            if not code or not ident:
                raise pki.PkiError("the id and --code are required for a first enrollment (ask the operator: `enroll`)")
            signing_key = None
            if role is pki.Role.GATEWAY:
                # the consent-signing key the agent uses (made here if new; <state_dir> is the agent's data_dir):
                # the key store is shared glue (kyojo.keys), so provisioning never imports the agent
                from kyojo.keys import load_keys

                signing_key = load_keys(state_dir).public_key_b64()
            csr = pki.create_request(state_dir, ident, code, role, signing_key=signing_key)
    except (pki.PkiError, FileNotFoundError) as err:
        raise _fail(err) from err
    typer.echo(
        f"CSR written to {csr}; on the CA host: kyojo provision sign {csr.name} --ca-dir <ca-dir> --expect {ident}"
    )


@app.command("gateway")
def gateway(
    ident: Annotated[str | None, typer.Argument(help="this gateway's id (the CN; not needed with --renew)")] = None,
    code: Annotated[str | None, typer.Option(help="one-time enrollment code from the operator")] = None,
    state_dir: StateDir = _DEFAULT_STATE,
    renew: Annotated[bool, typer.Option(help="make a renewal request signed by the current key")] = False,
    force: Annotated[bool, typer.Option(help="with --renew: even before 2/3 of the lifetime")] = False,
) -> None:
    """On the Pi: generate the key here (0600, never leaves) and a CSR bound to the enrollment code."""
    _request(ident, code, state_dir, pki.Role.GATEWAY, renew, force)


@app.command("service")
def service(
    ident: Annotated[
        str | None, typer.Argument(help="service identity, e.g. ingest-1 (one per MQTT connection; not with --renew)")
    ] = None,
    code: Annotated[str | None, typer.Option(help="one-time enrollment code from the operator")] = None,
    state_dir: StateDir = _DEFAULT_STATE,
    role: Annotated[
        pki.Role, typer.Option(help="ingest, eraser, admin or ledger: must be the role the operator enrolled it with")
    ] = pki.Role.INGEST,
    renew: Annotated[bool, typer.Option()] = False,
    force: Annotated[bool, typer.Option()] = False,
) -> None:
    """On a cloud host: like `gateway`, for a service identity (an ingester, its consent connection, the eraser,
    the broker admin)."""
    if role is pki.Role.GATEWAY:
        raise _fail(pki.PkiError("a gateway enrolls with `kyojo provision gateway` on the Pi"))
    _request(ident, code, state_dir, role, renew, force)


@app.command("install")
def install(
    cert: Annotated[Path, typer.Argument(help="signed certificate from the CA host")],
    ca: Annotated[Path | None, typer.Option(help="the CA certificate (checked against the cert, installed)")] = None,
    state_dir: StateDir = _DEFAULT_STATE,
) -> None:
    """Install a signed certificate next to its key (after enrollment or renewal)."""
    try:
        path = pki.install_certificate(state_dir, cert.read_bytes(), ca.read_bytes() if ca else None)
    except (pki.PkiError, FileNotFoundError) as err:
        raise _fail(err) from err
    typer.echo(f"installed {path}; renew after {pki.renew_at(pki.load_certificate(path)).isoformat()}")


@app.command("sign")
def sign(
    csr: Annotated[Path, typer.Argument(help="CSR made by `gateway` or `service`")],
    ca_dir: CaDir,
    expect: Annotated[str | None, typer.Option(help="the identity you mean to sign; must equal the CSR's CN")] = None,
    out: Annotated[Path | None, typer.Option(help="certificate output (default: <CN>.crt here)")] = None,
) -> None:
    """On the CA host: check the CSR's enrollment/renewal proof and issue the certificate."""
    ca = _ca(ca_dir)
    try:
        pem = ca.sign_csr(csr.read_bytes(), expected_id=expect)
    except (pki.PkiError, FileNotFoundError) as err:
        raise _fail(err) from err
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    target = out or Path(f"{cn!s}.crt")
    target.write_bytes(pem)
    typer.echo(f"issued {target} serial {cert.serial_number:x} valid until {cert.not_valid_after_utc.isoformat()}")


@app.command("server")
def server(
    name: Annotated[str, typer.Argument(help="broker name (CN), e.g. broker")],
    ca_dir: CaDir,
    out_dir: Annotated[Path, typer.Option(help="where <name>.key (0600) and <name>.crt go")],
    dns: Annotated[list[str] | None, typer.Option(help="DNS name clients connect to (repeat)")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="IP address clients connect to (repeat)")] = None,
) -> None:
    """Issue the broker's TLS server certificate (SAN = the names clients connect to)."""
    ca = _ca(ca_dir)
    try:
        path = ca.issue_server(name, out_dir, dns=dns or (), ips=ip or ())
    except pki.PkiError as err:
        raise _fail(err) from err
    typer.echo(f"issued {path}")


@app.command("revoke")
def revoke(
    what: Annotated[str, typer.Argument(help="serial (hex) or CN: all of that CN's certificates")],
    ca_dir: CaDir,
    reason: Annotated[str, typer.Option(help="recorded in the index")] = "unspecified",
) -> None:
    """Revoke and rewrite the CRL; then copy crl.pem to the broker and send it SIGHUP."""
    ca = _ca(ca_dir)
    try:
        done = ca.revoke(what, reason)
    except pki.PkiError as err:
        raise _fail(err) from err
    for rec in done:
        typer.echo(f"revoked {rec.cn} serial {rec.serial}")
    typer.echo(f"1. CRL: {ca.crl_path} -> copy to the broker's crlfile, then: systemctl reload mosquitto (SIGHUP)")
    gone = sorted({r.cn for r in done} - set().union(*(ca.identities(role) for role in broker.CLIENT_ROLES)))
    still = sorted({r.cn for r in done} - set(gone))
    if gone:
        typer.echo(f"2. kyojo provision broker-sync: deletes {', '.join(gone)} from the broker, which disconnects it")
    if still:
        kicks = " ".join(f"--kick {cn}" for cn in still)
        typer.echo(f"2. {', '.join(still)} keep another valid certificate: kyojo provision broker-sync {kicks}")


@app.command("crl")
def crl(
    ca_dir: CaDir,
    install_to: Annotated[
        Path | None,
        typer.Option("--install", help="also replace the broker's copy (its crlfile) atomically, mode 0644"),
    ] = None,
) -> None:
    """Regenerate the CRL (kyojo-crl.timer runs this daily: a CRL past nextUpdate locks every client out).

    Mosquitto re-reads its crlfile on SIGHUP only: reload it afterwards (the timer's service does).
    """
    from kyojo.runtime.files import atomic_write

    ca = _ca(ca_dir)
    path = ca.write_crl()
    typer.echo(f"{path} (valid {ca.lifetimes.crl_days} days)")
    if install_to is not None:
        try:
            atomic_write(install_to, path.read_bytes(), mode=0o644)
        except OSError as err:
            raise _fail(pki.PkiError(f"cannot install the CRL at {install_to}: {err}")) from err
        typer.echo(f"installed {install_to}; now: systemctl reload mosquitto (it re-reads the CRL on SIGHUP)")


@app.command("area")
def gateway_area(
    ca_dir: CaDir,
    gateway: Annotated[str | None, typer.Argument(help="the gateway (none: list every gateway's area)")] = None,
    area: Annotated[str | None, typer.Argument(help="set its area (a gateway that moved)")] = None,
    clear: Annotated[bool, typer.Option(help="forget the gateway's area")] = False,
    out: Annotated[Path | None, typer.Option(help="write the cloud's gateway_areas file here")] = None,
) -> None:
    """Where gateways are: the areas registered at enrollment (``enroll --area``), set or cleared by the operator.
    The cloud reads the file as ``gateway_areas``: a gateway's disaster status counts only for its own area."""
    ca = _ca(ca_dir)
    try:
        if gateway is not None and (area is not None or clear):
            ca.register_area(gateway, None if clear else area)
    except pki.PkiError as err:
        raise _fail(err) from err
    areas = ca.gateway_areas()
    if gateway is not None and out is None:
        typer.echo(areas.get(gateway, "(none)"))
        return
    text = json.dumps(areas, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out} ({len(areas)} gateways): set gateway_areas = {str(out)!r} on the cloud")


@app.command("gateway-keys")
def gateway_keys(
    ca_dir: CaDir,
    out: Annotated[Path | None, typer.Option(help="write the JSON here (default: print it)")] = None,
) -> None:
    """The gateways' consent-signing keys registered at enrollment: the cloud's ``gateway_keys`` file."""
    ca = _ca(ca_dir)
    text = json.dumps(ca.gateway_keys(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out} ({len(ca.gateway_keys())} gateways): set gateway_keys = {str(out)!r} on the cloud")


@app.command("declare")
def declare(
    ca_dir: CaDir,
    area: Annotated[str | None, typer.Option(help="the area (as gateways name it in [gateway] area)")] = None,
    hours: Annotated[float, typer.Option(min=0.1, help="how long the declaration lasts")] = 72.0,
    kind: Annotated[str, typer.Option(help="earthquake, flood, typhoon, ...")] = "earthquake",
    end: Annotated[str | None, typer.Option(help="end this declaration (its id) instead")] = None,
    out: Annotated[Path | None, typer.Option(help="write the signed JSON here (default: print it)")] = None,
) -> None:
    """Sign a disaster declaration (or its end) with the city CA's key; publish it with ``kyojo ingest declare``.

    Gateways of the area answer with their coarse safety status while it lasts, if the household gave the
    disaster-safety consent."""
    if (area is None) == (end is None):
        raise _fail(ValueError("give --area for a new declaration, or --end ID to end one"))
    try:
        decl = _ca(ca_dir).declare(area or "", hours, kind=kind, end=end)
    except (pki.PkiError, ValueError) as err:
        raise _fail(err) from err
    text = decl.model_dump_json() + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}: declaration {decl.id} ({decl.status}) for {decl.area}, number {decl.seq}")


@app.command("list")
def list_issued(ca_dir: CaDir) -> None:
    """Everything issued, one JSON object per line."""
    for row in _ca(ca_dir).iter_status():
        typer.echo(json.dumps(row))


@app.command("broker-config")
def broker_config(
    ca_dir: CaDir,
    out_dir: Annotated[Path, typer.Option(help="write the bundle here (kyojo.conf, dynamic-security.json, ...)")],
    etc_dir: Annotated[Path, typer.Option(help="where the files will live on the broker")] = Path(
        "/etc/mosquitto/kyojo"
    ),
    server_name: Annotated[str, typer.Option(help="broker certificate basename in etc-dir")] = "broker",
    server_dir: Annotated[
        Path | None, typer.Option(help="where `provision server` wrote <name>.crt/.key: bundle them too")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    bind: Annotated[str, typer.Option(help="listen address")] = "0.0.0.0",  # noqa: S104 public listener
    plugin: Annotated[
        Path, typer.Option(help="the dynamic-security plugin on the broker host")
    ] = broker.DEBIAN_DYNSEC_PLUGIN,
    owner: Annotated[
        str | None,
        typer.Option(help="the broker's user: owns the key and the dynsec JSON (default: mosquitto if root)"),
    ] = None,
    ingest: Annotated[list[str] | None, typer.Option(help="ingest identities (default: valid ones in the CA)")] = None,
    max_connections: Annotated[
        int, typer.Option(min=1, help="connections the listener accepts (docs/OPERATIONS.md)")
    ] = broker.BrokerSettings.max_connections,
    nofile: Annotated[
        int, typer.Option(min=1024, help="LimitNOFILE of the systemd drop-in (above --max-connections)")
    ] = broker.BrokerSettings.nofile,
) -> None:
    """Render Mosquitto's config fragment (mTLS listener, CRL, limits, dynamic-security plugin) and the plugin's
    first dynamic-security.json (roles of every valid identity in the CA); later changes: broker-sync."""
    ca = _ca(ca_dir)
    owner = owner if owner is not None else broker.default_owner()
    settings = broker.BrokerSettings(
        cafile=etc_dir / "ca.crt",
        certfile=etc_dir / f"{server_name}.crt",
        keyfile=etc_dir / f"{server_name}.key",
        crlfile=etc_dir / "crl.pem",
        dynsec_file=etc_dir / "dynamic-security.json",
        port=port,
        bind=bind,
        dynsec_plugin=plugin,
        max_connections=max_connections,
        nofile=nofile,
    )
    try:
        group = broker.load_share_group(ca_dir, create=True)
        identities = broker.ca_identities(ca, ingest=ingest)
        state = broker.desired_state(identities, group)
        cert = key = None
        if server_dir is not None:
            cert = (server_dir / f"{server_name}.crt").read_bytes()
            key = (server_dir / f"{server_name}.key").read_bytes()
        files = broker.broker_files(
            settings,
            state,
            ca_cert=ca.cert_path.read_bytes(),
            crl=ca.crl_path.read_bytes(),
            server_cert=cert,
            server_key=key,
        )
        broker.write_broker_files(out_dir, files, owner or None)
    except (broker.BrokerConfigError, pki.PkiError, OSError) as err:
        raise _fail(err) from err
    typer.echo(
        f"wrote {', '.join(f.name for f in files)} to {out_dir}"
        + (f" (private files owned by {owner})" if owner else "")
    )
    for role in broker.CLIENT_ROLES:
        typer.echo(f"{role.value}: {', '.join(identities[role]) or 'none'}")
    if not identities[pki.Role.ADMIN]:
        typer.echo("no admin identity: live changes (broker-sync) need one (enroll --role admin)")
    if server_dir is None:
        typer.echo(f"not bundled: {server_name}.crt/.key (pass --server-dir); install the key 0600 owned by mosquitto")
    typer.echo("install on the broker host (as root):")
    for cmd in broker.install_commands(out_dir, etc_dir, files, owner or "mosquitto"):
        typer.echo(f"  {cmd}")
    typer.echo(f"ingesters: set group = {group!r} (KYOJO_INGEST_GROUP); keep it secret")


@app.command("broker-sync")
def broker_sync(
    ca_dir: CaDir,
    broker_host: Annotated[str, typer.Option(help="the broker (a name or IP in its certificate)")],
    admin_tls: Annotated[Path, typer.Option(help="tls dir of an admin identity (identity.crt, identity.key, ca.crt)")],
    broker_port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    kick: Annotated[
        list[str] | None, typer.Option(help="also disconnect this identity now (repeat), e.g. after revoking a serial")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="print what would change, change nothing")] = False,
    timeout: Annotated[float, typer.Option(min=0.5, help="seconds to wait for each broker answer")] = 10.0,
) -> None:
    """Make the LIVE broker's dynamic security match the CA, without a restart: add new identities, delete
    revoked/expired ones (which disconnects them), fix roles and ACLs. Idempotent; prints each change."""
    ca = _ca(ca_dir)
    try:
        desired = broker.desired_state(broker.ca_identities(ca), broker.load_share_group(ca_dir))
        with broker.admin_session(broker_host, broker_port, admin_tls, timeout=timeout) as admin:
            changes = broker.broker_sync(admin, desired, apply=not dry_run)
            changes += broker.kick(admin, kick or (), apply=not dry_run)
    except (broker.BrokerConfigError, broker.DynsecError, OSError) as err:
        raise _fail(err) from err
    prefix = "would change: " if dry_run else "changed: "
    for line in changes:
        typer.echo(prefix + line)
    if not changes:
        typer.echo(f"broker matches the CA ({len(desired.clients)} clients): nothing to change")


# ---------------------------------------------------------------------------------------------------- releases
# Exit codes: 0 done / accepted; 1 the health gate rejected the release (rolled back); 2 refused (bad input,
# tampered model, nothing to roll back to); 3 rejected AND the rollback failed (the gateway needs a person).

Root = Annotated[
    Path, typer.Option("--root", help="release root (env KYOJO_RELEASE_ROOT)", envvar="KYOJO_RELEASE_ROOT")
]
Unit = Annotated[str, typer.Option("--unit", help="systemd unit to restart and watch")]
StatusPath = Annotated[
    Path | None, typer.Option("--status", help="the agent's status.json (default: <state-dir>/status.json)")
]
Timeout = Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for READY and a first publish")]
RequirePublish = Annotated[
    bool,
    typer.Option(
        "--require-publish/--no-require-publish",
        help="accept only after a first PUBACKed message (off: READY and connected; for gateways with no consent)",
    ),
]
_ROOT = Path("/opt/kyojo")


def _gate(
    root: Path, unit: str, status: Path | None, state_dir: Path, timeout: float, require_publish: bool, restart: bool
) -> None:
    result = rel.verify(
        root,
        status or state_dir / "status.json",
        timeout=timeout,
        checker=rel.systemd_checker(unit),
        restart=rel.systemd_restarter(unit) if restart else None,
        require_publish=require_publish,
    )
    if result.accepted:
        typer.echo(f"release {result.version} accepted: {result.reason}")
        return
    typer.echo(f"release {result.version} REJECTED: {result.reason}", err=True)
    if result.rolled_back_to is not None:
        typer.echo(f"rolled back to {result.rolled_back_to}" + (f"; restarted {unit}" if restart else ""), err=True)
        raise typer.Exit(1)
    typer.echo(f"rollback FAILED: {result.rollback_error}", err=True)
    raise typer.Exit(3)


@release_app.command("install")
def release_install(
    source: Annotated[Path, typer.Argument(help="a kyojo wheel, or a release directory built for this path")],
    version: Annotated[str, typer.Option("--version", help="release name, e.g. 0.2.0")],
    root: Root = _ROOT,
    find_links: Annotated[Path | None, typer.Option(help="wheelhouse for the dependencies")] = None,
    no_index: Annotated[bool, typer.Option(help="do not reach PyPI (use --find-links only)")] = False,
) -> None:
    """Build releases/VERSION (venv + app) and pin its models in models.lock. Does not switch."""
    try:
        path = rel.install(source, root, version, find_links=find_links, no_index=no_index)
    except (rel.ReleaseError, OSError) as err:
        raise _fail(err) from err
    lock = (path / rel.LOCK_FILE).read_text(encoding="utf-8")
    models = len(json.loads(lock)["models"])
    typer.echo(f"installed {path} ({models} models pinned in {rel.LOCK_FILE}); next: release activate {version}")


@release_app.command("activate")
def release_activate(
    version: Annotated[str, typer.Argument(help="an installed release")],
    root: Root = _ROOT,
    unit: Unit = rel.DEFAULT_UNIT,
    restart: Annotated[bool, typer.Option(help="restart the unit after the switch")] = True,
    gate: Annotated[bool, typer.Option("--verify/--no-verify", help="run the health gate (rolls back)")] = True,
    status: StatusPath = None,
    state_dir: StateDir = _DEFAULT_STATE,
    timeout: Timeout = 300.0,
    require_publish: RequirePublish = True,
) -> None:
    """Check models.lock, switch `current` atomically, restart, and keep it only if the health gate passes."""
    try:
        old = rel.activate(root, version)
    except (rel.ReleaseError, OSError) as err:
        raise _fail(err) from err
    typer.echo(f"current -> releases/{version} (previous: {old or 'none'})")
    if not restart:
        typer.echo(f"not restarted: run `systemctl restart {unit}` then `kyojo provision release verify`")
        return
    try:
        rel.systemd_restarter(unit)()
    except rel.ReleaseError as err:
        typer.echo(f"error: {err}", err=True)
    if gate:
        _gate(root, unit, status, state_dir, timeout, require_publish, restart=True)


@release_app.command("rollback")
def release_rollback(
    root: Root = _ROOT,
    unit: Unit = rel.DEFAULT_UNIT,
    restart: Annotated[bool, typer.Option(help="restart the unit after the switch")] = True,
) -> None:
    """Switch `current` back to `previous` (the abandoned release is marked FAILED)."""
    try:
        target = rel.rollback(root)
        if restart:
            rel.systemd_restarter(unit)()
    except (rel.ReleaseError, OSError) as err:
        raise _fail(err) from err
    typer.echo(f"current -> releases/{target}" + (f"; restarted {unit}" if restart else ""))


@release_app.command("verify")
def release_verify(
    root: Root = _ROOT,
    unit: Unit = rel.DEFAULT_UNIT,
    status: StatusPath = None,
    state_dir: StateDir = _DEFAULT_STATE,
    timeout: Timeout = 300.0,
    require_publish: RequirePublish = True,
    restart: Annotated[bool, typer.Option(help="restart the unit after a rollback")] = True,
) -> None:
    """Run the health gate for the last activation; roll back if it fails."""
    try:
        _gate(root, unit, status, state_dir, timeout, require_publish, restart)
    except rel.ReleaseError as err:
        raise _fail(err) from err


@release_app.command("list")
def release_list(
    root: Root = _ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Installed releases, oldest first; marks current (*), previous (<), failed and incomplete ones."""
    releases = rel.list_releases(root)
    if not releases:
        typer.echo(f"no releases in {root / rel.RELEASES}")
        return
    for r in releases:
        if as_json:
            typer.echo(json.dumps(r.as_dict()))
            continue
        mark = "*" if r.current else "<" if r.previous else " "
        when = (
            dt.datetime.fromtimestamp(r.installed_at, dt.UTC).isoformat(timespec="seconds") if r.installed_at else "?"
        )
        notes = ["incomplete"] if r.incomplete else []
        if r.failed:
            notes.append(f"FAILED {r.failed}")
        typer.echo(f"{mark} {r.version:<20} installed {when} models {r.models}  {' '.join(notes)}".rstrip())


@release_app.command("prune")
def release_prune(
    root: Root = _ROOT,
    keep: Annotated[int, typer.Option(min=1, help="newest releases to keep (current and previous always stay)")] = 3,
) -> None:
    """Delete old releases."""
    try:
        removed = rel.prune(root, keep)
    except (rel.ReleaseError, OSError) as err:
        raise _fail(err) from err
    typer.echo(f"removed {', '.join(removed)}" if removed else "nothing to remove")

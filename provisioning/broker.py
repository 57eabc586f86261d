"""Mosquitto 2.0 configuration for the city broker: mTLS identities, dynamic-security roles, live changes.

Identity binding (checked against mosquitto.conf(5) of 2.0.11 and proven by
``tests/provisioning/test_provision_broker.py``):

* ``require_certificate true``: the TLS handshake fails without a client certificate issued by ``cafile``.
* ``use_identity_as_username true``: the certificate's CN becomes the MQTT username; a username/password sent
  in CONNECT is ignored. So the username cannot be chosen by the client.
* ``use_username_as_clientid true`` (a listener option in 2.0; "not reloaded on reload signal"): the broker
  replaces whatever client id the client sent by the username, i.e. the CN. A client therefore cannot take over
  (kick, or inherit the persistent session of) another identity by sending its client id. Consequence: one
  certificate = one MQTT connection; a process with two connections needs two identities.
* ``crlfile``: OpenSSL checks the *leaf* certificate against the CRL at each handshake. A CRL past its
  ``nextUpdate`` makes every handshake fail, so it must be regenerated on a schedule. Mosquitto 2.0.11 loads the
  CRL again on SIGHUP; see :data:`CRL_RELOAD_NOTE`.

Authorisation is Mosquitto's bundled dynamic-security plugin ("dynsec"), not ``acl_file``: 2.0's ``acl_file``
never checks SUBSCRIBE, so any certified client could join the ingesters' ``$share`` group and swallow a share of
the data. What dynsec does in 2.0.11 with certificate identities (measured here; the tests prove each point):

* The broker authenticates a certificate identity itself and never asks the plugin for a password: a dynsec
  client needs none. The plugin applies the roles of the client whose username is the certificate's CN.
* A CN with no dynsec client still connects (CONNACK 0x00), but with the default access all deny every PUBLISH
  gets PUBACK 0x87, every SUBSCRIBE SUBACK 0x87, and nothing is delivered to it.
* ``%u``/``%c`` are NOT substituted in dynsec ACL topics (a role with ``kyojo/v1/%u/agg/+`` grants exactly that
  literal topic). Hence one role per identity, with its CN written out.
* ``subscribePattern`` is matched against the whole filter, ``$share/<group>/`` included, level by level: a ``+``
  in the ACL matches any one level of the filter (``+`` too), a ``#`` in the filter matches nothing narrower.
  ``$share/<other group>/...``, ``kyojo/v1/+/agg/+`` unshared, ``kyojo/v1/gw-a/#`` are all refused.
* The plugin reads its JSON file only at start (SIGHUP does not re-read it) and rewrites that same file in place
  after every change made on ``$CONTROL/dynamic-security/v1``. So the file must be writable by the broker's user,
  a hand edit of a running broker's file is lost, and live changes go through :func:`broker_sync`.
* ``disableClient`` disconnects a connected client but does NOT keep a certificate identity out: it reconnects
  and keeps its roles (the disabled flag only matters to password logins). ``deleteClient`` disconnects it and
  leaves its CN without a client entry, i.e. denied everything. :func:`broker_sync` therefore deletes identities
  that have no valid certificate any more, and :func:`kick` is disable + enable.
* Mosquitto 2.0 reads ``keyfile`` and the plugin's JSON after dropping to its ``user`` (``mosquitto`` on Debian): a
  root-owned 0600 key stops the broker from starting ("Unable to load server key file"); a root-owned 0600 JSON
  makes the plugin start empty ("File is not readable") and every client is denied everything. See
  :func:`write_broker_files`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import ssl
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyojo.contract.vocab import valid_id
from kyojo.contract.wire import MAX_PAYLOAD_BYTES, TOPIC_ROOT, disaster_topic
from kyojo.runtime.files import atomic_write
from provisioning import pki

__all__ = [
    "CRL_RELOAD_NOTE",
    "DEBIAN_DYNSEC_PLUGIN",
    "Acl",
    "BrokerConfigError",
    "BrokerFile",
    "BrokerSettings",
    "DynsecAdmin",
    "DynsecError",
    "DynsecState",
    "admin_session",
    "broker_files",
    "broker_sync",
    "ca_identities",
    "check_share_group",
    "client_context",
    "default_owner",
    "desired_state",
    "install_commands",
    "kick",
    "load_share_group",
    "new_share_group",
    "render_acl",
    "render_dynsec",
    "render_mosquitto_conf",
    "render_systemd_limits",
    "role_name",
    "write_broker_files",
]

#: What Mosquitto 2.0.11 does with a changed ``crlfile`` (measured by the tests on this machine).
CRL_RELOAD_NOTE = (
    "Mosquitto 2.0.11 re-reads crlfile on SIGHUP (systemctl reload mosquitto): from then on a revoked "
    "certificate fails the TLS handshake (alert 44 certificate_revoked). Connections established before the "
    "reload are NOT re-checked and stay up: `kyojo provision broker-sync` then deletes the revoked identity from "
    "the dynamic-security plugin, which disconnects it (its reconnect fails the handshake). Merely rewriting "
    "crl.pem without a signal changes nothing."
)

#: Where Debian's ``mosquitto`` package installs the plugin on amd64 (arm64: /usr/lib/aarch64-linux-gnu/...).
DEBIAN_DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")

#: An MQTT packet carries the payload plus a fixed header (<= 5 bytes), the topic (2 + <= 100 bytes for
#: ``kyojo/v1/<64-char id>/consent/<64-char id>``) and v5 properties; 8 KiB of headroom covers all of it.
DEFAULT_MAX_PACKET_SIZE = MAX_PAYLOAD_BYTES + 8 * 1024

#: The file in the CA directory that holds the ingesters' secret ``$share`` group (made by ``broker-config``).
SHARE_GROUP_FILE = "share_group"
_SHARE_GROUP_RE = re.compile(r"kyojo-ingest-[0-9a-f]{32}")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

# dynsec ACL types
SEND = "publishClientSend"
RECEIVE = "publishClientReceive"
SUBSCRIBE = "subscribePattern"
UNSUBSCRIBE = "unsubscribePattern"
_DEFAULT_ACCESS = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")


class BrokerConfigError(ValueError):
    """A configuration the renderer refuses (a guessable share group, one CN in two roles, bad owner)."""


class DynsecError(RuntimeError):
    """The live broker's dynamic-security plugin refused a command, did not answer, or refused the admin."""


# --------------------------------------------------------------------------------------------------
# The secret share group
# --------------------------------------------------------------------------------------------------


def new_share_group() -> str:
    """A secret ``$share`` group name for the ingesters (128 random bits): ``kyojo-ingest-<32 hex>``.

    The dynsec roles allow ``$share/<this group>/...`` only, so a stolen or guessed ingest-role permission is
    still tied to this one group; a well-known name would let every past and future configuration mistake
    share the same group. :func:`check_share_group` refuses anything not of this shape.
    """
    return f"kyojo-ingest-{secrets.token_hex(16)}"


def check_share_group(group: str) -> str:
    """Return ``group`` if it has :func:`new_share_group`'s shape; raise BrokerConfigError otherwise."""
    if not _SHARE_GROUP_RE.fullmatch(group):
        raise BrokerConfigError(
            f"share group {group!r} is not a secret made by new_share_group() (kyojo-ingest-<32 hex>); "
            "refusing a well-known or hand-made group name"
        )
    return group


def load_share_group(ca_dir: Path, *, create: bool = False) -> str:
    """The group stored in ``<ca_dir>/share_group`` (0600); made there when missing and ``create``."""
    path = Path(ca_dir) / SHARE_GROUP_FILE
    if not path.exists():
        if not create:
            raise BrokerConfigError(f"no {path}: run `kyojo provision broker-config` first (it makes the group)")
        pki.write_private(path, new_share_group().encode())
    return check_share_group(path.read_text().strip())


# --------------------------------------------------------------------------------------------------
# mosquitto.conf
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker's files live (paths as seen by the broker) and how its limits are sized."""

    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path
    #: the dynamic-security plugin's JSON (must be writable by the broker's user: the plugin saves to it)
    dynsec_file: Path
    port: int = 8883
    bind: str = "0.0.0.0"  # noqa: S104 a city broker listens on its public interface; loopback in tests
    dynsec_plugin: Path = DEBIAN_DYNSEC_PLUGIN
    #: Mosquitto disconnects a client that sends a bigger packet (and v5 clients are told the limit in CONNACK).
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    #: Per-client queue of QoS 1 messages beyond those in flight. Mosquitto's default (1000) silently drops messages
    #: for a slow ingester after the gateway already got its PUBACK (docs/ARCHITECTURE.md, "Pitfalls measured"). The
    #: queue must hold what arrives while an ingester session is away (its session expiry, 1 h by default): at 100
    #: batches/s that is 360k; above it messages are dropped *and logged* ("Outgoing messages are being dropped").
    max_queued_messages: int = 500_000
    #: ... and a memory bound on the same queue (per client): 1 GiB.
    max_queued_bytes: int = 1024 * 1024 * 1024
    #: 0 = let each MQTT v5 client's Receive Maximum decide how many QoS 1 messages are in flight to it.
    max_inflight_messages: int = 0
    #: Sessions of clients that never set a v5 session expiry (v3.1.1) are dropped after this.
    persistent_client_expiration: str = "14d"
    tls_version: str = "tlsv1.2"
    #: Connections the listener accepts (clients beyond it are refused at accept and logged). Sized for a city
    #: (bench/city.py measured 10,000 gateways on one 2-core broker); each one is a file descriptor, so the
    #: service's LimitNOFILE (:data:`nofile`) must be above it.
    max_connections: int = 50_000
    #: LimitNOFILE of the systemd drop-in (``mosquitto-limits.conf``). Debian's mosquitto.service sets none, so
    #: systemd's default soft limit (1024) applies and the broker stops accepting at ~1,000 gateways.
    nofile: int = 65_536
    #: Seconds between saves of the persistence file (Debian's mosquitto.conf turns persistence on). The save
    #: writes every session and queued message; with 10,000 persistent gateway sessions a save every second
    #: costs CPU for nothing. A clean stop/restart always saves; only a crash loses what arrived since the last
    #: save (the gateways' outboxes keep what was not PUBACKed, not what was).
    autosave_interval: int = 60
    extra: Sequence[str] = field(default_factory=tuple)


def render_mosquitto_conf(settings: BrokerSettings) -> str:
    """The ``mosquitto.conf`` fragment (drop it in ``/etc/mosquitto/conf.d/kyojo.conf``).

    It defines the only listener; Debian's main file keeps pid_file, persistence_location and log_dest.
    """
    s = settings
    lines = [
        "# Kyojo city broker (generated by `kyojo provision broker-config`; edit the generator, not this file).",
        "per_listener_settings false",
        "allow_anonymous false",
        "# Authorisation: roles per certificate CN (dynamic-security.json; live changes: kyojo provision broker-sync).",
        f"plugin {s.dynsec_plugin}",
        f"plugin_opt_config_file {s.dynsec_file}",
        f"max_packet_size {s.max_packet_size}",
        f"max_queued_messages {s.max_queued_messages}",
        f"max_queued_bytes {s.max_queued_bytes}",
        f"max_inflight_messages {s.max_inflight_messages}",
        f"persistent_client_expiration {s.persistent_client_expiration}",
        # persistence itself is on in Debian's mosquitto.conf (persistence_location /var/lib/mosquitto/)
        f"autosave_interval {s.autosave_interval}",
        "autosave_on_changes false",
        # small packets (PUBACKs, a gateway's minute batch) go out at once instead of waiting for Nagle
        "set_tcp_nodelay true",
        # Gateway ids are <= 64 chars; service CNs too. Refuse generated ids, every client has a certificate.
        "allow_zero_length_clientid false",
        "connection_messages true",
        "",
        f"listener {s.port} {s.bind}",
        "protocol mqtt",
        f"max_connections {s.max_connections}",
        f"cafile {s.cafile}",
        f"certfile {s.certfile}",
        f"keyfile {s.keyfile}",
        f"crlfile {s.crlfile}",
        f"tls_version {s.tls_version}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        *s.extra,
    ]
    return "\n".join(lines) + "\n"


#: The systemd drop-in (:func:`render_systemd_limits`): its name in the bundle and where it is installed.
SYSTEMD_LIMITS_FILE = "mosquitto-limits.conf"
SYSTEMD_DROPIN = Path("/etc/systemd/system/mosquitto.service.d/kyojo-limits.conf")


def render_systemd_limits(settings: BrokerSettings) -> str:
    """A drop-in for Debian's ``mosquitto.service``: one file descriptor per connection, plus headroom.

    Mosquitto does not raise its own limit; without this the unit inherits systemd's default soft limit of
    1024 and a city broker stops accepting connections after ~1,000 gateways.
    """
    if settings.nofile <= settings.max_connections:
        raise BrokerConfigError(
            f"nofile {settings.nofile} must exceed max_connections {settings.max_connections} (one descriptor "
            "per connection, plus the listener, the log and the persistence file)"
        )
    return (
        "# Kyojo city broker (generated by `kyojo provision broker-config`).\n"
        "[Service]\n"
        f"LimitNOFILE={settings.nofile}\n"
    )


def render_acl(ingesters: Sequence[str] = ()) -> str:
    """LEGACY ``acl_file`` text, for a broker without the dynamic-security plugin. ``broker-config`` no longer
    writes it: Mosquitto 2.0's ``acl_file`` does not check SUBSCRIBE (see the module docstring)."""
    root = TOPIC_ROOT
    lines = [
        "# Kyojo ACL (legacy acl_file; does NOT check SUBSCRIBE in Mosquitto 2.0). Patterns use %u only.",
        f"pattern write {root}/%u/agg/+",
        f"pattern write {root}/%u/event/+",
        f"pattern write {root}/%u/consent/+",
        f"pattern write {root}/%u/status",
        f"pattern write {root}/%u/trade/+",
        f"pattern read {root}/%u/receipt/+",
        f"pattern read {root}/%u/anchor",
        f"topic read {root}/city/disaster",
    ]
    for name in sorted(set(ingesters)):
        lines += [
            "",
            f"user {name}",
            f"topic read {root}/+/agg/+",
            f"topic read {root}/+/event/+",
            f"topic read {root}/+/consent/+",
            f"topic write {root}/+/anchor",
            f"topic read {root}/+/status",
            f"topic readwrite {root}/_ingest/sync/{name}",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Roles: who may do what (one role per identity; %u is not substituted by dynsec in 2.0.11)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Acl:
    """One dynsec ACL entry. Kyojo writes only ``allow`` entries; the default access denies everything else."""

    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def as_json(self) -> dict[str, Any]:
        """The entry as dynsec's JSON and control API spell it."""
        return {"acltype": self.acltype, "topic": self.topic, "priority": self.priority, "allow": self.allow}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Acl:
        """Parse an entry of ``listRoles``/``getRole`` or of the JSON file."""
        return cls(str(doc["acltype"]), str(doc["topic"]), bool(doc.get("allow", False)), int(doc.get("priority", 0)))


def _read(topic_filter: str, receive: str | None = None) -> list[Acl]:
    """Subscribe to ``topic_filter`` (and unsubscribe again), receive messages on ``receive`` (default: the
    same filter; a ``$share/<group>/`` subscription receives on the filter without that prefix)."""
    return [Acl(SUBSCRIBE, topic_filter), Acl(UNSUBSCRIBE, topic_filter), Acl(RECEIVE, receive or topic_filter)]


def gateway_acls(gateway: str) -> list[Acl]:
    """A gateway: writes only its own aggregates, events, consent records, status (also its will) and trading
    messages (``trade/+``: the ledger's intake takes the gateway's identity from this topic); reads only its own
    erasure receipts and audit anchor, and the city's disaster declarations (which it verifies)."""
    own = f"{TOPIC_ROOT}/{gateway}"
    return [
        *(Acl(SEND, f"{own}/{leaf}") for leaf in ("agg/+", "event/+", "consent/+", "status", "trade/+")),
        *_read(f"{own}/receipt/+"),
        *_read(f"{own}/anchor"),
        *_read(disaster_topic()),
    ]


def ingest_acls(name: str, group: str) -> list[Acl]:
    """An ingester connection (``<ingester>`` for data, ``<ingester>-consents`` for consent records).

    Data only through the secret shared subscription; consent records unshared (every ingester needs all of
    them); its own sync topic; and the audit anchors it derives from the batches' audit heads (written, and read
    back at start to seed its check of each gateway's heads). It may NOT write erasure receipts (only the eraser
    may) nor any gateway topic.
    """
    check_share_group(group)
    return [
        *_read(f"$share/{group}/{TOPIC_ROOT}/+/agg/+", f"{TOPIC_ROOT}/+/agg/+"),
        *_read(f"$share/{group}/{TOPIC_ROOT}/+/event/+", f"{TOPIC_ROOT}/+/event/+"),
        *_read(f"{TOPIC_ROOT}/+/consent/+"),
        *_read(f"{TOPIC_ROOT}/_ingest/sync/{name}"),
        Acl(SEND, f"{TOPIC_ROOT}/_ingest/sync/{name}"),
        *_read(f"{TOPIC_ROOT}/+/anchor"),
        Acl(SEND, f"{TOPIC_ROOT}/+/anchor"),
        *_read(f"{TOPIC_ROOT}/+/status"),  # gateways_online on the platform dashboard
    ]


def eraser_acls() -> list[Acl]:
    """The erasure service: reads consent records; the only writer of erasure receipts; writes anchors too (the
    cloud's downlink identity; the ingesters also write anchors, see :func:`ingest_acls`) and the city's signed
    disaster declarations (``kyojo ingest declare``; the gateways check the CA's signature, not the sender)."""
    return [
        *_read(f"{TOPIC_ROOT}/+/consent/+"),
        Acl(SEND, f"{TOPIC_ROOT}/+/receipt/+"),
        Acl(SEND, f"{TOPIC_ROOT}/+/anchor"),
        Acl(SEND, disaster_topic()),
    ]


def admin_acls() -> list[Acl]:
    """The broker administrator: the dynamic-security control API and nothing else (no data topics)."""
    ctl = "$CONTROL/dynamic-security/#"
    return [Acl(SEND, ctl), *_read(ctl)]


def ledger_acls(name: str) -> list[Acl]:
    """The trading ledger's intake (``kyojo ledger serve``): reads every gateway's trading messages and consent
    records (a withdrawn energy-trading consent ends the household's trading), through its own persistent session;
    writes nothing."""
    return [*_read(f"{TOPIC_ROOT}/+/trade/+"), *_read(f"{TOPIC_ROOT}/+/consent/+")]


#: Identity roles that become broker clients (Role.BROKER is the server itself).
CLIENT_ROLES = (pki.Role.GATEWAY, pki.Role.INGEST, pki.Role.ERASER, pki.Role.ADMIN, pki.Role.LEDGER)


def role_name(role: pki.Role, cn: str) -> str:
    """The dynsec role of one identity, e.g. ``gateway:home-001``."""
    return f"{role.value}:{cn}"


@dataclass(frozen=True)
class DynsecState:
    """What the broker's dynamic security should hold: each client's one role, and each role's ACLs."""

    clients: Mapping[str, str]
    roles: Mapping[str, frozenset[Acl]]


def ca_identities(ca: pki.CertificateAuthority, *, ingest: Sequence[str] | None = None) -> dict[pki.Role, list[str]]:
    """The CA's identities with a valid certificate (revoked and expired ones are left out), per client role.

    ``ingest`` replaces the CA's ingest identities (``broker-config --ingest``).
    """
    found = {role: ca.identities(role) for role in CLIENT_ROLES}
    if ingest is not None:
        found[pki.Role.INGEST] = sorted(set(ingest))
    return found


def desired_state(identities: Mapping[pki.Role, Iterable[str]], group: str) -> DynsecState:
    """Clients and roles for these identities, ingesters bound to the secret ``group`` (checked)."""
    check_share_group(group)
    clients: dict[str, str] = {}
    roles: dict[str, frozenset[Acl]] = {}
    for role, names in identities.items():
        for cn in names:
            if not valid_id(cn):
                raise BrokerConfigError(f"{cn!r} is not a valid identity (it would escape its topics)")
            if cn in clients:
                raise BrokerConfigError(f"{cn!r} appears in two roles; CNs are unique across roles")
            if role is pki.Role.GATEWAY:
                acls = gateway_acls(cn)
            elif role is pki.Role.INGEST:
                acls = ingest_acls(cn, group)
            elif role is pki.Role.ERASER:
                acls = eraser_acls()
            elif role is pki.Role.ADMIN:
                acls = admin_acls()
            elif role is pki.Role.LEDGER:
                acls = ledger_acls(cn)
            else:
                raise BrokerConfigError(f"role {role.value!r} is not a broker client")
            clients[cn] = role_name(role, cn)
            roles[role_name(role, cn)] = frozenset(acls)
    return DynsecState(clients, roles)


def render_dynsec(state: DynsecState) -> str:
    """``dynamic-security.json`` for the plugin's first start: default access all deny, no passwords (the
    broker authenticates by certificate), no groups, one role per client."""
    doc = {
        "defaultACLAccess": dict.fromkeys(_DEFAULT_ACCESS, False),
        "clients": [
            {"username": cn, "textname": f"kyojo {state.clients[cn].split(':', 1)[0]}", "roles": [{"rolename": r}]}
            for cn, r in sorted(state.clients.items())
        ],
        "groups": [],
        "roles": [
            {"rolename": name, "acls": [a.as_json() for a in sorted(acls)]}
            for name, acls in sorted(state.roles.items())
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


# --------------------------------------------------------------------------------------------------
# Files: modes and owner
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerFile:
    """One file of the broker's bundle. ``private`` files are 0600 and must belong to the broker's user."""

    name: str
    data: bytes
    private: bool = False


def broker_files(
    settings: BrokerSettings,
    state: DynsecState,
    *,
    ca_cert: bytes,
    crl: bytes,
    server_cert: bytes | None = None,
    server_key: bytes | None = None,
) -> list[BrokerFile]:
    """The bundle: ``kyojo.conf``, the dynsec JSON, the CA certificate and CRL, and the server pair if given."""
    files = [
        BrokerFile("kyojo.conf", render_mosquitto_conf(settings).encode()),
        BrokerFile(SYSTEMD_LIMITS_FILE, render_systemd_limits(settings).encode()),
        BrokerFile(settings.dynsec_file.name, render_dynsec(state).encode(), private=True),
        BrokerFile(settings.cafile.name, ca_cert),
        BrokerFile(settings.crlfile.name, crl),
    ]
    if server_cert is not None:
        files.append(BrokerFile(settings.certfile.name, server_cert))
    if server_key is not None:
        files.append(BrokerFile(settings.keyfile.name, server_key, private=True))
    return files


def default_owner() -> str | None:
    """``mosquitto`` when that user exists and we are root (so we can chown to it), else None."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return "mosquitto"


def _ids(owner: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise BrokerConfigError(f"no user {owner!r} on this machine") from None
    return entry.pw_uid, entry.pw_gid


def write_broker_files(out_dir: Path, files: Sequence[BrokerFile], owner: str | None) -> list[Path]:
    """Write ``files`` into ``out_dir``: public ones 0644, private ones 0600 owned by ``owner`` (uid and its
    primary group) when given. Mosquitto reads its key and the dynsec JSON *after* dropping to its user, and the
    plugin writes the JSON back, so root-owned 0600 files lock it out. Without ``owner`` the private files stay
    owned by us: :func:`install_commands` says how to install them.
    """
    ids = _ids(owner) if owner else None
    if ids is not None and os.geteuid() != 0 and ids[0] != os.geteuid():
        raise BrokerConfigError(f"only root can give files to {owner!r} (run as root, or install them as printed)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        path = out_dir / f.name
        if f.private:
            pki.write_private(path, f.data)
            if ids is not None:
                os.chown(path, *ids)
        else:
            atomic_write(path, f.data, mode=0o644, exact=True)
        written.append(path)
    return written


def install_commands(out_dir: Path, etc_dir: Path, files: Sequence[BrokerFile], owner: str = "mosquitto") -> list[str]:
    """Shell commands that install the bundle on the broker host with the right owners and modes."""
    q = shlex.quote
    conf = [f for f in files if f.name == "kyojo.conf"]
    limits = [f for f in files if f.name == SYSTEMD_LIMITS_FILE]
    elsewhere = ("kyojo.conf", SYSTEMD_LIMITS_FILE)
    public = [q(str(out_dir / f.name)) for f in files if not f.private and f.name not in elsewhere]
    private = [q(str(out_dir / f.name)) for f in files if f.private]
    cmds = [f"install -d -m 0755 {q(str(etc_dir))}"]
    if public:
        cmds.append(f"install -m 0644 {' '.join(public)} {q(str(etc_dir))}/")
    if private:
        cmds.append(f"install -m 0600 -o {q(owner)} -g {q(owner)} {' '.join(private)} {q(str(etc_dir))}/")
    if conf:
        cmds.append(f"install -m 0644 {q(str(out_dir / 'kyojo.conf'))} /etc/mosquitto/conf.d/kyojo.conf")
    if limits:
        cmds.append(f"install -D -m 0644 {q(str(out_dir / SYSTEMD_LIMITS_FILE))} {q(str(SYSTEMD_DROPIN))}")
        cmds.append("systemctl daemon-reload")
    cmds.append("systemctl restart mosquitto")
    return cmds


# --------------------------------------------------------------------------------------------------
# Live changes: the plugin's control topic, as the admin identity over mTLS
# --------------------------------------------------------------------------------------------------


def client_context(tls_dir: Path) -> ssl.SSLContext:
    """TLS client context from a ``tls`` directory as ``pki.install_certificate`` writes it."""
    tls_dir = Path(tls_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(tls_dir / pki.CA_NAME))
    ctx.load_cert_chain(str(tls_dir / pki.CERT_NAME), str(tls_dir / pki.KEY_NAME))
    return ctx


class DynsecAdmin:
    """One MQTT v5 connection (paho, mTLS) of an ADMIN identity to ``$CONTROL/dynamic-security/v1``.

    :meth:`execute` sends commands in one message and returns the plugin's responses, matched by correlation
    data; any response carrying ``error`` raises DynsecError (unless ``check=False``).
    """

    #: commands per control message (a response must stay well below the broker's max_packet_size)
    BATCH = 200
    #: items per page of listClients/listRoles/listGroups
    PAGE = 500

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, timeout: float = 10.0) -> None:
        """Prepare (do not connect) a connection to ``host:port``."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.host, self.port, self.timeout = host, port, timeout
        self._cond = threading.Condition()
        self._connack: Any = None
        self._closed: Any = None
        self._acks: dict[int, Any] = {}
        self._responses: dict[str, list[dict[str, Any]]] = {}
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kyojo-broker-sync-{secrets.token_hex(4)}",  # the broker replaces it by the CN
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.tls_set_context(context)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_ack
        self._client.on_subscribe = self._on_ack
        self._client.on_message = self._on_message

    # -- paho callbacks (network thread) --------------------------------------------------------------------
    def _on_connect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        with self._cond:
            self._closed = rc
            self._cond.notify_all()

    def _on_ack(self, _c: object, _u: object, mid: int, rc: Any, _p: object) -> None:
        with self._cond:
            self._acks[mid] = rc[0] if isinstance(rc, list) else rc
            self._cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
            key = str(responses[0].get("correlationData", "")).split("/", 1)[0]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return
        with self._cond:
            self._responses[key] = responses
            self._cond.notify_all()

    def _wait(self, what: str, ready: Any) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: ready() or self._closed is not None, self.timeout):
                raise DynsecError(f"broker {self.host}:{self.port}: no {what} within {self.timeout:g}s")
            if not ready():
                raise DynsecError(
                    f"broker {self.host}:{self.port} closed the connection ({self._closed}) during {what}"
                )

    # -- public ---------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect (mTLS), subscribe to the response topic; DynsecError if the broker refuses either."""
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as err:
            raise DynsecError(f"cannot connect to {self.host}:{self.port}: {err}") from err
        self._client.loop_start()
        self._wait("CONNACK", lambda: self._connack is not None)
        if self._connack.is_failure:
            raise DynsecError(f"broker refused the admin connection: {self._connack}")
        rc, mid = self._client.subscribe(RESPONSE_TOPIC, qos=1)
        if rc != 0 or mid is None:
            raise DynsecError(f"subscribe to {RESPONSE_TOPIC} failed locally (rc {rc})")
        self._wait("SUBACK", lambda: mid in self._acks)
        if self._acks[mid].is_failure:
            raise DynsecError(
                f"SUBACK {self._acks[mid]} for {RESPONSE_TOPIC}: this certificate is not an admin identity in the "
                "broker's dynamic security (enroll one with --role admin and render/sync it), or the plugin is "
                "not loaded"
            )

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> DynsecAdmin:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def execute(self, commands: Sequence[Mapping[str, Any]], *, check: bool = True) -> list[dict[str, Any]]:
        """Run ``commands`` (in order, :attr:`BATCH` per message) and return one response per command."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(commands), self.BATCH):
            out += self._execute(commands[start : start + self.BATCH])
        if check:
            failed = [(c, r["error"]) for c, r in zip(commands, out, strict=True) if r.get("error")]
            if failed:
                text = "; ".join(f"{c['command']} {_subject(c)}: {e}" for c, e in failed)
                raise DynsecError(f"dynamic security refused: {text}")
        return out

    def _execute(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        key = uuid.uuid4().hex
        body = [{**c, "correlationData": f"{key}/{i}"} for i, c in enumerate(commands)]
        info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": body}), qos=1)
        if info.rc != 0:
            raise DynsecError(f"publish to {CONTROL_TOPIC} failed locally (rc {info.rc})")
        self._wait("PUBACK", lambda: info.mid in self._acks)
        if self._acks[info.mid].is_failure:
            raise DynsecError(f"PUBACK {self._acks[info.mid]} on {CONTROL_TOPIC}: not an admin identity")
        self._wait("response", lambda: key in self._responses)
        with self._cond:
            responses = self._responses.pop(key)
        if len(responses) != len(commands):
            raise DynsecError(f"{len(responses)} responses to {len(commands)} commands")
        return responses

    def _list(self, command: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.PAGE
            data = self.execute([{"command": command, "verbose": True, "count": page, "offset": len(items)}])[0]
            got = data.get("data", {}).get(key, [])
            items += got
            if len(got) < page or len(items) >= int(data.get("data", {}).get("totalCount", 0)):
                return items

    def clients(self) -> list[dict[str, Any]]:
        """``listClients`` (verbose, all pages)."""
        return self._list("listClients", "clients")

    def roles(self) -> list[dict[str, Any]]:
        """``listRoles`` (verbose, all pages)."""
        return self._list("listRoles", "roles")

    def groups(self) -> list[dict[str, Any]]:
        """``listGroups`` (verbose, all pages)."""
        return self._list("listGroups", "groups")

    def default_access(self) -> dict[str, bool]:
        """``getDefaultACLAccess`` as {acltype: allow}."""
        acls = self.execute([{"command": "getDefaultACLAccess"}])[0].get("data", {}).get("acls", [])
        return {str(a["acltype"]): bool(a["allow"]) for a in acls}

    def anonymous_group(self) -> str | None:
        """The anonymous group's name, if one is set."""
        data = self.execute([{"command": "getAnonymousGroup"}])[0].get("data", {})
        name = data.get("group", {}).get("groupname")
        return str(name) if name else None


def _subject(command: Mapping[str, Any]) -> str:
    return str(command.get("username") or command.get("rolename") or command.get("groupname") or "")


def _plan(admin: DynsecAdmin, desired: DynsecState) -> tuple[list[dict[str, Any]], list[str]]:
    """Commands that make the live plugin equal ``desired``, and one line per change."""
    cmds: list[dict[str, Any]] = []
    notes: list[str] = []
    allowed = sorted(k for k, v in admin.default_access().items() if v)
    if allowed:
        cmds.append(
            {"command": "setDefaultACLAccess", "acls": [{"acltype": t, "allow": False} for t in _DEFAULT_ACCESS]}
        )
        notes.append(f"default access: deny all (allowed before: {', '.join(allowed)})")
    live_roles = {str(r["rolename"]): {Acl.from_json(a) for a in r.get("acls", [])} for r in admin.roles()}
    live_clients = {str(c["username"]): c for c in admin.clients()}
    # Groups: Kyojo uses none; a group would hand roles to its members. The anonymous group cannot be deleted:
    # strip its roles instead (anonymous clients cannot connect anyway: allow_anonymous false, mTLS only).
    anonymous = admin.anonymous_group()
    for g in admin.groups():
        name = str(g["groupname"])
        if name != anonymous:
            cmds.append({"command": "deleteGroup", "groupname": name})
            notes.append(f"group {name}: deleted (Kyojo grants rights only through per-identity roles)")
            continue
        for r in g.get("roles", []):
            cmds.append({"command": "removeGroupRole", "groupname": name, "rolename": r["rolename"]})
            notes.append(f"anonymous group {name}: role {r['rolename']} removed")
    for name, acls in sorted(desired.roles.items()):
        have = live_roles.get(name)
        if have is None:
            cmds.append({"command": "createRole", "rolename": name, "acls": [a.as_json() for a in sorted(acls)]})
            notes.append(f"role {name}: created ({len(acls)} ACLs)")
            continue
        extra, missing = sorted(have - acls), sorted(acls - have)
        cmds += [{"command": "removeRoleACL", "rolename": name, "acltype": a.acltype, "topic": a.topic} for a in extra]
        cmds += [{"command": "addRoleACL", "rolename": name, **a.as_json()} for a in missing]
        if extra or missing:
            notes.append(f"role {name}: {len(extra)} ACLs removed, {len(missing)} added")
    for cn, role in sorted(desired.clients.items()):
        live = live_clients.get(cn)
        if live is None:
            cmds.append({"command": "createClient", "username": cn, "roles": [{"rolename": role}]})
            notes.append(f"client {cn}: created with role {role}")
            continue
        roles = {str(r["rolename"]) for r in live.get("roles", [])}
        for r in sorted(roles - {role}):
            cmds.append({"command": "removeClientRole", "username": cn, "rolename": r})
            notes.append(f"client {cn}: role {r} removed")
        if role not in roles:
            cmds.append({"command": "addClientRole", "username": cn, "rolename": role})
            notes.append(f"client {cn}: role {role} added")
        if live.get("disabled"):
            cmds.append({"command": "enableClient", "username": cn})
            notes.append(f"client {cn}: enabled")
    for cn in sorted(set(live_clients) - set(desired.clients)):
        cmds.append({"command": "deleteClient", "username": cn})
        notes.append(f"client {cn}: deleted (no valid certificate in the CA); disconnected if it was connected")
    for name in sorted(set(live_roles) - set(desired.roles)):
        cmds.append({"command": "deleteRole", "rolename": name})
        notes.append(f"role {name}: deleted")
    return cmds, notes


def kick(admin: DynsecAdmin, names: Iterable[str], *, apply: bool = True) -> list[str]:
    """Disconnect the named clients now (disable + enable: they may reconnect with a certificate the broker
    still accepts). Use after revoking one certificate of an identity that keeps another valid one."""
    cmds: list[dict[str, Any]] = []
    notes = []
    for cn in sorted(set(names)):
        cmds += [{"command": "disableClient", "username": cn}, {"command": "enableClient", "username": cn}]
        notes.append(f"client {cn}: disconnected")
    if apply and cmds:
        admin.execute(cmds)
    return notes


def broker_sync(admin: DynsecAdmin, desired: DynsecState, *, apply: bool = True) -> list[str]:
    """Make the live broker's dynamic security equal ``desired`` (idempotent); return what changed.

    Adds missing roles and clients, corrects ACLs (e.g. a new share group) and client roles, re-enables disabled
    wanted clients, deletes clients and roles of identities without a valid certificate (which disconnects them:
    their certificates' reconnects then fail the handshake once the broker has reloaded the CRL), deletes
    groups, resets the default access to deny all. With ``apply=False`` only reports the plan.
    """
    cmds, notes = _plan(admin, desired)
    if apply and cmds:
        admin.execute(cmds)
    return notes


@contextlib.contextmanager
def admin_session(host: str, port: int, tls_dir: Path, *, timeout: float = 10.0) -> Iterator[DynsecAdmin]:
    """A connected :class:`DynsecAdmin` for the identity in ``tls_dir``."""
    with DynsecAdmin(host, port, client_context(tls_dir), timeout=timeout) as admin:
        yield admin

"""The home's LAN Mosquitto, rendered so that a plug can publish only its own readings.

Any device on the home LAN can reach the broker the plugs publish to. Without accounts, anyone there could
publish ``tele/<kettle>/SENSOR`` and the gateway would file it as the kettle's reading. Tasmota, Shelly (Gen1 and
Gen2+) and Zigbee2MQTT all log in to MQTT with a username and password, so this module renders:

- ``mosquitto.conf`` (for ``/etc/mosquitto/conf.d/``): the listeners, ``allow_anonymous false``, the two files;
- ``passwd``: one account per plug (and one for the Zigbee2MQTT coordinator and one for the gateway), hashed the
  way ``mosquitto_passwd`` 2.0 does (``$7$``: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash, base64);
- ``acl``: each plug account may write only its own topic tree; the coordinator owns ``<z2m_base>/#`` (a Zigbee
  plug has no MQTT login of its own: the coordinator speaks for all of them); the gateway reads everything and
  writes nothing.

Mosquitto facts this relies on: ``acl_file`` checks PUBLISH (and message delivery) per user, never SUBSCRIBE
(docs/ARCHITECTURE.md, "Pitfalls measured"); a will message is checked like a publish; an MQTT v3.1.1 publisher is
not told when a publish is refused (v5 gets reason 0x87), the message is just not delivered. Topics use explicit
``user`` blocks, never ``%c`` (a client picks its own client id).

What each family publishes (and so what its account may write):

- Tasmota ``tasmota:<topic>``: ``tele/<topic>/#``, ``stat/<topic>/#``, and with its MAC
  ``tasmota/discovery/<MAC>/#``; it reads ``cmnd/<topic>/#``.
- Shelly ``shelly:<id>[/<channel>]``: Gen1 ``shellies/<id>/#`` and the shared ``shellies/announce``; Gen2+ uses
  ``<id>`` as its topic prefix: ``<id>/events/rpc``, ``<id>/status/#``, ``<id>/online``; it reads
  ``<id>/rpc`` and ``shellies/command``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from kyojo.contract.vocab import ID_PATTERN, KyojoError, valid_id
from kyojo.runtime.files import atomic_write_text

#: ``mosquitto_passwd`` 2.0's PBKDF2 iteration count. The passwords here are random (:func:`new_password`), so
#: more iterations would not make them harder to guess; they would make every CONNECT (and a flood of wrong ones)
#: cost the broker more CPU on a Raspberry Pi.
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
#: topic roots a Shelly Gen2+ prefix may not take (its prefix is a root of its own: ``<id>/status/...``)
_RESERVED_ROOTS = frozenset({"tele", "stat", "cmnd", "tasmota", "shellies", "homeassistant"})
_MAC = re.compile(r"[0-9A-Fa-f]{12}")


class BrokerConfError(KyojoError, ValueError):
    """An account the LAN broker configuration cannot express safely."""


def new_password() -> str:
    """A random 24-character password (URL-safe base64: fits Tasmota's, Shelly's and Zigbee2MQTT's fields)."""
    import secrets

    return secrets.token_urlsafe(18)


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The ``$7$`` line part ``mosquitto_passwd`` 2.0 writes for ``password`` (PBKDF2-HMAC-SHA512)."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class Account(BaseModel):
    """A login on the LAN broker; the password inline (a SecretStr) or in a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(pattern=ID_PATTERN)
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Account:
        if (self.password is None) == (self.password_file is None):
            raise ValueError(f"{self.user}: give password or password_file (one of them)")
        return self

    def secret(self) -> str:
        """The password (read from ``password_file`` now, without its final newline)."""
        if self.password is not None:
            value = self.password.get_secret_value()
        else:
            assert self.password_file is not None
            try:
                value = self.password_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise BrokerConfError(f"{self.password_file}: cannot read ({err.__class__.__name__})") from None
        if not 12 <= len(value) <= 64 or not value.isprintable():
            raise BrokerConfError(f"{self.user}: a broker password is 12-64 printable characters")
        return value


class PlugAccount(Account):
    """One plug's login: ``key`` is its native key (what ``kyojo pair plugs`` lists); the username is the plug's
    own topic id (Tasmota topic with the default FullTopic ``%prefix%/%topic%/``, Shelly id). ``mac`` (Tasmota,
    12 hex digits) opens its discovery topic. Several channels of one device share one login."""

    key: str
    user: str = Field(default="", description="default: the topic id in the key")
    mac: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _user_from_key(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("user") and isinstance(data.get("key"), str):
            return {**data, "user": data["key"].partition(":")[2].split("/", 1)[0]}
        return data

    @model_validator(mode="after")
    def _key(self) -> PlugAccount:
        family, _, rest = self.key.partition(":")
        topic_id = rest.split("/", 1)[0]  # tasmota:<topic>[/<channel>], shelly:<id>[/<channel>]
        if family == "z2m":
            raise ValueError(f"{self.key}: a Zigbee plug has no MQTT login; give the coordinator's (zigbee2mqtt)")
        if family not in ("tasmota", "shelly"):
            raise ValueError(f"{self.key}: a plug key starts with tasmota: or shelly:")
        if not valid_id(topic_id):
            raise ValueError(f"{self.key}: the topic id must be letters, digits, '_', '.', '-' (no '/', '+', '#')")
        if topic_id != self.user:
            raise ValueError(f"{self.key}: the username is the plug's topic id {topic_id!r}")
        if family == "shelly" and topic_id.lower() in _RESERVED_ROOTS:
            raise ValueError(f"{self.key}: {topic_id!r} is a topic root of another family")
        if self.mac is not None and (family != "tasmota" or not _MAC.fullmatch(self.mac)):
            raise ValueError(f"{self.key}: mac is a Tasmota MAC, 12 hex digits")
        return self

    @property
    def family(self) -> str:
        return self.key.partition(":")[0]

    def acl(self) -> list[str]:
        """The ``topic`` lines of this plug's ``user`` block."""
        t = self.user
        if self.family == "tasmota":
            lines = [f"topic write tele/{t}/#", f"topic write stat/{t}/#", f"topic read cmnd/{t}/#"]
            if self.mac:
                lines.append(f"topic write tasmota/discovery/{self.mac.upper()}/#")
            return lines
        return [
            f"topic readwrite shellies/{t}/#",
            "topic write shellies/announce",
            "topic read shellies/command",
            f"topic write {t}/events/rpc",
            f"topic write {t}/status/#",
            f"topic write {t}/online",
            f"topic read {t}/rpc",
        ]


class LanBrokerSpec(BaseModel):
    """What an installer writes (TOML) to get the LAN broker's files: see docs/LAN.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1"], min_length=1, description="addresses")
    port: int = Field(default=1883, gt=0, lt=65536)
    conf_dir: Path = Field(default=Path("/etc/mosquitto/kyojo"), description="where passwd and acl will live")
    gateway: Account
    zigbee2mqtt: Account | None = None
    z2m_base: str = Field(default="zigbee2mqtt", pattern=ID_PATTERN)
    plugs: list[PlugAccount] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> LanBrokerSpec:
        for host in self.listen:
            if not host or any(c.isspace() for c in host):
                raise ValueError(f"listen: {host!r} is not an address")
        owners: dict[str, tuple[str, Account]] = {}  # user -> (device, account)
        accounts: list[tuple[str, Account]] = [("gateway", self.gateway)]
        if self.zigbee2mqtt is not None:
            accounts.append(("zigbee2mqtt", self.zigbee2mqtt))
        accounts += [(f"{p.family}:{p.user}", p) for p in self.plugs]
        for device, account in accounts:
            prev = owners.setdefault(account.user, (device, account))
            if prev[0] != device:
                raise ValueError(f"two accounts named {account.user!r} ({prev[0]} and {device})")
            if (prev[1].password, prev[1].password_file) != (account.password, account.password_file):
                raise ValueError(f"{device}: one device, one password (its channels share the login)")
        for p in self.plugs:
            if p.family == "shelly" and p.user == self.z2m_base:
                raise ValueError(f"{p.key}: {p.user!r} is the Zigbee2MQTT base topic")
        return self


@dataclass(frozen=True, slots=True)
class LanBrokerConf:
    """The three rendered files (text)."""

    mosquitto_conf: str
    passwd: str
    acl: str

    def write(self, out_dir: Path) -> list[Path]:
        """Write ``mosquitto.conf``, ``passwd`` and ``acl`` into ``out_dir`` (0600, atomically)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("mosquitto.conf", self.mosquitto_conf), ("passwd", self.passwd), ("acl", self.acl)):
            path = out_dir / name
            atomic_write_text(path, text, mode=0o600)
            written.append(path)
        return written


def render_lan_broker_conf(spec: LanBrokerSpec, *, salt: Callable[[], bytes] | None = None) -> LanBrokerConf:
    """Render the LAN broker's configuration, password file and ACL for ``spec`` (passwords read now).

    ``salt`` (tests) replaces the random salt source.
    """
    make_salt = salt or (lambda: os.urandom(_SALT_BYTES))
    # one login per Shelly device even when several of its channels are paired (shelly:<id>/0, /1, ...)
    plugs: dict[str, PlugAccount] = {}
    for p in spec.plugs:
        plugs.setdefault(p.user, p)
    accounts: list[Account] = [spec.gateway, *([spec.zigbee2mqtt] if spec.zigbee2mqtt else []), *plugs.values()]
    passwd = "".join(f"{a.user}:{mosquitto_hash(a.secret(), salt=make_salt())}\n" for a in accounts)

    acl = [
        "# Rendered by Kyojo (drivers/plugs/broker.py). Each plug writes only its own topics; the gateway reads.",
        "# Mosquitto's acl_file does not check SUBSCRIBE; it checks every PUBLISH and every delivery.",
        "",
        f"user {spec.gateway.user}",
        "topic read #",
    ]
    if spec.zigbee2mqtt is not None:
        acl += ["", f"user {spec.zigbee2mqtt.user}", f"topic readwrite {spec.z2m_base}/#"]
    for p in plugs.values():
        acl += ["", f"# {p.key}", f"user {p.user}", *p.acl()]

    conf = [
        "# Kyojo LAN broker for the home's smart plugs (rendered; edit the spec, not this file).",
        "# Put it in /etc/mosquitto/conf.d/; passwd and acl must be readable by the mosquitto user only.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {spec.conf_dir / 'passwd'}",
        f"acl_file {spec.conf_dir / 'acl'}",
        *(f"listener {spec.port} {host}" for host in spec.listen),
    ]
    return LanBrokerConf("\n".join(conf) + "\n", passwd, "\n".join(acl) + "\n")

"""``kind = "ocpp"``: the gateway's local OCPP 1.6J central system for the household's or site's chargers.

Example::

    [[devices]]
    kind = "ocpp"
    id = "home1-ocpp"
    subject = "home1"                 # household or site: the subject of the readings
    listen_host = "192.168.1.10"      # the gateway's LAN address (default 127.0.0.1; "0.0.0.0" only on purpose)
    listen_port = 9000                # chargers connect to ws://<listen_host>:9000/ocpp/<charge-point-id>
    charge_points = ["ALF-ICU-001"]   # allow-list: any other id is refused at the websocket handshake (HTTP 404)
    tags = ["04A2B3C4D5"]             # household RFID tags (omit: any tag is accepted)
    heartbeat_interval = "PT5M"
    security_profile = 1              # default: HTTP Basic auth; 0 = none, for chargers that cannot (a warning)
    [devices.credential_files]        # AuthorizationKey per charge point, one file each (mode 0600) ...
    "ALF-ICU-001" = "/etc/kyojo/ocpp/ALF-ICU-001.key"
    # [devices.credentials]           # ... or inline (kept as a SecretStr, never printed)
    # "ALF-ICU-001" = "<16 to 40 characters>"

Security profile 1 (OCPP 1.6 Security Whitepaper): the charger sends HTTP Basic auth on the websocket upgrade,
username = its charge point id, password = its AuthorizationKey (16-40 characters); a missing or wrong one gets
HTTP 401 before any OCPP frame is read. Installer steps: docs/LAN.md.

Readings come as ``<charge-point-id>-<connector>`` devices: ``ev_power`` W, ``ev_energy`` Wh (monotonic),
``current`` A, ``voltage`` V, ``soc`` %. Sessions are kept in ``<data_dir>/ocpp-<id>.db``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from kyojo.contract.vocab import ID_PATTERN, MAX_POWER_W, KyojoError, Reading

if TYPE_CHECKING:
    from drivers.ocpp.server import CentralSystem
    from drivers.registry import BuildContext
    from kyojo.contract.vocab import Clock, Driver

log = logging.getLogger(__name__)

#: OCPP 1.6 chargeBoxIdentity: printable, no '/' (it is the last path segment of the websocket URL) and no ':'
#: (HTTP Basic auth separates username and password with the first ':', so such an id could never log in).
CP_ID = re.compile(r"[^/\s?#:]{1,64}")
#: AuthorizationKey (security whitepaper): 16 to 40 characters; printable ASCII, so that it survives HTTP headers.
KEY = re.compile(r"[\x21-\x7e]{16,40}")


class OcppConfigError(KyojoError, ValueError):
    """A charger key that cannot be used (missing file, wrong length) or a charge point without a key."""


def valid_charge_point_id(value: str) -> bool:
    """Whether ``value`` can be a charge point id here (full match: a trailing newline is no id)."""
    return CP_ID.fullmatch(value) is not None


class Config(BaseModel):
    """The local central system of one household or charging site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ocpp"]
    id: str = Field(pattern=ID_PATTERN, description="id of this driver (health, errors, sessions file)")
    subject: str = Field(pattern=ID_PATTERN, description="household or site the readings belong to")
    listen_host: str = Field(
        default="127.0.0.1",
        min_length=1,  # "" would make asyncio listen on every interface
        description="the gateway's LAN address the chargers reach; 0.0.0.0 only when the config says so",
    )
    listen_port: int = Field(default=9000, ge=0, lt=65536, description="0: any free port (tests)")
    charge_points: list[str] = Field(
        default_factory=list, description="allow-list; every other id is refused at the handshake"
    )
    security_profile: Literal[0, 1] = Field(default=1, description="1: HTTP Basic auth (default); 0: none")
    credentials: dict[str, SecretStr] = Field(default_factory=dict, description="charge point id -> key")
    credential_files: dict[str, Path] = Field(
        default_factory=dict, description="charge point id -> file holding its key (read when the driver starts)"
    )
    tags: list[str] | None = Field(default=None, description="household RFID idTags (None: any tag)")
    heartbeat_interval: timedelta = timedelta(minutes=5)
    db: Path | None = Field(default=None, description="sessions file (default: <data_dir>/ocpp-<id>.db)")
    max_power_w: float = Field(
        default=MAX_POWER_W["ev_charger"], gt=0, description="per connector: register growth above it is a glitch"
    )

    @field_validator("charge_points")
    @classmethod
    def _cp_ids(cls, v: list[str]) -> list[str]:
        for cp in v:
            if not valid_charge_point_id(cp):
                raise ValueError(f"{cp!r}: a charge point id is 1-64 printable characters without '/' or ':'")
        if len(set(v)) != len(v):
            raise ValueError("a charge point is listed twice")
        return v

    @field_validator("credentials")
    @classmethod
    def _keys(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for cp, key in v.items():
            if KEY.fullmatch(key.get_secret_value()) is None:
                raise ValueError(f"credentials[{cp!r}]: an AuthorizationKey is 16-40 printable ASCII characters")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str] | None) -> list[str] | None:
        for tag in v or []:
            if not 0 < len(tag) <= 20:
                raise ValueError(f"{tag!r}: an OCPP 1.6 idTag has 1-20 characters")
        return v

    @field_validator("heartbeat_interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=10) <= v <= timedelta(days=1):
            raise ValueError("heartbeat_interval must be between 10 s and 1 day")
        return v

    @model_validator(mode="after")
    def _credentials_match_allow_list(self) -> Config:
        allowed = set(self.charge_points)
        both = sorted(set(self.credentials) & set(self.credential_files))
        if both:
            raise ValueError(f"a key both inline and in a file: {', '.join(both)}")
        stray = sorted((set(self.credentials) | set(self.credential_files)) - allowed)
        if stray:
            raise ValueError(f"keys for charge points not in charge_points: {', '.join(stray)}")
        if self.security_profile >= 1:
            missing = sorted(allowed - set(self.credentials) - set(self.credential_files))
            if missing:
                raise ValueError(
                    f"security_profile 1 needs a key for every charge point; missing: {', '.join(missing)} "
                    "(or set security_profile = 0 for a charger that cannot do HTTP Basic auth)"
                )
        return self


def read_key_file(path: Path) -> str:
    """One AuthorizationKey from a file (surrounding whitespace and the final newline are not part of it)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise OcppConfigError(f"{path}: cannot read the charger key ({err.__class__.__name__})") from None
    if KEY.fullmatch(text) is None:
        raise OcppConfigError(f"{path}: an AuthorizationKey is 16-40 printable ASCII characters")
    try:
        if path.stat().st_mode & 0o077:
            log.warning("%s: the charger key is readable by other users (chmod 600)", path)
    except OSError:  # pragma: no cover - it was just read
        pass
    return text


def resolve_credentials(config: Config) -> dict[str, str]:
    """Charge point id -> AuthorizationKey, from the inline keys and the key files (read now)."""
    keys = {cp: key.get_secret_value() for cp, key in config.credentials.items()}
    for cp, path in config.credential_files.items():
        keys[cp] = read_key_file(path)
    return keys


def make_central(
    config: Config, db_path: Path, clock: Clock | None = None, credentials: Mapping[str, str] | None = None
) -> CentralSystem:
    """The central system for a config (the store opened on ``db_path``; key files read unless ``credentials``)."""
    from drivers.ocpp.server import CentralSystem
    from drivers.ocpp.sessions import SessionStore

    creds = resolve_credentials(config) if credentials is None else credentials
    return CentralSystem(
        SessionStore(db_path),
        subject=config.subject,
        allow=frozenset(config.charge_points),
        security_profile=config.security_profile,
        credentials=creds,
        tags=frozenset(config.tags) if config.tags is not None else None,
        heartbeat_s=int(config.heartbeat_interval.total_seconds()),
        clock=clock.now if clock is not None else time.time,
        max_power_w=config.max_power_w,
    )


class OcppDriver:
    """Runs the central system while ``readings()`` is iterated and yields what the chargers measure."""

    def __init__(
        self, config: Config, db_path: Path, clock: Clock | None = None, credentials: Mapping[str, str] | None = None
    ) -> None:
        self.device_id = config.id
        self.config = config
        self.db_path = db_path
        self.clock = clock
        self._credentials = dict(credentials) if credentials is not None else None
        self.central: CentralSystem | None = None
        self.port: int | None = None
        #: set once the central system listens (``port`` is then the bound port)
        self.listening = asyncio.Event()

    async def readings(self) -> AsyncIterator[Reading]:
        """Listen, and yield each Reading the connected chargers produce (until the agent stops iterating)."""
        central = make_central(self.config, self.db_path, self.clock, self._credentials)
        self.central = central
        try:
            self.port = await central.start(self.config.listen_host, self.config.listen_port)
            self.listening.set()
            log.info(
                "%s: OCPP 1.6J central system on %s:%s for %d charge point(s), security profile %d",
                self.device_id,
                self.config.listen_host,
                self.port,
                len(self.config.charge_points),
                self.config.security_profile,
            )
            while True:
                yield await central.readings.get()
        finally:
            await central.close()
            central.store.close()
            self.central = None
            self.listening.clear()

    def health(self) -> Mapping[str, object]:
        """Per-charger health: connected, last heartbeat, connector status, current transaction, counters."""
        if self.central is None:
            return {"listening": False, "chargers": {}, "counters": {}}
        return self.central.health()


def build(config: Config, ctx: BuildContext) -> list[Driver]:
    """One :class:`OcppDriver`; sessions in the data dir unless ``db`` is set. The key files are read here, so
    a missing or malformed one stops the agent at start (:class:`OcppConfigError`), not at the first charger."""
    db = config.db or ctx.data_dir / f"ocpp-{config.id}.db"
    return [OcppDriver(config, db, ctx.clock, resolve_credentials(config))]

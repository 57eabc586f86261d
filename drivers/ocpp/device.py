"""``kind = "ocpp"``: the gateway's local OCPP 1.6J central system for the household's or site's chargers.

Example::

    [[devices]]
    kind = "ocpp"
    id = "home1-ocpp"
    subject = "home1"                 # household or site: the subject of the readings
    listen_host = "0.0.0.0"           # chargers on the LAN connect to ws://<pi>:9000/ocpp/<charge-point-id>
    listen_port = 9000
    charge_points = ["ALF-ICU-001"]   # allow-list: others get BootNotification Pending and no data is taken
    tags = ["04A2B3C4D5"]             # household RFID tags (omit: any tag is accepted)
    heartbeat_interval = "PT5M"
    [devices.credentials]             # OCPP security profile 1 (HTTP Basic, username = charge point id)
    "ALF-ICU-001" = "a-long-authorization-key"

Readings come as ``<charge-point-id>-<connector>`` devices: ``ev_power`` W, ``ev_energy`` Wh (monotonic),
``current`` A, ``voltage`` V, ``soc`` %. Sessions are kept in ``<data_dir>/ocpp-<id>.db``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.base import MAX_POWER_W, Reading

if TYPE_CHECKING:
    from drivers.base import Clock, Driver
    from drivers.ocpp.server import CentralSystem
    from drivers.registry import BuildContext

log = logging.getLogger(__name__)

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: OCPP 1.6 chargeBoxIdentity: printable, no '/' (it is the last path segment of the websocket URL)
_CP_ID = r"^[^/\s?#]{1,64}$"


class Config(BaseModel):
    """The local central system of one household or charging site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ocpp"]
    id: str = Field(pattern=_ID, description="id of this driver (health, errors, sessions file)")
    subject: str = Field(pattern=_ID, description="household or site the readings belong to")
    listen_host: str = Field(default="0.0.0.0", description="chargers are on the LAN")  # noqa: S104
    listen_port: int = Field(default=9000, ge=0, lt=65536, description="0: any free port (tests)")
    charge_points: list[str] | None = Field(default=None, description="allow-list (None: any charge point)")
    tags: list[str] | None = Field(default=None, description="household RFID idTags (None: any tag)")
    credentials: dict[str, SecretStr] | None = Field(
        default=None, description="charge point id -> Basic-auth password (security profile 1)"
    )
    heartbeat_interval: timedelta = timedelta(minutes=5)
    db: Path | None = Field(default=None, description="sessions file (default: <data_dir>/ocpp-<id>.db)")
    max_power_w: float = Field(
        default=MAX_POWER_W["ev_charger"], gt=0, description="per connector: register growth above it is a glitch"
    )

    @field_validator("charge_points")
    @classmethod
    def _cp_ids(cls, v: list[str] | None) -> list[str] | None:
        import re

        for cp in v or []:
            if not re.match(_CP_ID, cp):
                raise ValueError(f"{cp!r}: a charge point id is 1-64 printable characters without '/'")
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
    def _credentials_cover_allow_list(self) -> Config:
        if self.credentials is not None and self.charge_points is not None:
            missing = sorted(set(self.charge_points) - set(self.credentials))
            if missing:
                raise ValueError(f"credentials missing for allowed charge points: {', '.join(missing)}")
        return self


def make_central(config: Config, db_path: Path, clock: Clock | None = None) -> CentralSystem:
    """The central system for a config (the store opened on ``db_path``)."""
    from drivers.ocpp.server import CentralSystem
    from drivers.ocpp.sessions import SessionStore

    creds = {k: v.get_secret_value() for k, v in config.credentials.items()} if config.credentials else None
    return CentralSystem(
        SessionStore(db_path),
        subject=config.subject,
        allow=frozenset(config.charge_points) if config.charge_points is not None else None,
        tags=frozenset(config.tags) if config.tags is not None else None,
        credentials=creds,
        heartbeat_s=int(config.heartbeat_interval.total_seconds()),
        clock=clock.now if clock is not None else time.time,
        max_power_w=config.max_power_w,
    )


class OcppDriver:
    """Runs the central system while ``readings()`` is iterated and yields what the chargers measure."""

    def __init__(self, config: Config, db_path: Path, clock: Clock | None = None) -> None:
        self.device_id = config.id
        self.config = config
        self.db_path = db_path
        self.clock = clock
        self.central: CentralSystem | None = None
        self.port: int | None = None
        #: set once the central system listens (``port`` is then the bound port)
        self.listening = asyncio.Event()

    async def readings(self) -> AsyncIterator[Reading]:
        """Listen, and yield each Reading the connected chargers produce (until the agent stops iterating)."""
        central = make_central(self.config, self.db_path, self.clock)
        self.central = central
        try:
            self.port = await central.start(self.config.listen_host, self.config.listen_port)
            self.listening.set()
            log.info("%s: OCPP 1.6J central system on %s:%s", self.device_id, self.config.listen_host, self.port)
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
    """One :class:`OcppDriver`; sessions in the data dir unless ``db`` is set."""
    db = config.db or ctx.data_dir / f"ocpp-{config.id}.db"
    return [OcppDriver(config, db, ctx.clock)]

"""``kind = "plugs"``: the household's smart plugs on the gateway's LAN-side Mosquitto.

Example::

    [[devices]]
    kind = "plugs"
    id = "home1-plugs"
    household = "home1"
    broker_port = 1883
    username = "kyojo-gateway"      # the gateway's read-only account on the LAN broker (docs/LAN.md)
    password_file = "/etc/kyojo/lan-broker.pw"   # or password = "..."
    [devices.appliances]            # native key -> appliance; readings come as <household>-<appliance>
    "tasmota:pow1" = "kettle"
    "shelly:shellyplug-s-C45BBE/0" = "fridge"
    "shelly:shellypstripg4-aabbccddeeff/3" = "tv"
    "z2m:washer_plug" = "washer"

Native keys are what ``kyojo decode plug`` prints and what the driver records for unpaired plugs. Only plugs in
``appliances`` or paired with ``kyojo pair plugs --accept`` produce Readings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.plugs.pairing import valid_appliance
from drivers.plugs.session import valid_key
from kyojo.contract.vocab import ID_PATTERN, MAX_POWER_W, KyojoError, valid_id

if TYPE_CHECKING:
    from drivers.registry import BuildContext
    from kyojo.contract.vocab import Driver


class PlugsConfigError(KyojoError, ValueError):
    """The broker password file cannot be read."""


class Config(BaseModel):
    """Plugs of one household on one local MQTT broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["plugs"]
    id: str = Field(pattern=ID_PATTERN, description="id of this driver (health, errors)")
    household: str = Field(pattern=ID_PATTERN, description="subject of the readings, and the device id prefix")
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=1883, gt=0, lt=65536)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(default=None, description="file holding the password (read at start)")
    appliances: dict[str, str] = Field(default_factory=dict)
    z2m_base: str = Field(default="zigbee2mqtt", pattern=r"^[^#+/\s][^#+\s]*$")
    extra_topics: list[str] = Field(default_factory=list, description="more subscriptions (custom FullTopics)")
    max_power_w: float = Field(
        default=MAX_POWER_W["plug"], gt=0, description="per outlet/relay: counter growth above it is a glitch"
    )

    @field_validator("appliances")
    @classmethod
    def _appliances(cls, v: dict[str, str]) -> dict[str, str]:
        for key, name in v.items():
            if not valid_key(key):
                raise ValueError(f"{key!r}: native keys start with tasmota:, shelly: or z2m: (max 128 printable)")
            if not valid_appliance(name):
                raise ValueError(f"{name!r}: appliance names are letters, digits, '_', '.', '-' (max 32)")
        dupes = sorted({n for n in v.values() if list(v.values()).count(n) > 1})
        if dupes:
            raise ValueError(f"two plugs for one appliance: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> Config:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        for name in self.appliances.values():
            if not valid_id(f"{self.household}-{name}"):
                raise ValueError(f"{self.household}-{name}: the device id would be longer than 64 characters")
        return self

    def secret(self) -> str | None:
        """The broker password (``password_file`` read now, without its final newline)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise PlugsConfigError(f"{self.password_file}: cannot read ({err.__class__.__name__})") from None


def build(config: Config, ctx: BuildContext) -> list[Driver]:
    """One :class:`~drivers.plugs.mqtt.PlugsDriver`; counters and discovery saved in the data dir."""
    from drivers.plugs.mqtt import PlugsDriver, default_topics
    from drivers.plugs.pairing import load
    from drivers.plugs.session import PlugSession

    def pairing() -> dict[str, str]:
        # plugs paired with ``kyojo pair plugs``, then the config's own table (which wins on a conflict)
        return {**load(ctx.data_dir), **config.appliances}

    session = PlugSession(config.household, pairing(), z2m_base=config.z2m_base, max_power_w=config.max_power_w)
    return [
        PlugsDriver(
            config.id,
            session,
            host=config.broker_host,
            port=config.broker_port,
            username=config.username,
            password=config.secret(),
            topics=[*default_topics(config.z2m_base), *config.extra_topics],
            clock=ctx.clock,
            state_path=ctx.data_dir / f"plugs-{config.id}.json",
            pairing=pairing,
        )
    ]

"""``kind = "bmeter"``: the household's smart meter over the B-route (a Wi-SUN module on a serial port).

Example::

    [[devices]]
    kind = "bmeter"
    id = "home1-meter"
    household = "home1"
    serial_port = "/dev/ttyUSB0"
    rbid = "00112233445566778899AABBCCDDEEFF"   # B-route ID from the power company (32 characters)
    password = "0123456789AB"                  # B-route password (12 characters)
    poll_interval = "PT30S"
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from kyojo.contract.vocab import MAX_POWER_W

if TYPE_CHECKING:
    from drivers.registry import BuildContext
    from kyojo.contract.vocab import Driver

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class Config(BaseModel):
    """A B-route smart meter. Secrets are SecretStr: they never appear in reprs, logs or status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bmeter"]
    id: str = Field(pattern=_ID, description="device id of the meter's readings, e.g. home1-meter")
    household: str = Field(pattern=_ID, description="subject of the readings")
    serial_port: str = "/dev/ttyUSB0"
    baudrate: int = Field(default=115200, gt=0)  # BP35A1 default UART speed
    rbid: SecretStr
    password: SecretStr
    poll_interval: timedelta = timedelta(seconds=30)
    export: bool = Field(default=False, description="also read 0xE3 (energy sold) as device <id>-export")
    tz_offset_h: float = Field(default=9.0, ge=-14, le=14, description="meter local time (JST) for 0xEA")
    scan_durations: tuple[int, ...] = (4, 5, 6, 7, 8)
    rejoin_grace: timedelta = timedelta(seconds=10)
    response_timeout: timedelta = timedelta(seconds=10)
    max_power_w: float = Field(
        default=MAX_POWER_W["meter"], gt=0, description="supply ceiling: register growth above it is a glitch"
    )

    @field_validator("rbid")
    @classmethod
    def _rbid(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if len(s) != 32 or not s.isascii() or not s.isalnum():
            raise ValueError("the B-route ID is 32 ASCII letters and digits")
        return v

    @field_validator("password")
    @classmethod
    def _password(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if len(s) != 12 or not s.isascii() or not s.isalnum():
            raise ValueError("the B-route password is 12 ASCII letters and digits")
        return v

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, v: timedelta) -> timedelta:
        # The meter updates 0xE7 every few seconds at best, and ARIB STD-T108 limits transmission time.
        if v < timedelta(seconds=5):
            raise ValueError("poll_interval must be at least 5 seconds")
        return v

    @field_validator("scan_durations")
    @classmethod
    def _durations(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 1 <= d <= 14 for d in v):
            raise ValueError("scan durations are SKSCAN values 1..14")
        return v


def build(config: Config, ctx: BuildContext) -> list[Driver]:
    """One :class:`~drivers.meter.driver.BRouteMeter` on the configured serial port."""
    import serial

    from drivers.meter.driver import BRouteMeter

    def open_port() -> serial.Serial:
        # A short read timeout keeps every wait responsive to stop requests.
        return serial.Serial(config.serial_port, config.baudrate, timeout=0.05)

    return [
        BRouteMeter(
            config.id,
            config.household,
            port_factory=open_port,
            rbid=config.rbid.get_secret_value(),
            password=config.password.get_secret_value(),
            clock=ctx.clock,
            poll_interval_s=config.poll_interval.total_seconds(),
            export=config.export,
            tz_offset_h=config.tz_offset_h,
            max_power_w=config.max_power_w,
            session_options={
                "scan_durations": config.scan_durations,
                "rejoin_grace_s": config.rejoin_grace.total_seconds(),
                "response_timeout_s": config.response_timeout.total_seconds(),
            },
        )
    ]

"""``kind = "gnss"``: a garbage truck's GNSS receiver (serial NMEA, or an existing gpsd), thinned for the uplink.

Example ``[[devices]]`` entry (TOML)::

    [[devices]]
    kind = "gnss"
    id = "truck-07-gnss"
    subject = "truck-07"                 # the truck id: mobility readings are about the truck
    source = "serial"                    # or "gpsd"
    port = "/dev/serial/by-id/usb-u-blox_AG_-_www.u-blox.com_u-blox_7_-_GPS_GNSS_Receiver-if00"
    baud = "auto"                        # or 4800 / 9600 / 38400 / 115200
    thin_interval = 10                   # seconds (or ISO-8601 "PT10S")
    thin_distance_m = 50
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.gnss.nmea import Fix
from drivers.gnss.truck import Position, Thinner
from kyojo.contract.vocab import ID_PATTERN, Clock, Reading, reading

if TYPE_CHECKING:
    from drivers.registry import BuildContext
    from kyojo.contract.vocab import Driver

#: rates a receiver may be configured to (the auto-detection probes the first four)
BAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class Config(BaseModel):
    """One GNSS receiver on a truck gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gnss"]
    id: str = Field(pattern=ID_PATTERN)
    subject: str = Field(pattern=ID_PATTERN, description="the truck id")
    source: Literal["serial", "gpsd"] = "serial"
    port: str = Field("/dev/serial0", description="prefer /dev/serial/by-id/... (stable across replugs)")
    baud: Literal["auto"] | int = "auto"
    gpsd_host: str = "127.0.0.1"
    gpsd_port: int = Field(2947, ge=1, le=65535)
    thin_interval: timedelta = Field(timedelta(seconds=10), description="at most one position per interval...")
    thin_distance_m: float = Field(50.0, ge=0, description="...or per this many metres driven (0: off)")
    date_floor: date = Field(date(2024, 1, 1), description="earlier receiver dates are GPS week-rollover bugs")
    accept_simulated: bool = False

    @field_validator("baud")
    @classmethod
    def _known_baud(cls, v: Literal["auto"] | int) -> Literal["auto"] | int:
        if v != "auto" and v not in BAUD_RATES:
            raise ValueError(f"baud must be 'auto' or one of {BAUD_RATES}")
        return v

    @field_validator("thin_interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("thin_interval must be > 0")
        return v


class FixSource(Protocol):
    """What the driver reads fixes from (``SerialNmeaSource``, ``GpsdSource`` or a test double)."""

    def fixes(self) -> AsyncIterator[Fix]: ...

    def health(self) -> Mapping[str, object]: ...


class GnssDriver:
    """Yields ``latitude``/``longitude`` (deg), ``speed`` (m/s) and ``course`` (deg) per thinned fix.

    A fix without a date (no valid RMC/ZDA yet) is stamped with the gateway clock's time.
    """

    def __init__(self, device_id: str, subject: str, source: FixSource, thinner: Thinner, clock: Clock) -> None:
        self.device_id = device_id
        self.subject = subject
        self.source = source
        self.thinner = thinner
        self.clock = clock
        self.fixes = 0
        self.emitted = 0
        self.last_fix: Fix | None = None

    async def readings(self) -> AsyncIterator[Reading]:
        """Readings of the fixes that pass the thinning, in receiver order."""
        async for fix in self.source.fixes():
            self.fixes += 1
            self.last_fix = fix
            ts = fix.ts if fix.ts is not None else self.clock.now()
            if not self.thinner.accept(Position(ts, fix.lat, fix.lon, fix.speed_mps)):
                continue
            for r in fix_readings(self.device_id, self.subject, fix, ts):
                self.emitted += 1
                yield r

    def health(self) -> Mapping[str, object]:
        """Source health plus fixes seen, thinned away and readings emitted."""
        return {
            "device": self.device_id,
            "kind": "gnss",
            "ok": bool(self.source.health().get("connected", False)),
            "fixes": self.fixes,
            "thinned_out": self.thinner.dropped,
            "readings_emitted": self.emitted,
            "last_fix_ts": None if self.last_fix is None else self.last_fix.ts,
            "source": dict(self.source.health()),
        }


def fix_readings(device: str, subject: str, fix: Fix, ts: float) -> list[Reading]:
    """The Readings of one fix (speed and course only when the receiver gave them)."""
    out = [reading(device, subject, "latitude", fix.lat, ts), reading(device, subject, "longitude", fix.lon, ts)]
    if fix.speed_mps is not None:
        out.append(reading(device, subject, "speed", fix.speed_mps, ts))
    if fix.course_deg is not None:
        out.append(reading(device, subject, "course", fix.course_deg, ts))
    return out


def make_source(config: Config) -> FixSource:
    """The configured transport (imports pyserial only here, when a gnss device is configured)."""
    from drivers.gnss.transport import GpsdSource, SerialNmeaSource

    if config.source == "gpsd":
        return GpsdSource(config.gpsd_host, config.gpsd_port)
    return SerialNmeaSource(config.port, config.baud, date_floor=config.date_floor)


def build(config: Config, ctx: BuildContext) -> list[Driver]:
    """One driver per configured receiver."""
    source = make_source(config)
    if config.accept_simulated and hasattr(source, "reader"):
        source.reader.assembler.accept_simulated = True
    thinner = Thinner(config.thin_interval.total_seconds(), config.thin_distance_m)
    return [GnssDriver(config.id, config.subject, source, thinner, ctx.clock)]

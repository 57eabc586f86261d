"""``kind = "ble"``: one Bluetooth LE health device (heart rate strap, BP monitor, thermometer, ...).

Example (gateway TOML)::

    [[devices]]
    kind = "ble"
    id = "bp-living-room"
    address = "C4:7C:8D:6A:12:34"
    profile = "blood_pressure"
    subject = "p1"
    user_subjects = { 1 = "p1", 2 = "p2" }   # optional: BPM/scale User ID -> subject

``backend = "virtual"`` (demos and tests only, needs the development dependency Bumble) is not this family's: it
is a test double (:mod:`drivers.sim.emit.ble`, a Bumble virtual peripheral played by the heart-rate strap
simulator, read through the same bleak/Link/BleDriver code) that registers itself for ``("ble", "virtual")`` in
:data:`drivers.registry.DOUBLES`, with its own config model (these fields plus ``sim_seed``). This family never
imports the simulators and knows only ``backend = "bleak"``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.ble.profiles import ProfileName
from kyojo.contract.vocab import ID_PATTERN as ID_PATTERN  # re-exported: drivers.ble.pair and .paired import it here

if TYPE_CHECKING:
    from drivers.ble.transport import BleBackend, SharedScanner
    from drivers.registry import BuildContext
    from kyojo.contract.vocab import Driver

#: a BD_ADDR (Linux, Windows) or a CoreBluetooth peripheral UUID (macOS)
ADDRESS_PATTERN = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$"


class DeviceFields(BaseModel):
    """What every ``kind = "ble"`` entry says about its device, whatever reaches it (the radio here, a test
    double's virtual radio in :mod:`drivers.sim.emit.ble`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ble"]
    id: str = Field(pattern=ID_PATTERN, description="device id used in Readings")
    address: str = Field(pattern=ADDRESS_PATTERN)
    profile: ProfileName
    subject: str = Field(pattern=ID_PATTERN, description="person (or household) the Readings belong to")
    user_subjects: dict[int, str] = Field(default_factory=dict, description="device User ID -> subject")
    lenient_length: bool = Field(False, description="accept trailing padding after the last field")
    scan_timeout: timedelta = timedelta(seconds=30)
    connect_timeout: timedelta = timedelta(seconds=20)
    backoff_initial: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)

    @model_validator(mode="after")
    def _check(self) -> DeviceFields:
        for user, subject in self.user_subjects.items():
            if not 0 <= user <= 254:  # 255 = "unknown user"
                raise ValueError(f"user_subjects: User ID {user} is not 0..254")
            if not subject:
                raise ValueError("user_subjects: empty subject")
        if self.backoff_initial <= timedelta(0) or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        return self


class Config(DeviceFields):
    """One BLE device on the platform's Bluetooth stack; validated when the gateway's config file is loaded."""

    backend: Literal["bleak"] = Field("bleak", description="the platform's BLE stack (bleak: BlueZ on the Pi)")


#: per-device stored-record state, under the gateway's data dir (see :mod:`drivers.ble.records`)
RECORDS_DIR = "ble-records"

_SCANNERS: dict[BleBackend | None, SharedScanner] = {}


def shared_scanner(backend: BleBackend | None = None) -> SharedScanner:
    """The process-wide scanner for ``backend`` (one per adapter; BlueZ allows one discovery session)."""
    from drivers.ble.transport import SharedScanner

    if backend not in _SCANNERS:
        _SCANNERS[backend] = SharedScanner(backend)
    return _SCANNERS[backend]


def build(config: Config, ctx: BuildContext, *, backend: BleBackend | None = None) -> list[Driver]:
    """One :class:`~drivers.ble.driver.BleDriver`; ``backend`` swaps bleak's backend classes (tests inject a
    virtual radio's); ``config.backend`` is always ``"bleak"`` (test doubles have their own config and build)."""
    from drivers.ble.driver import BleDriver
    from drivers.ble.profiles import PROFILES, STORING_PROFILES
    from drivers.ble.records import RecordLog
    from drivers.ble.transport import Link
    from kyojo.runtime.backoff import Backoff

    # Devices that keep measurements while out of range: remember what was taken, across restarts.
    records = (
        RecordLog(ctx.data_dir / RECORDS_DIR / f"{config.id}.json") if config.profile in STORING_PROFILES else None
    )

    link = Link(
        config.address,
        PROFILES[config.profile].subscriptions,
        scanner=shared_scanner(backend),
        clock=ctx.clock,
        backend=backend,
        backoff=Backoff(config.backoff_initial.total_seconds(), config.backoff_max.total_seconds()),
        scan_timeout=config.scan_timeout.total_seconds(),
        connect_timeout=config.connect_timeout.total_seconds(),
        records=records,
    )
    driver = BleDriver(
        config.id,
        config.subject,
        link,
        ctx.clock,
        user_subjects=config.user_subjects,
        lenient=config.lenient_length,
    )
    return [driver]

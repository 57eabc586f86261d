"""Pairing's bookkeeping without the radio: errors and exit codes, what a scan saw and ``add`` found, the site
(the gateway's data dir and configured devices), and the registry operations (:func:`check_free`, :func:`record`).

No bleak, no typer: the household web page imports this to show and check devices without loading the Bluetooth
stack; :mod:`drivers.ble.pair` (the radio work and ``kyojo pair``) re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from drivers.ble import paired
from drivers.ble.profiles import ProfileName
from kyojo.contract.vocab import KyojoError

EXIT_USAGE = 2
EXIT_NO_ADAPTER = 3
EXIT_NOT_FOUND = 4
EXIT_WRONG_PROFILE = 5
EXIT_PAIRING_REFUSED = 6
EXIT_LINK = 7


class PairError(KyojoError):
    """A pairing command failed in a way the household can act on; ``exit_code`` for the CLI."""

    exit_code = EXIT_USAGE


class NoAdapter(PairError):
    exit_code = EXIT_NO_ADAPTER


class NotFound(PairError):
    exit_code = EXIT_NOT_FOUND


class WrongProfile(PairError):
    exit_code = EXIT_WRONG_PROFILE


class PairingRefused(PairError):
    exit_code = EXIT_PAIRING_REFUSED


class PinRejected(PairingRefused):
    """Pairing started but the keys did not match: a wrong PIN/passkey (SMP Confirm Value / Passkey Entry /
    Numeric Comparison / DHKey Check Failed; BlueZ ``AuthenticationFailed``)."""


class AlreadyPaired(PairError):
    """The address (or the wanted device id) is already in the registry or in the gateway config."""


class LinkFailed(PairError):
    exit_code = EXIT_LINK


@dataclass(frozen=True, slots=True)
class Nearby:
    """A device seen by ``scan``."""

    address: str
    name: str | None
    rssi: int
    profiles: tuple[ProfileName, ...]
    services: tuple[str, ...]


class Bond(StrEnum):
    """When ``add`` bonds."""

    auto = "auto"  # when the device refuses a subscription without encryption (how bond-only devices say it)
    always = "always"
    never = "never"


@dataclass(frozen=True, slots=True)
class Added:
    """What ``add`` found out about the device."""

    address: str
    name: str | None
    profile: ProfileName
    bonded: bool


@dataclass(frozen=True, slots=True)
class Site:
    """What pairing needs from the gateway's config, which belongs to the agent: where the gateway keeps its data
    (the paired-devices file goes there) and the BLE devices its config already lists (upper-case address -> id).

    For ``kyojo pair list`` the agent's CLI also fills in the config's BLE devices as entries (``config_devices``),
    the household's names for devices (``labels``: device id -> name, the home page's), and the home's other
    devices (``others``: plugs, as rows with ``id``, ``kind``, ``what``, ``source``, ``last_seen``).
    """

    data_dir: Path
    configured: Mapping[str, str]
    config_devices: tuple[paired.PairedDevice, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    others: tuple[Mapping[str, object], ...] = ()
    lang: str = "en"


def check_free(site: Site, devices: list[paired.PairedDevice], address: str, device_id: str | None = None) -> None:
    """Raise :class:`AlreadyPaired` when ``address`` is in the registry or the config, or ``device_id`` is taken."""
    address = address.upper()
    if (old := paired.find(devices, address)) is not None:
        raise AlreadyPaired(f"{address} is already paired as {old.id} for {old.subject}")
    if (configured_id := site.configured.get(address)) is not None:
        raise AlreadyPaired(f"{address} is already configured in the gateway config as {configured_id}")
    if device_id is not None and any(d.id == device_id for d in devices):
        raise AlreadyPaired(f"device id {device_id!r} is taken")


def record(site: Site, added: Added, person: str, device_id: str | None = None) -> paired.PairedDevice:
    """Store a device :func:`add_device` paired for ``person`` in the registry (re-read now, checked again:
    another pairing may have finished meanwhile); the new entry. The agent reads the registry when it starts."""
    devices = paired.load(site.data_dir)
    check_free(site, devices, added.address, device_id)
    new_id = device_id or paired.free_id(devices, f"{added.profile.replace('_', '-')}-{person}"[:64])
    entry = paired.PairedDevice(
        id=new_id, address=added.address, profile=added.profile, subject=person, name=added.name, bonded=added.bonded
    )
    paired.save(site.data_dir, [*devices, entry])
    return entry

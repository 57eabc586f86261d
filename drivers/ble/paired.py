"""The gateway's registry of paired BLE devices: ``<data_dir>/ble-devices.json``, written by ``kyojo pair``.

Format (version 1)::

    {
      "version": 1,
      "devices": [
        {"id": "glucose-alice", "address": "C0:00:00:00:01:01", "profile": "glucose", "subject": "alice",
         "name": "Meter", "bonded": true, "added_at": "2026-11-26T13:40:00Z"}
      ]
    }

``subject`` is the household member the device belongs to (consent is per person); ``bonded`` records
whether pairing keys were exchanged (the keys themselves live in the OS Bluetooth stack: BlueZ's
``/var/lib/bluetooth``). The agent turns the entries into ``kind = "ble"`` device configs with
:func:`device_configs`. Writes are atomic (temporary file + rename), so the agent never reads half a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.ble.device import ADDRESS_PATTERN, ID_PATTERN, Config
from drivers.ble.profiles import ProfileName
from kyojo.contract.vocab import KyojoError
from kyojo.runtime.files import atomic_write_text

#: file name of the registry inside the gateway's data dir
REGISTRY_FILE = "ble-devices.json"
VERSION = 1


class RegistryError(KyojoError, ValueError):
    """The registry file exists but cannot be read or does not validate."""


class PairedDevice(BaseModel):
    """One registry entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    address: str = Field(pattern=ADDRESS_PATTERN)
    profile: ProfileName
    subject: str = Field(pattern=ID_PATTERN)
    name: str | None = None
    bonded: bool = False
    added_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = VERSION
    devices: list[PairedDevice] = Field(default_factory=list)


def registry_path(data_dir: Path) -> Path:
    """Where the registry of a gateway with ``data_dir`` lives."""
    return Path(data_dir) / REGISTRY_FILE


def load(data_dir: Path) -> list[PairedDevice]:
    """The paired devices (empty if nothing was paired yet); :class:`RegistryError` if the file is bad."""
    path = registry_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        parsed = _File.model_validate_json(text)
    except ValidationError as err:
        raise RegistryError(f"{path}: not a valid BLE device registry: {err}") from err
    if parsed.version != VERSION:
        raise RegistryError(f"{path}: registry version {parsed.version} is not supported (expected {VERSION})")
    return parsed.devices


def save(data_dir: Path, devices: list[PairedDevice]) -> None:
    """Replace the registry atomically."""
    path = registry_path(data_dir)
    body = _File(devices=devices).model_dump(mode="json")
    # who owns which device is household data: 0640
    atomic_write_text(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n", mode=0o640, exact=True)


def find(devices: list[PairedDevice], address: str) -> PairedDevice | None:
    """The entry for ``address`` (case-insensitive)."""
    key = address.upper()
    return next((d for d in devices if d.address.upper() == key), None)


def free_id(devices: list[PairedDevice], base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever no entry uses yet."""
    taken = {d.id for d in devices}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def device_configs(data_dir: Path, **overrides: Any) -> list[Config]:
    """``kind = "ble"`` device configs for every paired device, for the agent to build drivers from.

    ``overrides`` are extra :class:`~drivers.ble.device.Config` fields applied to every entry (e.g.
    ``scan_timeout``); an entry that no longer validates raises :class:`RegistryError`.
    """
    out = []
    for dev in load(data_dir):
        entry: Mapping[str, Any] = {
            "kind": "ble",
            "id": dev.id,
            "address": dev.address,
            "profile": dev.profile,
            "subject": dev.subject,
            **overrides,
        }
        try:
            out.append(Config.model_validate(entry))
        except ValidationError as err:
            raise RegistryError(f"{registry_path(data_dir)}: entry {dev.id}: {err}") from err
    return out

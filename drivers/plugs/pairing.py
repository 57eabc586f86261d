"""Plugs the household accepted with ``kyojo pair plugs``: native plug key -> appliance name, kept in
``<data_dir>/plug-appliances.json`` next to the driver's discovery records (``plugs-<id>.json``).

The agent merges this file with the ``appliances`` table of its config (the config wins on a conflict), so
pairing a new plug needs no config edit, only an agent restart. This table is the plugs driver's allow-list:
a plug in neither produces no Readings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from drivers.plugs.session import valid_key
from kyojo.contract.vocab import KyojoError, valid_id
from kyojo.runtime.files import atomic_write

log = logging.getLogger(__name__)

FILE = "plug-appliances.json"
#: an appliance name is an identifier of at most 32 characters (the device id is ``<household>-<appliance>``)
MAX_APPLIANCE = 32


class PairingError(KyojoError, ValueError):
    """A plug key or appliance name the pairing cannot accept."""


def valid_appliance(name: object) -> bool:
    """Whether ``name`` can name an appliance (full match: ``"kettle\\n"`` is not one)."""
    return valid_id(name) and len(str(name)) <= MAX_APPLIANCE


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash or power cut leaves the old content or the new, whole:
    a temporary file (0600) written and fsynced, renamed over ``path``, then the directory fsynced
    (:func:`kyojo.runtime.files.atomic_write`)."""
    atomic_write(path, data, mode=0o600)


def load(data_dir: Path) -> dict[str, str]:
    """The paired plugs; entries that are not a plug key and an appliance name are skipped (with a warning)."""
    path = data_dir / FILE
    if not path.exists():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    table = doc.get("appliances") if isinstance(doc, dict) else None
    if not isinstance(table, dict):
        table = {}
    out = {k: v for k, v in table.items() if valid_key(k) and valid_appliance(v)}
    if len(out) != len(table):
        log.warning("%s: skipped %d entries that are not a plug key and an appliance name", path, len(table) - len(out))
    return out


def save(data_dir: Path, mapping: dict[str, str]) -> None:
    doc = {"version": 1, "appliances": dict(sorted(mapping.items()))}
    write_durably(data_dir / FILE, json.dumps(doc, indent=1).encode("utf-8"))


def seen(data_dir: Path) -> list[dict[str, Any]]:
    """Every plug the driver has heard from, newest record per key, from its discovery state files."""
    out: dict[str, dict[str, Any]] = {}
    for state in sorted(data_dir.glob("plugs-*.json")):
        try:
            doc = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for rec in doc.get("seen", []) if isinstance(doc, dict) else []:
            if isinstance(rec, dict) and "device" in rec:
                out[str(rec["device"])] = rec
    return sorted(out.values(), key=lambda r: str(r["device"]))


def accept(data_dir: Path, key: str, appliance: str, configured: dict[str, str]) -> dict[str, str]:
    """Name the appliance behind plug ``key``; refuses unknown formats and a second plug for one appliance."""
    if not valid_key(key):
        raise PairingError(f"{key!r}: a plug key starts with tasmota:, shelly: or z2m: (see `kyojo pair plugs`)")
    if not valid_appliance(appliance):
        raise PairingError(f"{appliance!r}: appliance names are letters, digits, '_', '.', '-' (max 32)")
    mapping = load(data_dir)
    taken = {a: k for k, a in {**mapping, **configured}.items() if k != key}
    if appliance in taken:
        raise PairingError(f"{appliance!r} is already the plug {taken[appliance]!r}")
    mapping[key] = appliance
    save(data_dir, mapping)
    return mapping


def forget(data_dir: Path, key: str) -> bool:
    mapping = load(data_dir)
    if mapping.pop(key, None) is None:
        return False
    save(data_dir, mapping)
    return True

"""Plugs the household accepted with ``kyojo pair plugs``: native plug key -> appliance name, kept in
``<data_dir>/plug-appliances.json`` next to the driver's discovery records (``plugs-<id>.json``).

The agent merges this file with the ``appliances`` table of its config (the config wins on a conflict), so
pairing a new plug needs no config edit, only an agent restart.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from drivers.base import KyojoError

FILE = "plug-appliances.json"
_KEY = re.compile(r"^(tasmota|shelly|z2m):\S{1,128}$")
_APPLIANCE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")


class PairingError(KyojoError, ValueError):
    """A plug key or appliance name the pairing cannot accept."""


def load(data_dir: Path) -> dict[str, str]:
    path = data_dir / FILE
    if not path.exists():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in doc.get("appliances", {}).items()}


def save(data_dir: Path, mapping: dict[str, str]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (FILE + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "appliances": dict(sorted(mapping.items()))}, indent=1), encoding="utf-8")
    os.replace(tmp, data_dir / FILE)


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
    if not _KEY.match(key):
        raise PairingError(f"{key!r}: a plug key starts with tasmota:, shelly: or z2m: (see `kyojo pair plugs`)")
    if not _APPLIANCE.match(appliance):
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

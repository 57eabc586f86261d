"""The one registry of device kinds. A kind's module is imported only when a gateway configures that kind,
so a truck gateway never imports bleak and a home gateway never imports pyserial.

Each registered module defines:

- ``Config``: a pydantic model with ``kind: Literal["<kind>"]`` and ``extra="forbid"`` (validated when the
  gateway's config file is loaded, like everything else in it);
- ``build(config, ctx: BuildContext) -> list[Driver]``: the drivers for that entry (one entry may stand for
  several devices, e.g. a simulated household).

Processors (``[[processors]]``: health, nilm, truck) are the agent's, registered in :mod:`edge_agent.processors`;
they take :class:`BuildContext` from here so that drivers never import the agent.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from kyojo.contract.errors import KyojoError
from kyojo.contract.vocab import Clock, Driver

KINDS: dict[str, str] = {
    "sim": "drivers.sim.device",
    "ble": "drivers.ble.device",
    "gnss": "drivers.gnss.device",
    "plugs": "drivers.plugs.device",
    "bmeter": "drivers.meter.device",
    "ocpp": "drivers.ocpp.device",
}


#: Test doubles that stand in for a kind's hardware when an entry asks for them: ``(kind, backend) -> module``,
#: a module with its own ``Config`` and ``build`` like a kind's. They live in ``drivers/sim`` and depend on the
#: family, never the reverse: the family's config and ``build`` do not know them (import-linter checks that
#: production families never import ``drivers.sim``), and existing configs (``kind = "ble"``, ``backend =
#: "virtual"``) keep working.
DOUBLES: dict[tuple[str, str], str] = {
    ("ble", "virtual"): "drivers.sim.emit.ble",
}


class UnknownKind(KyojoError, ValueError):
    """A device entry names a kind no module is registered for."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a driver (or a processor) may need from the agent besides its own config."""

    gateway_id: str
    clock: Clock
    clock_speed: float
    data_dir: Path


def module_for(kind: str) -> ModuleType:
    path = KINDS.get(kind)
    if path is None:
        raise UnknownKind(f"unknown device kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return importlib.import_module(path)


def _double(kind: str, backend: object) -> ModuleType | None:
    path = DOUBLES.get((kind, backend)) if isinstance(backend, str) else None
    return importlib.import_module(path) if path is not None else None


def validate(entry: Any) -> Any:
    """Validate one ``[[devices]]`` entry with its kind's model, or with a registered test double's when its
    ``backend`` names one (imports that module only)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        if hasattr(entry, "kind"):  # already a validated model
            return entry
        raise UnknownKind("every [[devices]] entry needs a string 'kind'")
    module = _double(entry["kind"], entry.get("backend")) or module_for(entry["kind"])
    return module.Config.model_validate(entry)


def build(entry: Any, ctx: BuildContext) -> list[Driver]:
    """The drivers of one validated ``[[devices]]`` entry (a registered test double when the entry asks for one)."""
    module = _double(entry.kind, getattr(entry, "backend", None)) or module_for(entry.kind)
    drivers: list[Driver] = list(module.build(entry, ctx))
    return drivers

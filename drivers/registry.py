"""The one registry of device kinds. A kind's module is imported only when a gateway configures that kind,
so a truck gateway never imports bleak and a home gateway never imports pyserial.

Each registered module defines:

- ``Config``: a pydantic model with ``kind: Literal["<kind>"]`` and ``extra="forbid"`` (validated when the
  gateway's config file is loaded, like everything else in it);
- ``build(config, ctx: BuildContext) -> list[Driver]``: the drivers for that entry (one entry may stand for
  several devices, e.g. a simulated household).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from drivers.base import Clock, Driver, Event, KyojoError, Reading

KINDS: dict[str, str] = {
    "sim": "drivers.sim.device",
    "ble": "drivers.ble.device",
    "gnss": "drivers.gnss.device",
    "plugs": "drivers.plugs.device",
    "bmeter": "drivers.meter.device",
    "ocpp": "drivers.ocpp.device",
}


#: processors: consume the Readings of a gateway and produce Events (pickups, alerts). Same module contract:
#: ``Config`` and ``build(config, ctx) -> Processor``.
PROCESSORS: dict[str, str] = {
    "truck": "drivers.gnss.processor",
    "health": "models.rules.processor",
    "nilm": "models.nilm.processor",
}


class UnknownKind(KyojoError, ValueError):
    """A device entry names a kind no module is registered for."""


class Processor(Protocol):
    """Turns the gateway's Readings into Events (alerts, pickups) or derived Readings (estimates).

    ``feed`` gets each batch of new readings. A processor whose derived Readings describe the past sets
    ``category`` and ``lag_s``, and the agent keeps that category's windows open that much longer.
    """

    name: str

    def feed(self, readings: Sequence[Reading]) -> Sequence[Event | Reading]: ...

    def health(self) -> Mapping[str, object]: ...


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a driver may need from the agent besides its own config."""

    gateway_id: str
    clock: Clock
    clock_speed: float
    data_dir: Path


def module_for(kind: str) -> ModuleType:
    path = KINDS.get(kind)
    if path is None:
        raise UnknownKind(f"unknown device kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return importlib.import_module(path)


def validate(entry: Any) -> Any:
    """Validate one ``[[devices]]`` entry with its kind's model (imports that kind's module only)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        if hasattr(entry, "kind"):  # already a validated model
            return entry
        raise UnknownKind("every [[devices]] entry needs a string 'kind'")
    return module_for(entry["kind"]).Config.model_validate(entry)


def validate_processor(entry: Any) -> Any:
    """Validate one ``[[processors]]`` entry with its kind's model."""
    if hasattr(entry, "kind") and not isinstance(entry, dict):
        return entry
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise UnknownKind("every [[processors]] entry needs a string 'kind'")
    path = PROCESSORS.get(entry["kind"])
    if path is None:
        raise UnknownKind(f"unknown processor kind {entry['kind']!r}; known kinds: {', '.join(sorted(PROCESSORS))}")
    return importlib.import_module(path).Config.model_validate(entry)


def build_processor(entry: Any, ctx: BuildContext) -> Processor:
    processor: Processor = importlib.import_module(PROCESSORS[entry.kind]).build(entry, ctx)
    return processor


def build(entry: Any, ctx: BuildContext) -> list[Driver]:
    drivers: list[Driver] = module_for(entry.kind).build(entry, ctx)
    return drivers

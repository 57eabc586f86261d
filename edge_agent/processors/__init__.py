"""The agent's processor registry: ``[[processors]] kind = "health" | "nilm" | "truck" | "watchover"``.

A processor adapts the gateway's Readings to a model's or tracker's input and its output back to Events (alerts,
pickups) or derived Readings (estimates). The models themselves (``models/``) take arrays and the contract's
vocabulary and know nothing of the agent; the trackers they drive (``drivers.gnss.truck``) know nothing of it
either. A kind's module is imported only when a gateway configures it, so a truck gateway never imports
onnxruntime.

Each registered module defines ``Config`` (pydantic, ``kind: Literal["<kind>"]``, ``extra="forbid"``) and
``build(config, ctx: BuildContext) -> Processor``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from drivers.registry import BuildContext, UnknownKind
from kyojo.contract.vocab import Category, Event, Reading

PROCESSORS: dict[str, str] = {
    "truck": "edge_agent.processors.truck",
    "health": "edge_agent.processors.health",
    "nilm": "edge_agent.processors.nilm",
    "watchover": "edge_agent.processors.watchover",
}


class Processor(Protocol):
    """Turns the gateway's Readings into Events (alerts, pickups) or derived Readings (estimates).

    ``feed`` gets each batch of new readings. A processor whose derived Readings describe the past sets
    ``category`` and ``lag_s``, and the agent keeps that category's windows open that much longer.
    """

    name: str

    @property
    def category(self) -> Category | None:
        """The category of the derived Readings whose windows wait ``lag_s`` longer (None: none derived)."""

    @property
    def lag_s(self) -> float:
        """How far in the past the derived Readings lie, in simulated seconds (0: they describe the present)."""

    def feed(self, readings: Sequence[Reading]) -> Sequence[Event | Reading]: ...

    def health(self) -> Mapping[str, object]: ...


def validate(entry: Any) -> Any:
    """Validate one ``[[processors]]`` entry with its kind's model (imports that kind's module only)."""
    if hasattr(entry, "kind") and not isinstance(entry, dict):
        return entry
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise UnknownKind("every [[processors]] entry needs a string 'kind'")
    path = PROCESSORS.get(entry["kind"])
    if path is None:
        raise UnknownKind(f"unknown processor kind {entry['kind']!r}; known kinds: {', '.join(sorted(PROCESSORS))}")
    return importlib.import_module(path).Config.model_validate(entry)


def build(entry: Any, ctx: BuildContext) -> Processor:
    processor: Processor = importlib.import_module(PROCESSORS[entry.kind]).build(entry, ctx)
    return processor


__all__ = ["PROCESSORS", "BuildContext", "Processor", "build", "validate"]

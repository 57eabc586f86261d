"""``[[processors]] kind = "nilm"``: per-appliance power and energy estimated from the whole-home meter.

Feeds the meter's (and the plugs') power Readings to :class:`models.nilm.runtime.NilmRuntime` as plain samples
(:func:`feed_nilm`) and returns its estimates as Readings (:func:`to_readings`) on devices
``<meter>.nilm.<appliance>`` (marked ``extra["estimated"] = "true"``), which go through the raw store, the windows
and the energy consent like any other energy reading. Estimates describe a minute that ended up to ``LAG_S`` ago
(the models look at a window centred on it), so the agent holds the energy windows open that much longer. The
cumulative estimated energy and the plug calibrations survive restarts (a small JSON file).

Only *shown* estimates become Readings (:mod:`models.nilm.gate`: a plug calibration for this home says the model
beats always-off, or its confidence is high); a withheld estimate never enters the raw store, so it can neither be
shown nor released. ``health()`` counts, per appliance, how many minutes were shown and withheld, and lists the
calibrations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kyojo.contract.vocab import Category, Reading, reading
from kyojo.runtime.files import atomic_write_text

if TYPE_CHECKING:
    from drivers.registry import BuildContext
    from models.nilm.runtime import Estimate, NilmRuntime

#: the longest model window is 2 h centred on the minute, plus one minute of close lag
LAG_S = 61 * 60 + 60


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["nilm"]
    meter: str = Field(description="device id of the whole-home meter")
    subject: str = Field(description="the household (subject of the energy consent)")
    plugs: dict[str, str] = Field(default_factory=dict, description="plug device id -> appliance it powers")
    min_activations: int = Field(
        default=5, ge=1, description="plug activations of an appliance before its calibration for this home is fitted"
    )


def feed_nilm(runtime: NilmRuntime, readings: Iterable[Reading]) -> list[Estimate]:
    """The ``power`` Readings, in order, into the runtime as (device, time, W) samples (other metrics are not its
    input); the estimates they made available, in order."""
    out: list[Estimate] = []
    for r in readings:
        if r.metric == "power":
            out += runtime.push(r.device, r.ts, r.value)
    return out


def to_readings(estimates: Iterable[Estimate], device_prefix: str, subject: str) -> list[Reading]:
    """``power`` and ``energy`` Readings for estimates, device ``{device_prefix}.nilm.{appliance}``.

    ``extra`` marks them: ``estimated="true"``, ``source`` (``nilm-model`` or ``plug``), ``appliance`` and
    ``confidence``. Withheld estimates (``shown`` false) give no Reading.
    """
    out: list[Reading] = []
    for e in estimates:
        if not e.shown:
            continue
        dev = f"{device_prefix}.nilm.{e.appliance}"
        extra = {
            "estimated": "true",
            "source": e.source,
            "appliance": e.appliance,
            "confidence": f"{e.confidence:.3f}",
        }
        for metric, value in (("power", e.power_w), ("energy", e.energy_wh)):
            r = reading(dev, subject, metric, value, e.ts)
            out.append(Reading(r.device, r.subject, r.metric, r.value, r.unit, r.ts, extra))
    return out


class NilmProcessor:
    name = "nilm"
    category = Category.ENERGY
    lag_s = LAG_S

    def __init__(self, config: Config, state_path: Path) -> None:
        self.config = config
        self.state_path = state_path
        initial: dict[str, float] = {}
        calibrations: dict[str, dict[str, Any]] = {}
        if state_path.exists():
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if "energy_wh" in state:
                initial = {k: float(v) for k, v in state["energy_wh"].items()}
                calibrations = dict(state.get("calibrations", {}))
            else:  # the format before issue 19: appliance -> Wh
                initial = {k: float(v) for k, v in state.items()}
        # imported here, not at the top: validating a config (the web app, ``kyojo consent ...``) must not load
        # numpy and onnxruntime
        from models.nilm.gate import Calibration
        from models.nilm.runtime import NilmRuntime

        self.runtime = NilmRuntime(
            meter=config.meter,
            plugs=config.plugs,
            initial_energy_wh=initial,
            calibrations={k: Calibration.from_dict(v) for k, v in calibrations.items()},
            min_activations=config.min_activations,
        )
        self.estimates = 0

    def feed(self, readings: Sequence[Reading]) -> list[Reading]:
        power = sorted((r for r in readings if r.metric == "power" and ".nilm." not in r.device), key=lambda r: r.ts)
        estimates = feed_nilm(self.runtime, power)
        if not estimates:
            return []
        self.estimates += len(estimates)
        state = {
            "energy_wh": self.runtime.energy_wh,
            "calibrations": {k: c.as_dict() for k, c in self.runtime.calibrations.items()},
        }
        atomic_write_text(self.state_path, json.dumps(state), mode=0o644)
        return to_readings(estimates, self.config.meter, self.config.subject)

    def health(self) -> Mapping[str, object]:
        return {
            "estimates": self.estimates,
            **self.runtime.stats,
            "shown": dict(self.runtime.shown_counts),
            "withheld": dict(self.runtime.withheld_counts),
            "calibrations": {k: c.as_dict() for k, c in self.runtime.calibrations.items()},
        }


def build(config: Config, ctx: BuildContext) -> NilmProcessor:
    return NilmProcessor(config, ctx.data_dir / f"nilm-{config.meter}.json")

"""``kind = "sim"``: a simulated household or garbage truck (demo, tests, benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from kyojo.contract.vocab import ID_PATTERN

if TYPE_CHECKING:
    from drivers.registry import BuildContext
    from kyojo.contract.vocab import Driver

#: real seconds between two polls of a simulated driver (the simulated tick is this times the clock speed)
SIM_POLL_S = 0.1


class Config(BaseModel):
    """A simulated device family from ``drivers.sim`` (``household``, ``alone`` -- a person living alone, see
    :func:`drivers.sim.living_alone` -- or ``truck``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sim"]
    profile: Literal["household", "alone", "truck"]
    id: str = Field(pattern=ID_PATTERN)
    seed: int = 0
    persons: list[str] = Field(default_factory=lambda: ["p1", "p2"])
    only: list[str] | None = Field(
        default=None, description="simulate only these device ids (the others come through real drivers)"
    )
    quiet: tuple[float, float] | None = Field(
        default=None, description="profile alone: [start, end) POSIX s in which the person switches nothing on"
    )


def tick_s(clock_speed: float) -> float:
    """Simulated seconds between polls: fast clocks poll in bigger simulated steps."""
    return max(1.0, SIM_POLL_S * clock_speed)


def build(config: Config, ctx: BuildContext) -> list[Driver]:
    from drivers import sim

    if config.profile == "household":
        sims = sim.household(config.id, config.seed, persons=tuple(config.persons))
    elif config.profile == "alone":
        sims = sim.living_alone(config.id, config.seed, quiet=config.quiet)
    else:
        sims = sim.truck(config.id, config.seed)
    if config.only is not None:
        unknown = sorted(set(config.only) - {s.device_id for s in sims})
        if unknown:
            raise ValueError(f"only: no simulated device {', '.join(unknown)}")
        sims = [s for s in sims if s.device_id in config.only]
    start = ctx.clock.now()
    tick = tick_s(ctx.clock_speed)
    return [sim.SimDriver(s, ctx.clock, tick_s=tick, start=start) for s in sims]

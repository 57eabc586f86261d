"""The agent's driver supervisor (HOUSE item 8): expected failures are retried with backoff on the injected clock;
an unexpected exception stops only that driver, shows in the status, and never cancels the others."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from drivers.clock import ScaledClock
from edge_agent.agent import Agent
from kyojo.contract.vocab import Reading, reading
from tests.agentkit import T0, RampDriver, agent_config
from tests.kit import free_port


class FakeClock:
    """Simulated time that moves only when someone sleeps on it (no real sleeping)."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class BuggyDriver:
    """Raises a programming error (not an I/O or parse failure) on its first read."""

    device_id = "buggy-1"

    def __init__(self) -> None:
        self.starts = 0

    async def readings(self) -> AsyncIterator[Reading]:
        self.starts += 1
        raise RuntimeError("a bug in the driver")
        yield  # pragma: no cover - makes this an async generator

    def health(self) -> Mapping[str, object]:
        return {}


class FlakyDriver:
    """Fails with OSError on its first start, then yields one reading stamped with the clock's time."""

    device_id = "flaky-1"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.started_at: list[float] = []

    async def readings(self) -> AsyncIterator[Reading]:
        self.started_at.append(self.clock.now())
        if len(self.started_at) == 1:
            raise OSError("serial port went away")
        yield reading(self.device_id, "p1", "heart_rate", 70.0, self.clock.now())

    def health(self) -> Mapping[str, object]:
        return {}


def test_unexpected_error_stops_only_that_driver_and_shows_in_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ScaledClock(T0, 60.0)
    cfg = agent_config(tmp_path, free_port())  # no broker: the publisher keeps retrying in its thread
    buggy = BuggyDriver()
    agent = Agent(cfg, clock=clock, drivers=[buggy, RampDriver(clock, tick=1.0)])

    async def scenario() -> int:
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        for _ in range(400):  # at most 20 s
            if agent.pipeline.stats.readings >= 20 or run.done():
                break
            await asyncio.sleep(0.05)
        stored = agent.pipeline.stats.readings
        stop.set()
        await asyncio.wait_for(run, 30)  # the agent ends normally: nothing was cancelled by the bug
        return stored

    with caplog.at_level(logging.ERROR, logger="edge_agent.agent"):
        stored = asyncio.run(scenario())
    assert stored >= 20  # the ramp driver kept delivering after the buggy one failed
    assert buggy.starts == 1  # not restarted: a bug is not retried
    status = json.loads(cfg.status_path.read_text(encoding="utf-8"))
    assert status["driver_errors"] == {"buggy-1": 1}
    assert status["drivers_stopped"] == {"buggy-1": "RuntimeError: a bug in the driver"}
    assert status["readings"] >= 20
    errors = [r for r in caplog.records if "buggy-1" in r.getMessage()]
    assert len(errors) == 1  # logged once, with its traceback
    assert errors[0].exc_info is not None


def test_io_failure_is_retried_after_backoff_on_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    flaky = FlakyDriver(clock)
    agent = Agent(agent_config(tmp_path, free_port()), clock=clock, drivers=[flaky])
    try:
        began = time.monotonic()
        asyncio.run(asyncio.wait_for(agent._run_driver(flaky), 5))
        assert time.monotonic() - began < 0.5  # no real sleeping
        assert len(clock.sleeps) == 1
        assert 0.0 <= clock.sleeps[0] <= 1.0  # the first backoff delay: full jitter, [0, base], base 1 s
        assert flaky.started_at == [T0, T0 + clock.sleeps[0]]  # restarted after the backoff, in simulated time
        assert [r.ts for r in agent._buffer] == [T0 + clock.sleeps[0]]
        assert agent.driver_errors == {"flaky-1": 1}
        assert agent.drivers_stopped == {}
    finally:
        agent.conn.close()

"""A wall clock that jumps (issue 20, section 3): windows, consent expiry and pruning do not follow it, and readings
stamped under a jump are neither lost nor released twice, whether the jump is undone or turns out to be the truth.

The agent runs for real (its loop, its publisher, a real Mosquitto) on a scaled clock the test can move by hours,
as NTP or a wrong RTC moves a Pi's clock; the monotonic clock underneath keeps running as it does on the Pi.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import ScaledClock
from edge_agent.agent import Agent
from edge_agent.clockguard import ClockGuard
from edge_agent.consent import open_store
from edge_agent.db import connect
from kyojo.contract.vocab import Reading, reading
from provisioning.local import Mosquitto
from tests.agentkit import agent_config, read_status, run_agent_in_thread
from tests.kit import wait_for

HOUR = 3600.0


class JumpClock:
    """A scaled clock whose wall time the test can move (``offset``); ``guarded``: the agent watches it."""

    guarded = True

    def __init__(self, start: float, speed: float) -> None:
        self.base = ScaledClock(start, speed)
        self.speed = speed
        self.offset = 0.0

    def now(self) -> float:
        return self.base.now() + self.offset

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


class Strap:
    """One heart-rate reading every ``tick`` simulated seconds, stamped with the clock as it is (like a driver)."""

    device_id = "strap-p1"

    def __init__(self, clock: JumpClock, tick: float = 5.0) -> None:
        self.clock, self.tick = clock, tick
        self.emitted: list[Reading] = []

    async def readings(self) -> AsyncIterator[Reading]:
        while True:
            await self.clock.sleep(self.tick)
            r = reading(self.device_id, "p1", "heart_rate", 70.0, round(self.clock.now(), 3))
            self.emitted.append(r)
            yield r

    def health(self) -> Mapping[str, object]:
        return {"emitted": len(self.emitted)}


def _guard(config: Any) -> dict[str, Any]:
    return read_status(config).get("clock_guard") or {}


def _db(config: Any, sql: str) -> list[tuple[Any, ...]]:
    conn = connect(config.db_path)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def _run(tmp_path: Path, port: int, script: Any) -> None:
    start = time.time() - 2 * HOUR
    config = agent_config(
        tmp_path / "data",
        port,
        gateway="gw-clock",
        clock={"jump_tolerance": 1.0, "jump_confirm": 3.0},
        aggregation={"grace": 60},
    )
    conn = connect(config.db_path)
    open_store(config, conn).grant("preventive-care", "p1", now=datetime.fromtimestamp(start - 60, tz=UTC))
    conn.close()
    clock = JumpClock(start, speed=60.0)
    strap = Strap(clock)
    _, stop, holder = run_agent_in_thread(lambda: Agent(config, clock=clock, drivers=[strap]))
    try:
        script(config, clock, strap, holder[0], start)
    finally:
        stop()


def _stored(config: Any) -> list[float]:
    return sorted(ts / 1000 for (ts,) in _db(config, "SELECT ts FROM raw"))


def _released_until(config: Any) -> float:
    return max(ms for (ms,) in _db(config, "SELECT next_start FROM watermark")) / 1000


@pytest.mark.broker
def test_a_wrong_jump_forward_then_back_releases_nothing_early_and_loses_nothing(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    def script(config: Any, clock: JumpClock, strap: Strap, agent: Agent, start: float) -> None:
        wait_for(lambda: _db(config, "SELECT count(*) FROM watermark")[0][0] > 0, 30, "a first window released")
        clock.offset = 9 * HOUR  # an RTC read in the wrong zone
        wait_for(lambda: (_guard(config).get("readings_held") or 0) >= 3, 30, "readings held under the jump")
        assert _guard(config)["jump_s"] == pytest.approx(9 * HOUR, abs=120)
        assert _released_until(config) < start + 5 * HOUR  # nine hours of windows were not closed on the wrong clock
        clock.offset = 0.0  # NTP puts it back
        wait_for(lambda: _guard(config).get("jumps_undone") == 1, 30, "the jump undone")
        wait_for(lambda: _guard(config).get("readings_held") == 0, 30, "the held readings stored")
        n = len(strap.emitted)
        wait_for(lambda: read_status(config).get("readings", 0) >= n, 30, "the agent to store what the strap sent")
        status = read_status(config)
        assert status["late"] == 0 and status["clock_guard"]["held_dropped"] == 0
        # every reading is stored once, at the time it really happened (the jumped stamps moved back)
        truth = sorted(r.ts - 9 * HOUR if r.ts > start + 5 * HOUR else r.ts for r in strap.emitted[:n])
        assert _stored(config)[:n] == pytest.approx(truth, abs=0.002)
        assert max(_stored(config)) < start + 5 * HOUR  # nothing kept on the wrong timeline
        consents = _db(config, "SELECT status FROM consents")
        assert consents == [("active",)]  # the jump did not expire the consent

    _run(tmp_path, fresh_mosquitto.port, script)


@pytest.mark.broker
def test_a_jump_that_lasts_is_the_new_time_and_its_readings_count(fresh_mosquitto: Mosquitto, tmp_path: Path) -> None:
    def script(config: Any, clock: JumpClock, strap: Strap, agent: Agent, start: float) -> None:
        wait_for(lambda: _db(config, "SELECT count(*) FROM watermark")[0][0] > 0, 30, "a first window released")
        before = len(strap.emitted)
        clock.offset = 3 * HOUR  # the Pi booted on its saved time; NTP has the right one
        wait_for(lambda: _guard(config).get("jumps_confirmed") == 1, 30, "the jump confirmed")
        wait_for(lambda: _released_until(config) > start + 3 * HOUR, 60, "windows on the new time")
        n = len(strap.emitted)
        wait_for(lambda: read_status(config).get("readings", 0) >= n, 30, "the agent to store what the strap sent")
        assert read_status(config)["late"] == 0
        assert _stored(config)[:n] == pytest.approx(sorted(r.ts for r in strap.emitted[:n]), abs=0.002)
        assert any(r.ts > start + 3 * HOUR for r in strap.emitted[before:n])

    _run(tmp_path, fresh_mosquitto.port, script)


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_guard_by_itself() -> None:
    mono = Mono()
    g = ClockGuard(1_000_000.0, tolerance_s=120, confirm_s=900, monotonic=mono)
    mono.t += 60
    assert g.observe(1_000_060.0) is None and g.trusted == 1_000_060.0
    mono.t += 60
    assert g.observe(1_000_120.0 + 9 * HOUR) == "jumped"
    assert g.trusted == pytest.approx(1_000_060.0) and g.held_offset() == pytest.approx(9 * HOUR)
    mono.t += 60
    assert g.observe(1_000_180.0 + 9 * HOUR) is None and g.trusted == pytest.approx(1_000_060.0)  # windows wait
    mono.t += 60
    assert g.observe(1_000_240.0) == "undone" and g.held_offset() is None
    # backwards: the trusted time never goes back, and a jump that lasts becomes the time
    mono.t += 60
    assert g.observe(1_000_300.0 - 2 * HOUR) == "jumped" and g.trusted == pytest.approx(1_000_240.0)
    mono.t += 900
    assert g.observe(1_001_200.0 - 2 * HOUR) == "confirmed" and g.trusted == pytest.approx(1_000_240.0)
    # a start on a clock behind what was already released is held until it catches up
    g = ClockGuard(1_000_000.0, released_until=1_000_000.0 + 9 * HOUR, monotonic=mono)
    assert g.trusted == 1_000_000.0 + 9 * HOUR and g.held_offset() == pytest.approx(-9 * HOUR)
    mono.t += 10
    g.observe(1_000_010.0)
    assert g.trusted == 1_000_000.0 + 9 * HOUR

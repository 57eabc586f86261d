"""Pairing changes reach a running agent without a restart (issue 22, item 7).

A real agent runs against a real Mosquitto that is both the city broker and the home's LAN broker; a real plug
emitter (Tasmota JSON, drivers/sim/emit) publishes the kettle's plug on it. The household pairs, renames and
forgets the plug and pairs and removes a BLE strap by writing the registries as ``kyojo pair`` and the home page
do, and the test waits on the agent's own state (its database and status file) for each change to take effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drivers import sim
from drivers.ble import paired
from drivers.plugs import pairing
from drivers.sim.emit.plugs import PlugEmitter, household_plugs, wait_connected
from drivers.sim.energy import Plug
from edge_agent.agent import Agent
from edge_agent.db import connect
from provisioning.local import Mosquitto
from tests.agentkit import agent_config, read_status, run_agent_in_thread
from tests.kit import wait_for

pytestmark = pytest.mark.broker

HOME = "home-lp"


def _rows(config: Any, device: str) -> list[tuple[float, float]]:
    conn = connect(config.db_path)
    try:
        return [
            (float(ts), float(v))
            for ts, v in conn.execute(
                "SELECT r.ts, r.value FROM raw r JOIN series s ON s.id = r.series "
                "WHERE s.device = ? AND s.metric = 'energy' ORDER BY r.ts",
                (device,),
            )
        ]
    finally:
        conn.close()


def _next_status(config: Any) -> None:
    """Wait until the agent has gone once more round its loop (apply pairing, commit, write its status)."""
    at = read_status(config).get("at", 0)
    wait_for(lambda: read_status(config).get("at", 0) > at, 30, "the agent's next round")


def test_pairing_changes_apply_to_the_running_agent(fresh_mosquitto: Mosquitto, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = agent_config(
        data,
        fresh_mosquitto.port,
        gateway=HOME,
        clock={"speed": 30.0, "start": time.time()},
    )
    doc = config.model_dump(mode="json")
    doc["devices"] = [{"kind": "plugs", "id": f"{HOME}-plugs", "household": HOME, "broker_port": fresh_mosquitto.port}]
    config = type(config).model_validate(doc)
    kettle = next(s for s in sim.household(HOME, 7) if isinstance(s, Plug) and s.device_id == f"{HOME}-kettle")
    wire = household_plugs([kettle], HOME)[0]

    _, stop, holder = run_agent_in_thread(lambda: Agent(config))
    agent = holder[0]
    loop = asyncio.new_event_loop()
    emitter = PlugEmitter([wire], agent.clock, port=fresh_mosquitto.port)
    task: list[asyncio.Task[None]] = []
    started = threading.Event()

    def run_emitter() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(emitter.run()))
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])
        loop.close()

    emitter_thread = threading.Thread(target=run_emitter, daemon=True)
    emitter_thread.start()
    try:
        assert started.wait(10)
        asyncio.run_coroutine_threadsafe(wait_connected(emitter), loop).result(20)
        plugs = agent.drivers[0]

        # heard, not paired: no readings, the plug waits in the driver's discovery list
        wait_for(lambda: wire.native_key in plugs.health()["unpaired"], 20, "the plug to be heard")
        assert _rows(config, f"{HOME}-kettle") == []

        # paired (kyojo pair plugs --accept / the home page): its readings count from the next message on
        pairing.accept(data, wire.native_key, "kettle", {})
        wait_for(lambda: len(_rows(config, f"{HOME}-kettle")) >= 3, 30, "kettle readings")
        assert read_status(config)["pairing"]["applied"] >= 1

        # renamed: the same counter goes on under the new name; nothing is booked twice or lost as a reset
        pairing.accept(data, wire.native_key, "kitchen_kettle", {})
        wait_for(lambda: len(_rows(config, f"{HOME}-kitchen_kettle")) >= 3, 30, "renamed readings")
        old, new = _rows(config, f"{HOME}-kettle"), _rows(config, f"{HOME}-kitchen_kettle")
        assert old[-1][0] < new[0][0] and old[-1][1] <= new[0][1]
        assert "resets" not in str(plugs.health()["counters"])

        # forgotten: its readings stop and it is back in the discovery list
        assert pairing.forget(data, wire.native_key)
        wait_for(lambda: wire.native_key in plugs.health()["unpaired"], 30, "the plug unpaired")
        _next_status(config)  # what was buffered before the change is committed by now
        count = len(_rows(config, f"{HOME}-kitchen_kettle"))
        published = emitter.published
        wait_for(lambda: emitter.published >= published + 3, 30, "more plug messages")
        _next_status(config)
        assert len(_rows(config, f"{HOME}-kitchen_kettle")) == count

        # a BLE strap paired and removed: its driver starts and stops in the running agent
        strap = paired.PairedDevice(id="heart-rate-p1", address="C0:00:00:00:07:01", profile="heart_rate", subject="p1")
        paired.save(data, [strap])
        wait_for(lambda: read_status(config).get("drivers") == 2, 30, "the strap's driver")
        assert "heart-rate-p1" in {d.device_id for d in agent.drivers}
        paired.save(data, [])
        wait_for(lambda: read_status(config).get("drivers") == 1, 30, "the strap's driver to stop")
        assert plugs.connects == 1  # nothing reconnected or restarted on the way
        assert read_status(config)["pairing"]["errors"] == 0

        # a registry that cannot be read leaves the devices as they were, and says so
        (data / paired.REGISTRY_FILE).write_text("{not json", encoding="utf-8")
        wait_for(lambda: read_status(config).get("pairing", {}).get("errors") == 1, 30, "the refusal")
        assert read_status(config)["drivers"] == 1
    finally:
        if task:
            loop.call_soon_threadsafe(task[0].cancel)
        emitter_thread.join(15)
        stop()

"""Helpers for tests that run a real gateway agent: configs, a synthetic driver, an MQTT collector."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.clock import ScaledClock
from edge_agent.config import AgentConfig
from kyojo.contract.vocab import Clock, Reading, reading

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z


def agent_config(data_dir: Path, port: int, *, gateway: str = "gw-1", **extra: Any) -> AgentConfig:
    doc: dict[str, Any] = {
        "gateway": {"id": gateway, "data_dir": str(data_dir)},
        "mqtt": {"port": port, "reconnect_min": 0.1, "reconnect_max": 0.5},
        "store": {"commit_interval": 0.1},
        "aggregation": {"grace": 30},
    }
    for key, value in extra.items():
        doc.setdefault(key, {}).update(value)
    return AgentConfig.model_validate(doc)


class ManualClock:
    """Time the test moves by hand (``clock.t = ...``); the agent's loop is not run, the test calls ``flush()``."""

    speed = 1.0

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - no driver sleeps on it
        self.t += seconds


def consenting_agent(config: AgentConfig, start: float = T0) -> tuple[Any, ManualClock]:
    """An agent (no drivers, its loop not run) on a :class:`ManualClock` at ``start``, p1 having given the
    preventive-care consent a minute before."""
    from datetime import UTC, datetime

    from edge_agent.agent import Agent

    clock = ManualClock(start)
    agent = Agent(config, clock=clock, drivers=[])
    agent.pipeline.consents.grant("preventive-care", "p1", now=datetime.fromtimestamp(start - 60, tz=UTC))
    return agent, clock


def read_status(config: AgentConfig) -> dict[str, Any]:
    """The agent's status file as it was last written ({} before the first)."""
    import json

    try:
        doc = json.loads(config.status_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class LockstepClock:
    """The clock of a fast end-to-end run: scaled wall time, but never more than ``lead`` simulated seconds past
    what the slowest simulated driver has covered (``covered_until``).

    At a simulated half hour per real second, a busy machine that stalls the agent's thread for a second or two
    would otherwise let the pipeline close windows (its grace measured on the clock) before the drivers had emitted
    their readings: late by construction, not by any fault of the code under test. With this clock the pipeline
    waits on the drivers' state, not on wall time; keep the pipeline's grace above twice ``lead``.
    """

    def __init__(self, base: ScaledClock, lead: float) -> None:
        self.base, self.lead = base, lead
        self.drivers: Sequence[Any] = ()

    @property
    def speed(self) -> float:
        return self.base.speed

    def now(self) -> float:
        covered = [d.covered_until if d.covered_until is not None else self.base.start for d in self.drivers]
        return min(self.base.now(), min(covered, default=self.base.now()) + self.lead)

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


class RampDriver:
    """Heart rate every simulated second: 60 + (i mod 40), so every window's truth is easy to compute."""

    def __init__(self, clock: Clock, device: str = "hr-1", subject: str = "p1", tick: float = 10.0) -> None:
        self.device_id, self.subject, self.clock, self.tick = device, subject, clock, tick
        self.emitted: list[Reading] = []

    @staticmethod
    def value(ts: float) -> float:
        return 60.0 + int(ts) % 40

    async def readings(self) -> AsyncIterator[Reading]:
        last = int(self.clock.now())
        while True:
            await self.clock.sleep(self.tick)
            now = int(self.clock.now())
            for t in range(last + 1, now + 1):
                r = reading(self.device_id, self.subject, "heart_rate", self.value(t), float(t))
                self.emitted.append(r)
                yield r
            last = now

    def health(self) -> Mapping[str, object]:
        return {"emitted": len(self.emitted)}


class Collector:
    """A persistent-session MQTT v5 subscriber that records every message it gets."""

    def __init__(self, port: int, topic: str, client_id: str = "collector") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_agent_in_thread(make: Callable[[], Any]) -> tuple[threading.Thread, Callable[[], None], list[Any]]:
    """Run ``make()``'s Agent in a thread with its own loop; returns (thread, stop, [agent])."""
    holder: list[Any] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop_evt: list[asyncio.Event] = []

    def target() -> None:
        asyncio.set_event_loop(loop)
        agent = make()
        holder.append(agent)
        stop_evt.append(asyncio.Event())
        ready.set()
        loop.run_until_complete(agent.run(stop_evt[0]))
        loop.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop() -> None:
        loop.call_soon_threadsafe(stop_evt[0].set)
        thread.join(30)
        assert not thread.is_alive()

    return thread, stop, holder


class IngesterProc:
    """``python -m cloud_ingest run`` as a real subprocess (so a test can kill -9 it); follows its JSON stats."""

    def __init__(
        self,
        broker_port: int,
        influx_url: str,
        db: str,
        *,
        client_id: str = "ingest-1",
        extra: list[str] | None = None,
        log: Path | None = None,
    ) -> None:
        import subprocess
        import sys

        self.last: dict[str, Any] = {}
        self._log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloud_ingest",
                "run",
                "--broker-port",
                str(broker_port),
                "--influx-url",
                influx_url,
                "--influx-db",
                db,
                "--client-id",
                client_id,
                "--stats-interval",
                "0.2",
                # a group per test: Mosquitto keeps queueing a share of the group's messages for a member that
                # went offline with a persistent session (an earlier test's ingester), until it comes back
                "--group",
                f"g-{client_id}",
                *(extra or []),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()
        end = time.monotonic() + 20
        while not self.last.get("ready"):  # subscribed: consents loaded, data subscription acknowledged
            assert self.popen.poll() is None, "ingester exited at start"
            assert time.monotonic() < end, "ingester did not connect"
            time.sleep(0.05)

    def _follow(self) -> None:
        import json

        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self.last = json.loads(line)
            except ValueError:
                continue

    def stop(self) -> dict[str, Any]:
        self.popen.terminate()
        self.popen.wait(30)
        self._reader.join(5)
        if self.popen.stdout:
            self.popen.stdout.close()
        if hasattr(self._log, "close"):
            self._log.close()
        return self.last

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(10)
        self._reader.join(5)
        if self.popen.stdout:
            self.popen.stdout.close()
        if hasattr(self._log, "close"):
            self._log.close()

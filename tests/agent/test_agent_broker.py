"""The agent against a real Mosquitto: release, PUBACK-driven outbox, broker outage, restart."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from drivers.clock import ScaledClock
from edge_agent import audit, consent
from edge_agent.agent import Agent
from edge_agent.db import connect
from kyojo.contract.wire import decode_batch
from provisioning.local import Mosquitto
from tests.agentkit import T0, Collector, RampDriver, agent_config, run_agent_in_thread
from tests.kit import wait_for

pytestmark = pytest.mark.broker


def windows(messages: list[tuple[str, bytes, bool]]) -> dict[int, dict[str, object]]:
    seen: dict[int, dict[str, object]] = {}
    for topic, payload, _ in messages:
        if "/agg/" in topic:
            for item in decode_batch(topic, payload).items:
                seen[item.start] = item.model_dump()
    return seen


def outbox_depth(path: Path) -> int:
    conn = connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def test_broker_outage_queues_then_delivers_everything(tmp_path: Path, fresh_mosquitto: Mosquitto) -> None:
    cfg = agent_config(tmp_path / "gw", fresh_mosquitto.port)
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).grant("preventive-care", "p1", now=datetime.fromtimestamp(T0, tz=UTC))
    conn.close()
    sub = Collector(fresh_mosquitto.port, "kyojo/v1/gw-1/#")
    clock = ScaledClock(T0, speed=600)  # ten simulated minutes per second
    drv: list[RampDriver] = []

    def make() -> Agent:
        drv.append(RampDriver(clock))
        return Agent(cfg, clock=clock, drivers=drv)

    _, stop, holder = run_agent_in_thread(make)
    agent = holder[0]
    wait_for(lambda: len(windows(sub.messages)) >= 3)
    fresh_mosquitto.stop()
    wait_for(lambda: not agent.publisher.stats.connected)
    queued_before = agent.pipeline.stats.messages_queued
    wait_for(lambda: agent.pipeline.stats.messages_queued >= queued_before + 3)  # keeps queueing while down
    assert outbox_depth(cfg.db_path) >= 3
    fresh_mosquitto.start()
    wait_for(lambda: agent.publisher.stats.connected)
    time.sleep(1.0)
    stop()
    wait_for(lambda: outbox_depth(cfg.db_path) == 0)
    sub.close()

    got = windows(sub.messages)
    released = sorted(got)
    assert len(released) >= 8
    # contiguous windows, none missing across the outage, each with the exact truth of the ramp
    assert released == list(range(released[0], released[-1] + 60_000, 60_000))
    truth: dict[int, list[float]] = {}
    for r in drv[0].emitted:
        truth.setdefault(int(r.ts) // 60 * 60_000, []).append(r.value)
    for start, item in got.items():
        values = truth[start]
        assert item["count"] == len(values)
        assert item["mean"] == pytest.approx(sum(values) / len(values))
        assert (item["min"], item["max"], item["last"]) == (min(values), max(values), values[-1])
    status = orjson.loads(cfg.status_path.read_bytes())
    assert status["late"] == 0
    assert status["outbox_depth"] == 0 and status["aggregates_sent_total"] >= len(released)
    assert agent.publisher.stats.disconnects >= 1


def test_restart_replays_unacknowledged_outbox(tmp_path: Path, fresh_mosquitto: Mosquitto) -> None:
    """Rows queued while no broker was reachable are sent by the next agent process, in order."""
    cfg = agent_config(tmp_path / "gw", fresh_mosquitto.port)
    conn = connect(cfg.db_path)
    consent.open_store(cfg, conn).grant("preventive-care", "p1", now=datetime.fromtimestamp(T0, tz=UTC))
    conn.close()
    fresh_mosquitto.stop()
    clock = ScaledClock(T0, speed=1200)
    _, stop, holder = run_agent_in_thread(lambda: Agent(cfg, clock=clock, drivers=[RampDriver(clock)]))
    wait_for(lambda: holder[0].pipeline.stats.messages_queued >= 4)
    stop()
    depth = outbox_depth(cfg.db_path)
    assert depth >= 5  # the consent record and the aggregates, all still queued

    fresh_mosquitto.start()
    sub = Collector(fresh_mosquitto.port, "kyojo/v1/gw-1/#")
    clock2 = ScaledClock(clock.now(), speed=1)  # the second run reads nothing new
    _, stop2, _ = run_agent_in_thread(lambda: Agent(cfg, clock=clock2, drivers=[]))
    wait_for(lambda: outbox_depth(cfg.db_path) == 0)
    stop2()
    sub.close()
    agg = [m for m in sub.messages if "/agg/" in m[0]]
    seqs = [decode_batch(t, p).seq for t, p, _ in agg]
    conn = connect(cfg.db_path)
    released = [e.body["seq"] for e in audit.entries(conn) if e.kind == "release"]
    conn.close()
    assert seqs == released  # every release, in order, exactly once
    first = next(m[0] for m in sub.messages if "/status" not in m[0])
    assert "/consent/" in first  # the consent record travels before the data relying on it


def test_refused_publish_is_set_aside_not_retried_forever(tmp_path: Path) -> None:
    """MQTT v5 tells a refused publish apart (PUBACK 0x87); the row moves to ``refused`` and is counted."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite kyojo/v1/gw-1/status\ntopic readwrite kyojo/v1/gw-1/consent/#\n")
    with Mosquitto(tmp_path / "mqtt", extra_conf=f"acl_file {acl}\n") as broker:
        cfg = agent_config(tmp_path / "gw", broker.port)
        conn = connect(cfg.db_path)
        consent.open_store(cfg, conn).grant("preventive-care", "p1", now=datetime.fromtimestamp(T0, tz=UTC))
        conn.close()
        clock = ScaledClock(T0, speed=600)
        _, stop, holder = run_agent_in_thread(lambda: Agent(cfg, clock=clock, drivers=[RampDriver(clock)]))
        wait_for(lambda: holder[0].publisher.stats.refused >= 2)
        stop()
    conn = connect(cfg.db_path)
    refused = conn.execute("SELECT topic, reason FROM refused").fetchall()
    stuck = conn.execute("SELECT count(*) FROM outbox WHERE seq IN (SELECT seq FROM refused)").fetchone()[0]
    conn.close()
    assert stuck == 0  # a refused row left the outbox: no retry loop
    assert {t for t, _ in refused} == {"kyojo/v1/gw-1/agg/health"}  # the consent record was allowed
    assert all("authori" in r.lower() for _, r in refused)
    status = orjson.loads(cfg.status_path.read_bytes())
    assert status["refused"] == len(refused)

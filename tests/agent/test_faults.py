"""Gateway faults (issue 20, section 3): a full disk and a failing publisher, each with its promise.

- Full disk: the agent keeps running; new readings are refused with a clear status (never silently); what is
  queued keeps being published; everything resumes when there is room again. The disk is filled the way SQLite
  sees it: ``PRAGMA max_page_count`` on the agent's own connection makes its writes fail with SQLITE_FULL
  ("database or disk is full"), the same error a full file system gives; filling a real file system would need a
  mount this test cannot make.
- Publisher: a round that fails other than by the network (the database, a bug) is logged, counted and retried;
  the thread never ends silently, and a publisher thread that does end makes the agent unhealthy for the systemd
  watchdog.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.db import connect
from kyojo.contract.vocab import reading
from provisioning.local import Mosquitto
from tests.agentkit import T0, Collector, agent_config, consenting_agent
from tests.kit import wait_for

pytestmark = pytest.mark.broker


def _outbox(config: object, topic: str = "%") -> int:
    conn = connect(config.db_path)  # type: ignore[attr-defined]
    try:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE topic LIKE ?", (topic,)).fetchone()[0])
    finally:
        conn.close()


def _half_hour(agent: Agent, start: float) -> None:
    for i in range(1800):
        agent._on_reading(reading("strap", "p1", "heart_rate", 60.0 + i % 30, start + i))


def test_a_full_disk_refuses_new_readings_keeps_publishing_and_recovers(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = agent_config(tmp_path / "data", fresh_mosquitto.port, gateway="gw-full")
    agent, clock = consenting_agent(config)
    collector = Collector(fresh_mosquitto.port, "kyojo/v1/gw-full/agg/#")
    try:
        _half_hour(agent, T0)
        clock.t = T0 + 1800 + 120
        agent.flush()
        queued = _outbox(config, "%/agg/%")
        assert queued > 0 and not agent.storage["full"]

        # the disk fills up: the next half hour cannot be stored, and the agent says so instead of dying
        pages = agent.conn.execute("PRAGMA page_count").fetchone()[0]
        agent.conn.execute(f"PRAGMA max_page_count = {pages}")
        _half_hour(agent, T0 + 1800)
        _half_hour(agent, T0 + 3600)
        clock.t = T0 + 3 * 3600
        agent.flush()
        status = agent.status()["storage"]
        assert status["full"] and status["readings_refused"] == 3600 and status["times_full"] == 1
        assert agent.pipeline.stats.readings == 1800  # nothing of the refused batch half-stored

        # what was queued before still leaves, every message of it
        agent.publisher.start()
        wait_for(lambda: _outbox(config) == 0, 30, "the queued messages to be published")
        wait_for(lambda: len(collector.messages) >= queued, 30, "the collector to get them")
        assert len(collector.messages) == queued

        # room again: readings are stored again, and their windows close and leave
        agent.conn.execute("PRAGMA max_page_count = 1073741823")
        _half_hour(agent, T0 + 3 * 3600)
        clock.t = T0 + 3 * 3600 + 1800 + 120
        agent.flush()
        assert not agent.storage["full"] and agent.pipeline.stats.readings == 3600
        assert agent.storage["readings_refused"] == 3600  # the count of what was refused stays
        wait_for(lambda: len(collector.messages) > queued, 30, "the new half hour to be published")
    finally:
        agent.publisher.stop()
        collector.close()
        agent.conn.close()


class Crash(BaseException):
    """Ends a thread the way nothing in the guard catches (as a bug in the guard itself would)."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash is the test's own
def test_the_publisher_survives_failing_rounds_and_the_watchdog_sees_a_dead_one(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = agent_config(tmp_path / "data", fresh_mosquitto.port, gateway="gw-pub")
    agent, clock = consenting_agent(config)
    _half_hour(agent, T0)
    clock.t = T0 + 1800 + 120
    agent.flush()
    assert _outbox(config) > 0
    pub = agent.publisher
    cloud = Collector(fresh_mosquitto.port, "kyojo/v1/gw-pub/#", client_id="cloud-gw-pub")
    settle, failures = pub._settle, [3]

    def flaky_settle(conn: sqlite3.Connection) -> None:  # the fault: the database fails three rounds in a row
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        settle(conn)

    pub._settle = flaky_settle  # type: ignore[method-assign]
    try:
        pub.start()
        agent._publisher_started = True
        wait_for(lambda: _outbox(config) == 0, 60, "the outbox to drain after the failures")
        assert pub.is_alive() and pub.stats.errors == 3 and "disk I/O error" in pub.stats.last_error
        assert agent.healthy() and agent.status()["publisher_errors"] == 3

        def crash(conn: sqlite3.Connection) -> None:
            raise Crash

        pub._settle = crash  # type: ignore[method-assign]
        wait_for(lambda: not pub.is_alive(), 30, "the publisher thread to end")
        assert not agent.healthy()  # the watchdog stops being fed: systemd restarts the agent
        assert agent.status()["publisher_alive"] is False
    finally:
        pub.stop()
        cloud.close()
        agent.conn.close()

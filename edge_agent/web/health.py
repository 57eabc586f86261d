"""The gateway's health as the household sees it: agent running, last publish, outbox depth, disk.

Read from what the agent leaves behind (``status.json``, written every commit interval, and its database), so the
web process needs no channel to the agent.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from dataclasses import dataclass

from edge_agent.config import AgentConfig

#: the agent is "running" when its status file is fresher than this many commit intervals (and 30 s)
STALE_FACTOR = 10


@dataclass(frozen=True, slots=True)
class Health:
    agent_running: bool
    status_at: float | None  # epoch s of the agent's last status
    connected: bool | None  # to the city broker
    last_publish_ms: int | None  # the broker's last acknowledgement of a release
    outbox_depth: int
    disk_free_bytes: int
    disk_total_bytes: int
    readings: int | None

    @property
    def disk_free_pct(self) -> float:
        return 100.0 * self.disk_free_bytes / self.disk_total_bytes if self.disk_total_bytes else 0.0

    @property
    def disk_low(self) -> bool:
        return self.disk_free_pct < 10.0

    @property
    def ok(self) -> bool:
        return self.agent_running and not self.disk_low


def read_health(config: AgentConfig, conn: sqlite3.Connection, now: float | None = None) -> Health:
    now = time.time() if now is None else now
    status: dict[str, object] = {}
    try:
        status = json.loads(config.status_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    at = status.get("at")
    status_at = float(at) if isinstance(at, int | float) else None
    fresh = max(30.0, STALE_FACTOR * config.store.commit_interval.total_seconds())
    running = status_at is not None and now - status_at < fresh
    row = conn.execute("SELECT max(at) FROM audit WHERE kind = 'release_acked'").fetchone()
    depth = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    try:
        usage = shutil.disk_usage(config.gateway.data_dir)
        free, total = usage.free, usage.total
    except OSError:
        free, total = 0, 0
    connected = status.get("connected")
    readings = status.get("readings")
    return Health(
        agent_running=running,
        status_at=status_at,
        connected=bool(connected) if isinstance(connected, bool) and running else None,
        last_publish_ms=None if row is None or row[0] is None else int(row[0]),
        outbox_depth=depth,
        disk_free_bytes=free,
        disk_total_bytes=total,
        readings=int(readings) if isinstance(readings, int) else None,
    )

"""Closing windows never scans the raw store for a stream that has no series (mobility on a home gateway, the
estimated health stream, ...): on a gateway with two weeks of readings that scan ran on every flush."""

from __future__ import annotations

from pathlib import Path

from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from kyojo.contract.vocab import reading
from tests.agentkit import T0, agent_config


def test_empty_streams_cost_no_scan_and_a_new_stream_is_still_closed(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path / "gw", 1883)
    conn = connect(cfg.db_path)
    p = Pipeline(conn, cfg)
    p.store([reading("hr-1", "p1", "heart_rate", 60.0 + i % 5, T0 + i) for i in range(600)])
    scans: list[str] = []
    conn.set_trace_callback(lambda sql: scans.append(sql) if "min(r.ts)" in sql else None)
    for k in range(10):
        p.close_windows(T0 + 600 + 60 * k)
    assert len(scans) == 1, scans  # the health stream's first window, once; no other stream is looked for
    assert p.stats.windows_closed >= 9
    # a stream that appears later (a plug is added) is found and closed like any other
    p.store([reading("plug-1", "home", "power", 100.0, T0 + 1200 + i) for i in range(120)])
    p.close_windows(T0 + 1500)
    assert "energy" in p._watermark
    conn.set_trace_callback(None)
    # and a pipeline opened on that database knows its streams from the series table
    assert Pipeline(conn, cfg)._streams >= {"health", "energy"}
    conn.close()

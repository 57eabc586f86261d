"""No raw health value in any log: the web app reads the raw store and the alerts, but what it logs is ids,
counts and verdicts. A distinctive raw value is planted in the store and in an alert, every page and download is
fetched with logging at DEBUG, and the value must not appear in what was logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from starlette.routing import Route

from edge_agent.db import connect
from tests.web.appkit import make_client, sign_in, site_of, write_config

RAW = 187.654321  # nobody's heart rate, so it cannot be in a log by chance


def test_no_raw_health_value_in_any_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(tmp_path)
    client = make_client(config)
    caplog.set_level(logging.DEBUG)
    token = sign_in(client)
    site = site_of(client)
    conn = connect(site.config.db_path)
    conn.execute(
        "INSERT INTO series(id, device, subject, metric, category) VALUES(1, 'hr', 'p1', 'heart_rate', 'health')"
    )
    conn.execute("INSERT INTO raw(ts, series, value) VALUES(?, 1, ?)", (1_717_200_000_000, RAW))
    attrs = {"alert_id": "a-1", "state": "open", "level": "crisis", "message": f"heart rate {RAW}", "value": RAW}
    conn.execute(
        "INSERT INTO events(id, kind, category, subject, device, ts, severity, attrs, state) "
        "VALUES('e-1', 'alert.tachycardia', 'health', 'p1', 'hr', 1717200000000, 'warning', ?, 'withheld')",
        (json.dumps(attrs),),
    )
    conn.close()
    client.post("/consent/grant", data={"csrf": token, "purpose": "preventive-care", "subject": "p1"})
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route) and "GET" in (route.methods or set()) and "{" not in route.path:
            client.get(route.path)
    client.get("/released/export.csv")
    client.get("/released/verify")
    client.post("/signin", data={"code": str(RAW), "csrf": token})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged, "expected the app to log something (sign-in, consent)"
    assert str(RAW) not in logged and "187.65" not in logged

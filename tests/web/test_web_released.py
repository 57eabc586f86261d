""" "What left my home": the timeline holds every entry ``kyojo audit`` shows, filters, verify in words (and a
tampered copy caught), CSV and the signed JSON. The releases come from the real agent (RampDriver on a scaled
clock) publishing to a real Mosquitto, as in tests/test_agent_broker.py."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from drivers.clock import ScaledClock
from edge_agent import consent
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.db import connect
from edge_agent.transparency import check_export
from kyojo.cli import app as kyojo_app
from provisioning.local import Mosquitto
from tests.agentkit import T0, Collector, RampDriver, run_agent_in_thread
from tests.kit import wait_for
from tests.web.appkit import make_client, sign_in, write_config

pytestmark = pytest.mark.broker


def _config(tmp: Path, port: int) -> Path:
    return write_config(
        tmp,
        gateway="home-rel",  # its own id: other tests' homes on the session's broker leave retained cloud state
        extra=(
            f"[mqtt]\nport = {port}\nreconnect_min = 0.1\nreconnect_max = 0.5\n\n"
            "[store]\ncommit_interval = 0.1\n\n[aggregation]\ngrace = 30\n\n"
            f"[clock]\nspeed = 600\nstart = {T0}\n"
        ),
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Path:
    """A gateway that released health summaries for p1 and energy-free: consent given at T0, the agent ran until
    the broker had acknowledged a few messages, then p1's consent was withdrawn."""
    tmp = tmp_path_factory.mktemp("released")
    path = _config(tmp, mosquitto.port)
    cfg = load_config(path)
    conn = connect(cfg.db_path)
    c = consent.open_store(cfg, conn).grant("preventive-care", "p1", now=datetime.fromtimestamp(T0, tz=UTC))
    clock = ScaledClock(T0, speed=600)

    def make() -> Agent:
        return Agent(cfg, clock=clock, drivers=[RampDriver(clock)])

    # a subscriber standing for the city: a message nobody subscribed to is answered 0x10 and stays queued (it
    # passed in the whole suite only because another test's persistent session happened to match the topics)
    cloud = Collector(mosquitto.port, "kyojo/v1/home-rel/#", client_id="cloud-home-rel")
    _, stop, _ = run_agent_in_thread(make)
    try:
        wait_for(
            lambda: conn.execute("SELECT count(*) FROM audit WHERE kind = 'release_acked'").fetchone()[0] >= 3,
            what="three releases acknowledged by the broker",
        )
    finally:
        stop()
        cloud.close()
    consent.open_store(cfg, conn).withdraw(c.id, now=datetime.fromtimestamp(clock.now(), tz=UTC))
    conn.close()
    return path


@pytest.fixture
def client(gateway: Path) -> TestClient:
    c = make_client(gateway)
    sign_in(c)
    return c


def _all_entries(path: Path) -> list[tuple[int, str, dict[str, object]]]:
    conn = sqlite3.connect(load_config(path).db_path)
    try:
        return [(int(n), str(k), json.loads(b)) for n, k, b in conn.execute("SELECT n, kind, body FROM audit")]
    finally:
        conn.close()


def _shown(client: TestClient, query: str = "") -> list[dict[str, str]]:
    """Every timeline item over all pages (following "older")."""
    items: list[dict[str, str]] = []
    url: str | None = "/released" + (f"?{query}" if query else "")
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        for m in re.finditer(
            r'<li class="[a-z]+" data-n="(\d+)" data-kind="([a-z_]+)" data-purpose="([^"]*)" '
            r'data-subject="([^"]*)">',
            page.text,
        ):
            items.append({"n": m.group(1), "kind": m.group(2), "purpose": m.group(3), "subject": m.group(4)})
        more = re.search(r'href="(/released\?[^"]*)" data-testid="older"', page.text)
        url = more.group(1).replace("&amp;", "&") if more else None
    return items


def test_nothing_is_hidden_that_kyojo_audit_shows(client: TestClient, gateway: Path) -> None:
    entries = _all_entries(gateway)
    kinds = {k for _, k, _ in entries}
    assert {"consent_given", "release", "release_acked", "consent_withdrawn"} <= kinds
    shown = _shown(client)
    assert [int(s["n"]) for s in shown] == sorted((n for n, _, _ in entries), reverse=True)  # newest first, all
    cli = CliRunner().invoke(kyojo_app, ["audit", "show", "-c", str(gateway)])
    assert cli.exit_code == 0 and len(cli.stdout.strip().splitlines()) == len(shown)
    page = client.get("/released").text
    assert "送信しました" in page and "件の健康データの要約" in page and "市 予防医療課" in page
    assert re.search(r"\d+ 件の健康データの要約 → 市 予防医療課", page)


def test_filters_per_person_and_purpose(client: TestClient, gateway: Path) -> None:
    mine = _shown(client, "person=p1")
    assert mine and all(s["subject"] == "p1" for s in mine)
    assert len(mine) == sum(1 for _, _, b in _all_entries(gateway) if b.get("subject") == "p1")
    assert _shown(client, "purpose=community-energy") == []
    assert "まだ何もありません" in client.get("/released?purpose=community-energy").text
    care = _shown(client, "purpose=preventive-care&person=p1")
    assert len(care) == len(mine)
    assert client.get("/released?purpose=nonsense").status_code == 400
    assert client.get("/released?before=x").status_code == 400
    sent = _shown(client, "show=sent")
    assert sent and {s["kind"] for s in sent} == {"release_acked"}
    assert len(sent) == sum(1 for _, k, _ in _all_entries(gateway) if k == "release_acked")
    assert {s["kind"] for s in _shown(client, "show=consent")} == {"consent_given", "consent_withdrawn"}
    assert client.get("/released?show=all-of-it").status_code == 400


def test_verify_says_intact_in_words(client: TestClient) -> None:
    page = client.get("/released/verify").text
    assert 'data-ok="true"' in page and "改ざんはありません" in page
    fragment = client.get("/released/verify", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="verdict"') and "<html" not in fragment.text


def test_verify_catches_an_edited_copy(gateway: Path, tmp_path: Path) -> None:
    data = load_config(gateway).gateway.data_dir
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("web.sqlite3*"))
    path = tmp_path / "agent.toml"
    path.write_text(gateway.read_text().replace(str(data), str(copy)))
    conn = sqlite3.connect(copy / "gateway.sqlite3")
    conn.execute("UPDATE audit SET body = replace(body, '\"items\": ', '\"items\": 1') WHERE n = 3")
    conn.commit()
    conn.close()
    c = make_client(path)
    sign_in(c)
    page = c.get("/released/verify").text
    assert 'data-ok="false"' in page and "改ざんが見つかりました" in page and "第 3 件から" in page


def test_csv_export_has_every_entry(client: TestClient, gateway: Path) -> None:
    r = client.get("/released/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    text = r.content.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    entries = _all_entries(gateway)
    assert [int(row["n"]) for row in rows] == sorted(n for n, _, _ in entries)
    assert all(json.loads(row["body"]) == dict(entries[i][2]) for i, row in enumerate(rows))
    only = list(csv.DictReader(io.StringIO(client.get("/released/export.csv?purpose=community-energy").text)))
    assert only == []


def test_signed_json_export_is_the_cli_one(client: TestClient, gateway: Path) -> None:
    doc = client.get("/released/export.json").json()
    assert check_export(doc)
    assert doc["verify"]["ok"] is True and len(doc["entries"]) == len(_all_entries(gateway))
    tampered = {**doc, "entries": doc["entries"][1:]}
    assert not check_export(tampered)
    cli = json.loads(CliRunner().invoke(kyojo_app, ["audit", "export", "-c", str(gateway)]).stdout)
    assert check_export(cli) and cli["entries"] == doc["entries"]

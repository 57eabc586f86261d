"""Dashboards as data: the committed Grafana files are exactly what cloud_ingest.analyst generates, and they
have the structure Grafana's file provisioning loads (no Grafana needed for these checks)."""

from __future__ import annotations

import json
import re

import pytest

from cloud_ingest import analyst
from kyojo.contract.vocab import METRICS, Category
from tests.kit import ROOT

DASH = ROOT / "dashboards"
PANEL_TYPES = {"timeseries", "bargauge", "geomap", "stat", "table", "barchart"}
HEALTH = {m for m, s in METRICS.items() if s.category is Category.HEALTH}


def committed() -> dict[str, dict]:  # type: ignore[type-arg]
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((DASH / "json").glob("*.json"))}


def test_committed_json_equals_generated() -> None:
    files = analyst.dashboard_files()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (DASH / "json").glob("*.json")}
    assert set(on_disk) == set(files), "run: python -m cloud_ingest.analyst generate"
    for name, text in files.items():
        assert on_disk[name] == text, f"{name} is stale: python -m cloud_ingest.analyst generate"


def test_datasource_provisioning_declares_the_uid_every_panel_uses() -> None:
    text = (DASH / "provisioning" / "datasources" / "kyojo.yaml").read_text(encoding="utf-8")
    assert re.search(r"^apiVersion: 1$", text, re.M)
    uids = re.findall(r"^\s+uid:\s*(\S+)\s*$", text, re.M)
    assert uids == [analyst.DATASOURCE_UID]
    assert re.search(r"^\s+type: influxdb$", text, re.M)
    assert re.search(r"^\s+dbName: kyojo$", text, re.M)
    assert re.search(r"^\s+version: InfluxQL$", text, re.M)
    assert "${KYOJO_INFLUX_URL}" in text and "${KYOJO_INFLUX_TOKEN}" in text  # no secret in the file
    prov = (DASH / "provisioning" / "dashboards" / "kyojo.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s+type: file$", prov, re.M) and re.search(r"^\s+path: \S+", prov, re.M)


@pytest.mark.parametrize("name", sorted(committed()))
def test_dashboard_structure(name: str) -> None:
    d = committed()[name]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["uid"].startswith("kyojo-") and len(d["uid"]) <= 40 and d["title"]
    assert set(d["time"]) == {"from", "to"}
    assert isinstance(d["templating"]["list"], list) and isinstance(d["annotations"]["list"], list)
    variables = {v["name"] for v in d["templating"]["list"]}
    for v in d["templating"]["list"]:
        assert v["type"] == "query" and v["datasource"]["uid"] == analyst.DATASOURCE_UID
        assert v["query"].startswith("SHOW TAG VALUES FROM ") and v["allValue"] == ".*"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES and p["title"]
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"} and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['id']} overlaps another"
        cells |= mine
        assert p["datasource"] == analyst.DATASOURCE
        assert p["targets"], "every panel has at least one query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == analyst.DATASOURCE_UID
            assert t["rawQuery"] is True and t["resultFormat"] in ("time_series", "table")
            q = t["query"]
            assert q.startswith("SELECT ") and "$timeFilter" in q
            assert '"gateway"' not in q and "GROUP BY *" not in q, "never rely on the gateway tag (being removed)"
            for var in re.findall(r"\$([a-z]+)\b", q):
                assert var in {"timeFilter", "subject", "instance"}
                if var != "timeFilter":
                    assert var in variables, f"${var} used but not defined"
            if "GROUP BY time(" in q and "$__interval" not in q:
                assert re.search(r"GROUP BY time\((1m|1h|1d|1w)\)", q)
        if len(p["targets"]) > 1:
            assert p["transformations"] == [{"id": "merge", "options": {}}]


def test_every_panel_is_a_canned_query_and_vice_versa() -> None:
    used = set()
    for d in committed().values():
        for p in d["panels"]:
            m = re.search(r"\(kyojo query ([\w.]+)\)$", p["description"])
            assert m, p["title"]
            q = analyst.QUERIES[m.group(1)]
            assert [t["query"] for t in p["targets"]] == list(q.statements)
            used.add(q.name)
    assert used == set(analyst.QUERIES)


def test_health_only_through_k_anonymous_rollups() -> None:
    for d in committed().values():
        for p in d["panels"]:
            for t in p["targets"]:
                sources = re.findall(r'FROM\s+("[^"]+"|/[^/]+/)', t["query"])
                names = {s.strip('"') for s in sources}
                assert not names & HEALTH, (d["uid"], p["title"])
    care = committed()["preventive-care.json"]
    for p in care["panels"]:
        for t in p["targets"]:
            assert "FROM /^community_alert_/" in t["query"] and "'preventive-care'" in t["query"]


def test_render_substitutes_macros_and_refuses_injection() -> None:
    q = analyst.QUERIES["ev.power"].statements[0]
    text = analyst.render(q, 0, 3_600_000, variables={"subject": "s-abc"})
    assert (
        "$timeFilter" not in text
        and "$__interval" not in text
        and "time >= 0ms AND time <= 3600000ms" in text
        and "/^s-abc$/" in text
    )
    assert "time(1m)" in text  # auto interval never below one minute
    with pytest.raises(ValueError, match="only a tag-value regex"):
        analyst.render(q, 0, 1, variables={"subject": "x/ OR 1=1"})
    assert analyst.auto_interval(0, 7 * 86_400_000) == "1h"


def _alerting() -> dict:  # type: ignore[type-arg]
    text = (DASH / "provisioning" / "alerting" / "kyojo.yaml").read_text(encoding="utf-8")
    return json.loads("".join(line for line in text.splitlines(keepends=True) if not line.startswith("#")))


def test_alert_rules_are_committed_generated_and_well_formed() -> None:
    """Issue 22 item 17: provisioned alert rules (gateway offline, ingest lag, rejects, stalled, spikes)."""
    from cloud_ingest.analysis.grafana import alert_rules_text

    on_disk = (DASH / "provisioning" / "alerting" / "kyojo.yaml").read_text(encoding="utf-8")
    assert on_disk == alert_rules_text(), "run: python -m cloud_ingest.analyst generate"
    doc = _alerting()
    assert doc["apiVersion"] == 1 and len(doc["groups"]) == 1
    group = doc["groups"][0]
    assert group["folder"] == "Kyojo" and group["interval"] == "1m"
    rules = group["rules"]
    assert {r["uid"] for r in rules} >= {
        "kyojo-gateways-offline",
        "kyojo-ingest-lag",
        "kyojo-rejects",
        "kyojo-ingest-stalled",
        "kyojo-energy-spike",
    }
    assert len({r["uid"] for r in rules}) == len(rules)
    statements = {
        s.replace("$subject", ".*").replace("$instance", ".*") for q in analyst.QUERIES.values() for s in q.statements
    }
    for r in rules:
        refs = {d["refId"] for d in r["data"]}
        assert r["condition"] in refs
        query = r["data"][0]
        assert query["datasourceUid"] == "kyojo-influxdb" and query["model"]["query"] in statements
        assert "$subject" not in query["model"]["query"] and "$instance" not in query["model"]["query"]
        for d in r["data"][1:]:
            assert d["datasourceUid"] == "__expr__"
            used = re.findall(r"\$([A-Z])", d["model"].get("expression", "")) or [d["model"]["expression"]]
            assert set(used) <= refs - {d["refId"]}
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", r["title"])
        assert r["annotations"]["__dashboardUid__"].startswith("kyojo-")
        assert r["labels"]["severity"] in {"warning", "critical"}


def test_every_title_has_its_japanese_beside_the_english() -> None:
    ja = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
    for d in committed().values():
        assert ja.search(d["title"]) and re.search(r"[A-Za-z]", d["title"]), d["title"]
        for p in d["panels"]:
            assert ja.search(p["title"]) and re.search(r"[A-Za-z]", p["title"]), p["title"]

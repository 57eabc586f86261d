"""The consent page: cards, grant once, one-tap withdrawal, erasure receipts, renewal, narrowing, the signed
record; and ``kyojo consent list`` (issue 22 item 4). In-process against the real app, the agent's database and
the same ConsentStore the CLI uses; the browser test (test_web_flow.py) runs the whole path with the real agent."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent import consent
from edge_agent.consent import Catalog, load_catalog
from kyojo.cli import app as kyojo_app
from kyojo.contract.vocab import Category
from kyojo.contract.wire import ErasureReceipt, receipt_topic
from kyojo.keys import load_keys, verify_signature
from tests.web.appkit import make_client, sign_in, site_of, write_config


@pytest.fixture
def home(tmp_path: Path) -> tuple[object, str, Path]:
    config = write_config(tmp_path)
    client = make_client(config)
    token = sign_in(client)
    return client, token, config


def _consents(client: object) -> list[consent.Consent]:
    with site_of(client).agent_db() as conn:  # type: ignore[arg-type]
        return consent.list_consents(conn)


def _audit_kinds(client: object) -> list[str]:
    with site_of(client).agent_db() as conn:  # type: ignore[arg-type]
        return [str(k) for (k,) in conn.execute("SELECT kind FROM audit ORDER BY n")]


def test_cards_say_who_what_how_detailed_how_long_and_why(home: tuple[object, str, Path]) -> None:
    client, _, _ = home
    page = client.get("/consent")  # type: ignore[attr-defined]
    assert page.status_code == 200
    text = page.text
    assert "予防医療アラート" in text and "地域エネルギー計画" in text and "EV エネルギー融通" in text
    assert "ごみ収集状況" not in text  # a truck's purpose is not offered to a home
    for words in ("提供先", "提供するデータ", "細かさ", "保存期間", "目的", "市 予防医療課", "2 年間", "1 分に1件"):
        assert words in text, words
    assert "心拍数・血圧・体温・SpO2 の1分ごとの要約" in text  # the catalog's own notice
    assert text.count("<h1>") == 1
    # health is per person (p1 from the config), energy once for the household
    assert 'data-testid="grant-preventive-care-p1"' in text
    assert 'data-testid="grant-community-energy-home-001"' in text


def test_grant_once_then_never_asked_again(home: tuple[object, str, Path]) -> None:
    client, token, config = home
    form = {"csrf": token, "purpose": "preventive-care", "subject": "p1"}
    r = client.post("/consent/grant", data=form)  # type: ignore[attr-defined]
    assert r.status_code == 303 and "done=granted" in r.headers["location"]
    again = client.post("/consent/grant", data=form)  # type: ignore[attr-defined]
    assert "done=already" in again.headers["location"]
    page = client.get(again.headers["location"]).text  # type: ignore[attr-defined]
    assert "すでに同意済みです" in page
    assert 'data-state="active"' in page
    cs = _consents(client)
    assert [(c.subject, c.purpose, c.status.value) for c in cs] == [("p1", "preventive-care", "active")]
    assert _audit_kinds(client) == ["consent_given"]
    # the same record the terminal sees, and the cloud's signed copy waits in the outbox
    out = CliRunner().invoke(kyojo_app, ["consent", "list", "--json", "-c", str(config)])
    assert json.loads(out.stdout)[0]["id"] == cs[0].id
    with site_of(client).agent_db() as conn:  # type: ignore[arg-type]
        topic, retain = conn.execute("SELECT topic, retain FROM outbox").fetchone()
    assert topic == f"kyojo/v1/home-001/consent/{cs[0].id}" and retain == 1


def test_refuses_unknown_purpose_or_person(home: tuple[object, str, Path]) -> None:
    client, token, _ = home
    for purpose, subject in (("ads", "p1"), ("preventive-care", "stranger"), ("community-energy", "p1")):
        r = client.post("/consent/grant", data={"csrf": token, "purpose": purpose, "subject": subject})  # type: ignore[attr-defined]
        assert r.status_code == 400, (purpose, subject)
    assert _consents(client) == []


def test_withdraw_with_one_tap_and_see_the_receipt_arrive(home: tuple[object, str, Path]) -> None:
    client, token, _ = home
    client.post("/consent/grant", data={"csrf": token, "purpose": "preventive-care", "subject": "p1"})  # type: ignore[attr-defined]
    cid = _consents(client)[0].id
    r = client.post("/consent/withdraw", data={"csrf": token, "consent": cid})  # type: ignore[attr-defined]
    assert r.status_code == 303 and "done=withdrawn" in r.headers["location"]
    page = client.get("/consent").text  # type: ignore[attr-defined]
    assert "撤回しました" in page
    assert f'data-testid="receipt-{cid}" data-state="waiting"' in page
    assert f'hx-get="/consent/{cid}/receipt"' in page  # htmx polls until the receipt comes
    assert 'data-testid="grant-preventive-care-p1"' in page  # and one can agree again
    assert _consents(client)[0].status.value == "withdrawn"
    # withdrawing twice is refused, in words
    assert client.post("/consent/withdraw", data={"csrf": token, "consent": cid}).status_code == 400  # type: ignore[attr-defined]
    # the eraser's receipt, taken by the same code the agent's publisher runs when it arrives over MQTT
    site = site_of(client)  # type: ignore[arg-type]
    keys = load_keys(site.config.gateway.data_dir)
    receipt = ErasureReceipt(
        gateway="home-001",
        consent=cid,
        subject=keys.pseudonym("preventive-care", "p1"),
        purpose="preventive-care",
        points_erased=42,
        remaining=0,
        erased_at=datetime.now(UTC),
        store="influxdb:kyojo",
    )
    with site.agent_db() as conn:
        assert site.consent_store(conn).take_receipt(receipt_topic("home-001", cid), receipt, 1) == "confirmed"
    fragment = client.get(f"/consent/{cid}/receipt", headers={"HX-Request": "true"}).text  # type: ignore[attr-defined]
    assert 'data-state="erased"' in fragment and "42 件の値を削除しました" in fragment
    assert "hx-get" not in fragment  # polling stops
    assert "42 件の値を削除しました" in client.get("/consent").text  # type: ignore[attr-defined]
    assert _audit_kinds(client) == ["consent_given", "consent_withdrawn", "erasure_receipt"]


def _changed(base: Catalog, **changes: object) -> Catalog:
    p = replace(base.purposes["preventive-care"], **changes)  # type: ignore[arg-type]
    return Catalog(base.version + 1, {**base.purposes, "preventive-care": p})


def test_a_widened_purpose_asks_again_a_narrowed_one_just_says_so(home: tuple[object, str, Path]) -> None:
    client, token, _ = home
    site = site_of(client)  # type: ignore[arg-type]
    base = load_catalog()
    client.post("/consent/grant", data={"csrf": token, "purpose": "preventive-care", "subject": "p1"})  # type: ignore[attr-defined]
    # narrowed: coarser summaries (5 min instead of 1): it applies, nothing to do
    site.catalog = _changed(base, min_window_s=300)
    page = client.get("/consent").text  # type: ignore[attr-defined]
    assert 'data-testid="narrowed-preventive-care-p1"' in page and "何もする必要はありません" in page
    assert 'data-testid="renew-btn-preventive-care-p1"' not in page
    # widened: one more category: asked again, and until then only what was agreed is shared
    site.catalog = _changed(base, categories=frozenset({Category.HEALTH, Category.ENERGY}))
    page = client.get("/consent").text  # type: ignore[attr-defined]
    assert 'data-state="renew"' in page and "改めて同意するまでは" in page
    r = client.post("/consent/grant", data={"csrf": token, "purpose": "preventive-care", "subject": "p1"})  # type: ignore[attr-defined]
    assert "done=renewed" in r.headers["location"]
    c = _consents(client)[0]
    assert c.categories == {Category.HEALTH, Category.ENERGY} and c.catalog_version == base.version + 1
    assert 'data-state="active"' in client.get("/consent").text  # type: ignore[attr-defined]
    assert _audit_kinds(client) == ["consent_given", "consent_renewed"]


def test_the_signed_record_downloads_and_verifies(home: tuple[object, str, Path]) -> None:
    client, token, _ = home
    client.post("/consent/grant", data={"csrf": token, "purpose": "community-energy", "subject": "home-001"})  # type: ignore[attr-defined]
    cid = _consents(client)[0].id
    r = client.get(f"/consent/{cid}/record.json")  # type: ignore[attr-defined]
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    doc = r.json()
    assert doc["signature_valid"] is True
    assert verify_signature(doc["public_key"], consent.canonical(doc["record"]), doc["signature"])
    assert doc["record"]["purpose"] == "community-energy" and doc["record"]["events"][0]["event"] == "given"
    assert client.get("/consent/c-000000000000/record.json").status_code == 404  # type: ignore[attr-defined]


def test_kyojo_consent_list_text_shows_renewal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    runner = CliRunner()
    granted = runner.invoke(
        kyojo_app, ["consent", "grant", "preventive-care", "--person", "p1", "--yes", "-c", str(config)]
    )
    assert granted.exit_code == 0, granted.output
    out = runner.invoke(kyojo_app, ["consent", "list", "-c", str(config)])
    assert out.exit_code == 0, out.output
    assert re.search(r"c-[0-9a-f]{12}\s+active\s+p1\s+preventive-care", out.stdout)
    assert "grant again" not in out.stdout
    wider = _changed(load_catalog(), categories=frozenset({Category.HEALTH, Category.ENERGY}))
    monkeypatch.setattr(consent, "default_catalog", lambda: wider)
    out = runner.invoke(kyojo_app, ["consent", "list", "-c", str(config)])
    assert out.exit_code == 0, out.output
    assert "(the purpose changed: grant again to renew)" in out.stdout
    doc = json.loads(runner.invoke(kyojo_app, ["consent", "list", "--json", "-c", str(config)]).stdout)
    assert doc[0]["needs_renewal"] is True


def test_a_consent_given_on_the_page_starts_on_the_agents_clock(tmp_path: Path) -> None:
    """Under a simulated [clock] (the demo, the browser tests) 'now' is the agent's clock, extrapolated from its
    last status, so the first window after a grant is released; in production it is the real time."""
    config = write_config(tmp_path, extra="[clock]\nspeed = 20\nstart = 1717200000\n")
    wall = [2_000_000_000.0]
    client = make_client(config, now=lambda: wall[0])
    site = site_of(client)
    assert site.gateway_now() == 1_717_200_000.0  # no status yet: where the agent's clock will start
    site.config.status_path.write_text(json.dumps({"at": wall[0] - 3, "clock": 1_717_200_600.0}))
    assert site.gateway_now() == pytest.approx(1_717_200_600.0 + 3 * 20)
    token = sign_in(client)
    client.post("/consent/grant", data={"csrf": token, "purpose": "preventive-care", "subject": "p1"})
    assert _consents(client)[0].given_at == int((1_717_200_600.0 + 60) * 1000)
    (tmp_path / "real").mkdir()
    plain = make_client(write_config(tmp_path / "real"), now=lambda: wall[0])
    assert site_of(plain).gateway_now() == wall[0]

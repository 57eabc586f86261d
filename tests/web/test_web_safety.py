"""The home page during a declared disaster (issue 17 section 2): the household sees that a disaster is declared,
whether their home answers the city, and can say "we are safe" or "please check on us" (with where to find
them, if they want to be found); the next status the gateway sends carries exactly that."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page

from edge_agent.config import load_config
from edge_agent.db import connect
from edge_agent.disaster import Declarations, SafetyStatus, load_city_key
from edge_agent.pipeline import Pipeline
from provisioning import pki
from tests.web.appkit import csrf_of, make_client, sign_in, write_config
from tests.webkit import WebServer, axe_violations
from tests.webkit import sign_in as browser_sign_in


def test_the_household_answers_a_declared_disaster_from_the_home_page(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace('data_dir = "', 'area = "aizu-1"\ndata_dir = "', 1))
    cfg = load_config(path)
    client = make_client(path)
    sign_in(client)
    assert 'data-testid="safety"' not in client.get("/").text  # nothing declared: no card

    ca = pki.init_ca(tmp_path / "ca")
    now = datetime.now(UTC)
    decls = Declarations(cfg.gateway.data_dir, load_city_key(ca.cert_path))
    decl = decls.take(ca.declare("aizu-1", 72, now=now).model_dump_json().encode(), now.timestamp())
    home = client.get("/").text
    assert "お住まいの地域に災害が宣言されています" in home and "市には何も知らせません" in home  # no consent yet

    Pipeline(connect(cfg.db_path), cfg).consents.grant("disaster-safety", "p1", now=now - dt.timedelta(minutes=1))
    home = client.get("/").text
    assert "30分ごとに" in home and "無事です" in home and "確認に来てほしい" in home
    token = csrf_of(home)
    sent = client.post("/safety", data={"csrf": token, "choice": "check", "contact": "会津若松市 1-2-3 山田"})
    assert sent.status_code == 303 and sent.headers["location"] == "/#safety"
    home = client.get("/").text
    assert "「確認に来てほしい」と知らせています" in home and "「無事です」と知らせています" not in home
    assert client.post("/safety", data={"choice": "safe"}).status_code == 403  # no CSRF token: refused

    status = SafetyStatus(decls, "aizu-1", 1800)
    (ev,) = status.due(now.timestamp() + 60, ["p1"], last_activity=None, power_seen=None, device="meter")
    assert ev.attrs["declaration"] == decl.id and ev.attrs["check_on_us"] is True and ev.severity == "warning"
    assert ev.attrs["contact"] == "会津若松市 1-2-3 山田" and ev.attrs["safe"] is False

    client.post("/safety", data={"csrf": token, "choice": "safe", "contact": "ignored"})
    status2 = SafetyStatus(decls, "aizu-1", 1800)
    (ev2,) = status2.due(now.timestamp() + 120, ["p1"], last_activity=None, power_seen=None, device="meter")
    assert ev2.attrs["safe"] is True and "contact" not in ev2.attrs  # only with a request to be checked on


@pytest.mark.browser
def test_the_disaster_card_on_a_phone(tmp_path: Path, phone: Page) -> None:
    """Real Chromium on a phone, in Japanese: the card comes first, its two buttons are large, pressing one says so
    in words, nothing scrolls sideways and axe-core finds nothing serious."""
    path = write_config(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace('data_dir = "', 'area = "aizu-1"\ndata_dir = "', 1))
    cfg = load_config(path)
    ca = pki.init_ca(tmp_path / "ca")
    now = datetime.now(UTC)
    Declarations(cfg.gateway.data_dir, load_city_key(ca.cert_path)).take(
        ca.declare("aizu-1", 72, now=now).model_dump_json().encode(), now.timestamp()
    )
    Pipeline(connect(cfg.db_path), cfg).consents.grant("disaster-safety", "p1", now=now - dt.timedelta(minutes=1))
    with WebServer(path) as web:
        browser_sign_in(phone, web)
        phone.goto(web.url + "/")
        card = phone.get_by_test_id("safety")
        assert "お住まいの地域に災害が宣言されています" in card.inner_text()
        first = phone.locator("main h2").first
        assert first.inner_text() == "お住まいの地域に災害が宣言されています"  # above every other card
        for label in ("無事です", "確認に来てほしい"):
            box = card.get_by_role("button", name=label).bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] >= 200, (label, box)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        assert axe_violations(phone) == []
        card.get_by_label("見つけてもらうためのお名前と住所（任意）").fill("会津若松市 1-2-3 山田")
        card.get_by_role("button", name="確認に来てほしい").click()
        phone.wait_for_url(lambda url: url.endswith("/#safety"))
        assert phone.get_by_test_id("safety-said").inner_text() == "「確認に来てほしい」と知らせています。"

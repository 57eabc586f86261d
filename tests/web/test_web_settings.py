"""Settings (language, people, invites, contacts, gateway health), the home summary, and the catalogs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edge_agent.web.templating import NAV
from kyojo.i18n import catalogs, translations
from tests.web.appkit import csrf_of, make_client, sign_in, site_of, write_config


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    c = make_client(write_config(tmp_path))
    sign_in(c)
    return c


def _token(c: TestClient) -> str:
    return csrf_of(c.get("/settings").text)


def test_gateway_health_in_words(client: TestClient) -> None:
    page = client.get("/settings").text
    assert re.search(r'data-testid="health-agent"><span class="bad">停止中', page)
    assert 'data-testid="health-outbox">0 通' in page
    assert re.search(r'data-testid="health-disk">[\d.]+ GB 中 [\d.]+ GB 空き', page)
    status = site_of(client).config.status_path
    status.write_text(json.dumps({"at": time.time(), "clock": time.time(), "connected": True, "readings": 5}))
    page = client.get("/settings").text
    assert re.search(r'data-testid="health-agent"><span class="ok">動作中', page)
    assert "接続中" in page
    home = client.get("/").text
    assert "正常に動作中" in home and "同意している目的: 0 件" in home


def test_people_get_names_that_show_everywhere(client: TestClient) -> None:
    token = _token(client)
    assert client.post("/settings/people", data={"csrf": token, "person": "p1", "name": "お父さん"}).status_code == 303
    assert client.post("/settings/people", data={"csrf": token, "name": "おばあちゃん"}).status_code == 303
    page = client.get("/settings").text
    assert 'value="お父さん"' in page and 'id="name-p2"' in page and 'value="おばあちゃん"' in page
    consent = client.get("/consent").text
    assert "はい、お父さん の分を提供します" in consent and 'data-testid="grant-preventive-care-p2"' in consent
    bad = client.post("/settings/people", data={"csrf": token, "person": "p1", "name": "   "})
    assert bad.status_code == 400 and "名前を入力してください" in bad.text


def test_contacts(client: TestClient) -> None:
    token = _token(client)
    ok = client.post(
        "/settings/contacts",
        data={"csrf": token, "name": "長男", "kind": "phone", "value": "090-1234-5678", "person": "p1"},
    )
    assert ok.status_code == 303
    bad = client.post("/settings/contacts", data={"csrf": token, "name": "x", "kind": "email", "value": "nope"})
    assert bad.status_code == 400 and "メールアドレスではありません" in bad.text
    page = client.get("/settings").text
    assert "長男 — 電話 090-1234-5678 (p1)" in page
    cid = re.search(r'name="contact" value="(\d+)"', page)
    assert cid
    assert client.post("/settings/contacts/remove", data={"csrf": token, "contact": cid.group(1)}).status_code == 303
    assert "通知先はまだありません" in client.get("/settings").text


def test_the_admin_removes_a_member_but_not_the_last_admin(client: TestClient, tmp_path: Path) -> None:
    site = site_of(client)
    member = make_client(site.config_path)
    sign_in(member, "孫", code=site.auth.new_code(role=None, made_by="user:1"))
    users = site.auth.users()
    assert [u.role.value for u in users] == ["admin", "member"]
    token = _token(client)
    assert client.post("/settings/users/remove", data={"csrf": token, "user": str(users[0].id)}).status_code == 400
    assert client.post("/settings/users/remove", data={"csrf": token, "user": str(users[1].id)}).status_code == 303
    assert member.get("/").status_code == 303  # signed out with the user


def test_every_page_renders_in_both_languages(client: TestClient) -> None:
    for lang in ("en", "ja"):
        token = csrf_of(client.get("/").text)
        client.post("/lang", data={"csrf": token, "lang": lang, "next": "/"})
        for href, _ in NAV:
            r = client.get(href)
            if r.status_code == 404:  # a page another engineer adds
                continue
            assert r.status_code == 200, (lang, href, r.text[:500])
            assert f'<html lang="{lang}">' in r.text
            assert r.text.count("<h1") == 1, href
            assert '<main id="main">' in r.text


def test_japanese_catalog_is_complete() -> None:
    assert catalogs.missing("ja") == []
    ja = translations("ja")
    assert ja.gettext("Consent") == "同意"
    assert ja.ngettext("%(num)d open alert", "%(num)d open alerts", 3) == "未対応のアラート %(num)d 件"

"""The watch-over notifier's page (``kyojo ingest notify``) in real headless Chromium, as a family member uses it on a
phone: Japanese first, the household's shared stylesheet (kyojo.style), large text and buttons that fit the screen,
no accessibility violation (axe-core), a wrong code told in words, and the double opt-in finished by opening the
link of the real mail (aiosmtpd) in the same browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from cloud_ingest.erasure import InfluxV1Admin
from cloud_ingest.notify import Mailer, Notifier, serve
from kyojo.contract.wire import FAMILY_ALPHABET
from kyojo.devstack.residents import Mailbox, body_of
from tests.webkit import axe_violations, free_port, screenshot

pytestmark = [pytest.mark.browser]

CODE = "-".join(FAMILY_ALPHABET[i : i + 4] for i in range(0, 16, 4))


@pytest.fixture
def page_url(tmp_path: Path) -> Iterator[tuple[str, Mailbox]]:
    inbox = Mailbox(tmp_path / "mail")  # the family's mail server (aiosmtpd), as in kyojo demo
    inbox.start()
    smtp_port = inbox.port
    port = free_port()
    # the page never queries the database: an address nothing listens on is enough here
    admin = InfluxV1Admin(f"http://127.0.0.1:{free_port()}", "unused")
    notifier = Notifier(
        tmp_path / "notify.sqlite3", admin, Mailer("127.0.0.1", smtp_port, "mimamori@city.example.jp"), ""
    )
    notifier.base_url = f"http://127.0.0.1:{port}"
    server = serve(notifier, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}", inbox
    finally:
        server.shutdown()
        server.server_close()
        notifier.close()
        inbox.stop()


def test_a_family_member_signs_up_on_a_phone(page_url: tuple[str, Mailbox], phone: Page) -> None:
    url, inbox = page_url
    phone.goto(url + "/")
    assert phone.locator("html").get_attribute("lang") == "ja"
    assert phone.locator("h1").inner_text() == "見守りのお知らせ（ご家族向け）"
    # the household page's stylesheet, served by the notifier itself (nothing loaded from elsewhere)
    assert phone.evaluate("getComputedStyle(document.body).fontSize") in ("18px", "19px", "20px", "21px", "22px")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on the phone
    button = phone.get_by_role("button", name="申し込む")
    box = button.bounding_box()
    assert box is not None and box["height"] >= 44 and box["width"] >= 300  # a large target for older hands
    assert axe_violations(phone) == []
    screenshot(phone, "notify-ja-phone")

    # a mistyped code: told in words, nothing mailed
    phone.get_by_label("ご家族用コード").fill("KJ7Q-M2XP")
    phone.get_by_label("メールアドレス").fill("musume@family.example.jp")
    button.click()
    alert = phone.get_by_test_id("message")
    assert "コードが正しくありません" in alert.inner_text()
    assert phone.locator("[role=alert]").count() == 1
    assert axe_violations(phone) == []
    assert inbox.summary() == []

    # the right code: the confirmation mail, whose link finishes the sign-up in the same browser
    phone.get_by_label("ご家族用コード").fill(CODE)
    phone.get_by_label("メールアドレス").fill("musume@family.example.jp")
    phone.get_by_role("button", name="申し込む").click()
    assert "確認のメールを送りました" in phone.get_by_test_id("message").inner_text()
    mail = inbox.wait_for(lambda m: True, timeout=30)
    assert mail is not None, "no confirmation mail"
    link = re.search(r"https?://\S+/confirm\?t=\S+", body_of(mail))
    assert link is not None
    phone.goto(link.group(0))
    assert "登録が完了しました" in phone.get_by_test_id("message").inner_text()
    assert axe_violations(phone) == []

    # English on one tap
    phone.goto(url + "/")
    phone.get_by_test_id("lang-switch").click()
    phone.wait_for_url(lambda u: "lang=en" in u)
    assert phone.locator("html").get_attribute("lang") == "en"
    assert phone.get_by_role("button", name="Sign up").is_visible()
    assert axe_violations(phone) == []

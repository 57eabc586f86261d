"""/alerts against a seeded home with the agent running: guideline, measured values, what to do, acknowledge."""

from __future__ import annotations

import logging
import re

import pytest
from playwright.sync_api import Browser, Page

from edge_agent import cli
from tests.webkit import Home, WebServer, axe_violations, page_screenshots, set_lang, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.broker]  # a live home needs the Mosquitto


def test_alerts_on_a_phone_in_japanese(
    seeded_home: Home, seeded_web: WebServer, phone: Page, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sign_in(phone, seeded_web)
    phone.goto(seeded_web.url + "/alerts")
    assert phone.locator("h1").count() == 1
    kinds = [a.get_attribute("data-kind") for a in phone.get_by_test_id("alert").all()]
    assert {"bp_crisis", "bp_category", "spo2_low"} <= set(kinds)
    # the open crisis comes first, with the 119 call to action; its measured value is the reading's
    first = phone.get_by_test_id("alert").first
    assert first.get_attribute("data-kind") == "bp_crisis"
    assert "119" in first.get_by_test_id("call-119").inner_text()
    assert "184" in first.get_by_test_id("measured").inner_text()
    # the crisis that passed two days ago: no emergency banner, but still says when to call 119
    passed = phone.locator('[data-kind="bp_crisis"].state-closed')
    assert passed.get_by_test_id("call-119").count() == 0
    assert "119" in passed.get_by_test_id("todo").inner_text()
    # the guideline behind the rule
    first.locator("summary").click()
    assert "ACC/AHA" in first.locator(".source").inner_text()
    # p2 gave no consent: their alert stayed home
    spo2 = phone.locator('[data-kind="spo2_low"]')
    assert spo2.count() == 1
    # per-person charts of the measurements behind the alerts (p1 blood pressure, p2 SpO2)
    phone.wait_for_function("Number(document.documentElement.getAttribute('data-charts')) >= 2")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert axe_violations(phone) == []
    # raw values are drawn by the gateway and never logged by the web app (whole numbers: a simulator's debug line
    # naming a BLE handle such as 16418403 is not a blood pressure)
    web_log = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("edge_agent.web", "uvicorn", "starlette"))
    )
    assert web_log, "the web app's own log lines are captured"
    assert not re.search(r"(?<![\d.])18[46](?![\d.])", web_log)


def test_acknowledge_is_what_kyojo_alerts_ack_does(seeded_home: Home, seeded_web: WebServer, desktop: Page) -> None:
    sign_in(desktop, seeded_web)
    set_lang(desktop, seeded_web, "en")
    desktop.goto(seeded_web.url + "/alerts?person=p1")
    assert desktop.locator("html").get_attribute("lang") == "en"
    assert {a.get_attribute("data-kind") for a in desktop.get_by_test_id("alert").all()} <= {"bp_crisis", "bp_category"}
    before = {d["alert_id"]: d["acknowledged"] for d in cli._alerts(seeded_home.config_path)}
    card = desktop.get_by_test_id("alert").filter(has=desktop.get_by_test_id("ack")).first
    alert_id = (card.get_attribute("id") or "").removeprefix("alert-")
    assert before[alert_id] is False
    card.get_by_test_id("ack").click()
    desktop.wait_for_url(f"**/alerts?person=p1#alert-{alert_id}")
    assert desktop.locator(f"#alert-{alert_id}").get_by_test_id("acked").is_visible()
    after = {d["alert_id"]: d["acknowledged"] for d in cli._alerts(seeded_home.config_path)}
    assert after[alert_id] is True  # `kyojo alerts list` sees the acknowledgement
    assert axe_violations(desktop) == []


def test_acknowledging_needs_the_csrf_token_and_a_known_alert(seeded_web: WebServer, desktop: Page) -> None:
    sign_in(desktop, seeded_web)
    no_token = desktop.request.post(seeded_web.url + "/alerts/a-0000000000000000/ack", form={"next": "/alerts"})
    assert no_token.status in (400, 403)
    desktop.goto(seeded_web.url + "/alerts")
    token = desktop.locator('meta[name="csrf-token"]').get_attribute("content")
    unknown = desktop.request.post(
        seeded_web.url + "/alerts/a-0000000000000000/ack", form={"csrf": token or "", "next": "/alerts"}
    )
    assert unknown.status == 404


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_screenshots(seeded_web: WebServer, browser: Browser, lang: str) -> None:
    """docs/img/web-alerts-<lang>-<phone|desktop>.png (written there with KYOJO_SCREENSHOTS=1)."""
    page_screenshots(
        seeded_web,
        browser,
        "/alerts",
        "web-alerts",
        lang,
        ready="Number(document.documentElement.getAttribute('data-charts')) >= 2",
    )

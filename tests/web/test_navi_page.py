"""The garbage-collection navigator's public page in real headless Chromium (Debian's, through Playwright), as a
resident opens it on a phone: Japanese first, English on one tap, large text that fits the screen, the route's
outline, their own collection point on top, and no accessibility violation (axe-core). The navigator reads the
demo truck's simulated rounds from a real InfluxDB (tests/navikit.py) and is served by uvicorn, as
``kyojo navi serve`` serves it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from cloud_ingest.navi.app import create_app
from provisioning.local import InfluxDB
from tests.navikit import ROUTE, Town, seed_town
from tests.webkit import AppServer, axe_violations, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.influx]


@pytest.fixture
def served(influxdb: InfluxDB, influx_db: str) -> Iterator[tuple[Town, AppServer]]:
    town = seed_town(influxdb, influx_db)
    nav, _ = town.navigator(town.round()[9].departed + 1)  # ten points of the round collected
    with AppServer(create_app(nav)) as server:
        yield town, server


def test_a_resident_on_a_phone_sees_todays_collection(served: tuple[Town, AppServer], phone: Page) -> None:
    town, web = served
    rnd = town.round()
    mine = rnd[12].point  # three stops ahead of the truck
    phone.goto(f"{web.url}/?point={mine}")
    assert phone.locator("html").get_attribute("lang") == "ja"
    assert phone.locator("h1").inner_text() == "ごみ収集ナビ"
    card = phone.get_by_test_id("mine")
    assert card.locator("[data-status]").get_attribute("data-status") == "on_the_way"
    assert "あと 3 か所" in card.inner_text()
    route = phone.locator(f'[data-route="{ROUTE}"]')
    assert route.locator('li[data-status="collected"]').count() == 10
    assert route.locator('li[data-status="on_the_way"]').count() == len(rnd) - 10
    assert route.locator("svg circle.d-collected").count() == 10
    assert route.locator("svg circle.mine").count() == 1
    # large text that fits the phone: no sideways scrolling, a status line of at least 18 px
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    size = phone.evaluate("parseFloat(getComputedStyle(document.querySelector('.navi-status')).fontSize)")
    assert size >= 18
    assert axe_violations(phone) == []
    screenshot(phone, "navi-ja-phone")
    # English, keeping the chosen point
    phone.get_by_test_id("lang-switch").click()
    phone.wait_for_url(lambda url: "lang=en" in url)
    assert phone.locator("html").get_attribute("lang") == "en"
    assert "Truck on its way: 3 stops away" in phone.get_by_test_id("mine").inner_text()
    assert axe_violations(phone) == []
    # tapping another point makes it "mine"
    other = route.locator(f'li[data-point="{rnd[0].point}"] a')
    other.click()
    phone.wait_for_url(lambda url: f"point={rnd[0].point}" in url)
    assert phone.get_by_test_id("mine").locator("[data-status]").get_attribute("data-status") == "collected"


def test_the_page_runs_no_script_and_loads_nothing_from_elsewhere(
    served: tuple[Town, AppServer], browser: Browser
) -> None:
    _, web = served
    ctx, page = new_page(browser, "desktop", lang="en")
    try:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(web.url + "/")
        assert page.locator("script").count() == 0
        assert requests and all(u.startswith(web.url) for u in requests)
        assert axe_violations(page) == []
        screenshot(page, "navi-ja-desktop")
    finally:
        ctx.close()

"""Every page of the app core in both languages at phone and desktop width against the live home: one <h1>,
the page's language, no serious or critical axe-core violation. With ``KYOJO_SCREENSHOTS=1`` it also writes the
README's screenshots, ``docs/img/web-<page>-<lang>-<phone|desktop>.png``."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Browser, expect

from tests.webkit import Home, WebServer, axe_violations, new_page, pair_code, screenshot, sign_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

PAGES = ["/", "/consent", "/released", "/settings"]
SAVE = os.environ.get("KYOJO_SCREENSHOTS") == "1"


def _name(path: str) -> str:
    return {"/": "home"}.get(path, path.strip("/"))


def test_pages_in_both_languages_and_sizes(home: Home, web: WebServer, browser: Browser) -> None:
    # a household that gave consents, named its people and sent something
    ctx, page = new_page(browser, "desktop")
    sign_in(page, web)
    page.goto(web.url + "/settings")
    page.locator("#name-p1").fill("お父さん")
    page.locator("form:has(#name-p1) button").click()
    page.goto(web.url + "/consent")
    page.get_by_test_id("grant-preventive-care-p1").click()
    page.get_by_test_id("grant-community-energy-home-001").click()

    def released() -> bool:
        page.goto(web.url + "/released")
        return page.locator('li[data-kind="release_acked"]').count() > 0

    wait_for("a release", released, timeout=90, interval=1.0)
    ctx.close()
    for lang in ("ja", "en"):
        for kind in ("phone", "desktop"):
            ctx, page = new_page(browser, kind, lang=lang)
            try:
                page.goto(web.url + "/signin")
                if lang == "en":
                    page.get_by_test_id("lang-switch").click()
                expect(page.locator("html")).to_have_attribute("lang", lang)
                found = axe_violations(page)
                assert not found, f"/signin {lang} {kind}: " + "\n".join(map(str, found))
                if SAVE:
                    screenshot(page, f"web-signin-{lang}-{kind}", full_page=False)
                page.locator("input[name=code]").fill(pair_code(web.config_path, member=True))
                page.locator("input[name=name]").fill("花子" if lang == "ja" else "Hanako")
                page.locator('form[action="/signin"] [type=submit]').click()
                page.wait_for_url(lambda url: "/signin" not in url)
                for path in PAGES:
                    page.goto(web.url + path)
                    if path == "/released":
                        page.get_by_test_id("verify").click()
                        expect(page.get_by_test_id("verdict")).to_have_attribute("data-ok", "true")
                    expect(page.locator("html")).to_have_attribute("lang", lang)
                    expect(page.locator("h1")).to_have_count(1)
                    found = axe_violations(page)
                    assert not found, f"{path} {lang} {kind}: " + "\n".join(map(str, found))
                    if SAVE:
                        screenshot(
                            page,
                            f"web-{_name(path)}-{lang}-{kind}",
                            full_page=kind == "desktop" and path != "/released",
                        )
            finally:
                ctx.close()

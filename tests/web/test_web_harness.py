"""The harness itself: Debian's Chromium through Playwright, axe-core, and a live home with every device reading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.webkit import Home, axe_violations, launch, new_page, wait_for

pytestmark = pytest.mark.browser

HEAD = (
    '<html lang="ja"><head><meta name="viewport" content="width=device-width, initial-scale=1">'
    "<title>テスト</title></head>"
)


def _children() -> set[int]:
    """Our process's live descendants (zombies excluded)."""
    out: set[int] = set()
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            try:
                state = Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.add(k)
                todo.append(k)
    return out


def test_phone_page_is_japanese_phone_sized_and_axe_finds_what_is_wrong(phone) -> None:  # type: ignore[no-untyped-def]
    phone.set_content(
        HEAD + "<body><main><h1>見出し</h1>"
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><button></button></main></body></html>'
    )
    assert phone.evaluate("[innerWidth, navigator.language]") == [390, "ja-JP"]
    found = {v.id for v in axe_violations(phone)}
    assert {"image-alt", "button-name"} <= found  # both critical in axe-core 4.x
    phone.set_content(HEAD + "<body><main><h1>見出し</h1><p>本文</p><button>送信</button></main></body></html>")
    assert axe_violations(phone) == []


def test_a_browser_launched_and_closed_leaves_no_process_behind(playwright_driver) -> None:  # type: ignore[no-untyped-def]
    before = _children()
    browser = launch(playwright_driver)
    ctx, page = new_page(browser, "desktop", lang="en")
    page.set_content("<p>hi</p>")
    assert page.evaluate("innerWidth") == 1280
    assert _children() - before, "chromium runs as our descendant"
    ctx.close()
    browser.close()
    wait_for("chromium's processes to exit", lambda: not (_children() - before), 15)


@pytest.mark.broker
def test_a_live_home_reads_every_device_through_its_real_driver(fresh_home: Home) -> None:
    fresh_home.wait_devices()
    st = wait_for("a connected agent", lambda: fresh_home.status().get("connected") and fresh_home.status())
    assert st["gateway"] == "home-001"
    assert not st["drivers_stopped"]

"""Issue 16's done-when path in a real browser: on a phone-sized page, in Japanese, a person signs in with the
pairing code, gives a consent, sees the first release appear in "what left my home", withdraws and sees the
city's erasure receipt arrive, verifies the log and switches language; axe-core finds nothing serious on the way.

All real: the live home of tests/webkit.py (agent, Mosquitto, Bumble straps, plug and meter emulators), the web
server under uvicorn, Debian's Chromium, and on the city's side the ingester (a subprocess) writing to a real
InfluxDB and the eraser that answers the withdrawal with its receipt."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from playwright.sync_api import Page, expect

from cloud_ingest.config import IngestSettings
from cloud_ingest.erasure import Eraser
from provisioning.local import InfluxDB, Mosquitto
from tests.agentkit import IngesterProc
from tests.webkit import HOME_ID, Home, WebServer, axe_violations, sign_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]


@pytest.fixture
def own_home(tmp_path: Path, fresh_mosquitto: Mosquitto) -> Iterator[Home]:
    """A live home on a broker of its own: the session's broker carries other tests' homes, also named home-001
    (tests/webkit.py's seeded home runs for the whole session), and the city would see two gateways of one name."""
    with Home(tmp_path / "home", fresh_mosquitto) as h:
        yield h


@pytest.fixture
def city(own_home: Home, fresh_mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str) -> Iterator[None]:
    mosquitto = fresh_mosquitto
    ingester = IngesterProc(mosquitto.port, influxdb.url, influx_db, client_id="web-flow-ingest")
    eraser = Eraser(
        IngestSettings(broker_port=mosquitto.port, influx_url=influxdb.url, influx_db=influx_db),
        client_id="web-flow-eraser",
        grace_s=1.0,
    )
    eraser.start()
    try:
        yield
    finally:
        eraser.stop()
        ingester.stop()
        clear_retained(mosquitto.port, f"kyojo/v1/{HOME_ID}/#")


def clear_retained(port: int, topic: str) -> None:
    """Delete the retained messages under ``topic`` (the city's anchor and receipts, the consent records), so
    the next test's home-001 on the session's broker does not inherit this one's cloud state."""
    got: list[str] = []
    sentinel = topic.rstrip("#") + "web-test-sentinel"
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    subscribed, done = threading.Event(), threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == sentinel:
            done.set()
        elif msg.retain:
            got.append(msg.topic)

    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        # the broker sends a subscription's retained messages before anything published after it
        client.publish(sentinel, b"", qos=1)
        assert done.wait(10)
        for t in set(got):
            client.publish(t, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def axe_clean(page: Page) -> None:
    """No serious or critical axe-core violation."""
    found = axe_violations(page)
    assert not found, "\n".join(str(v) for v in found)


def test_a_household_gives_and_withdraws_consent_and_sees_what_left(own_home: Home, city: None, phone: Page) -> None:
    with WebServer(own_home.config_path) as web:
        # 1. sign in with the one-time code, on a phone, in Japanese
        phone.goto(web.url + "/")
        expect(phone).to_have_url(web.url + "/signin")
        expect(phone.locator("html")).to_have_attribute("lang", "ja")
        axe_clean(phone)
        sign_in(phone, web)
        expect(phone.locator("h1")).to_have_text("わが家")
        axe_clean(phone)

        # 2. give a consent: preventive care for p1
        phone.get_by_role("link", name="同意").first.click()
        expect(phone.locator("h1")).to_have_text("何を、誰と共有するか")
        axe_clean(phone)
        phone.get_by_test_id("grant-preventive-care-p1").click()
        expect(phone.get_by_test_id("consent-message")).to_contain_text("同意を記録しました")
        expect(phone.get_by_test_id("row-preventive-care-p1")).to_have_attribute("data-state", "active")

        # 3. the first release appears in "what left my home" (the broker acknowledged it)
        def first_release() -> bool:
            phone.goto(web.url + "/released?purpose=preventive-care")
            return phone.locator('li[data-kind="release_acked"]').count() > 0

        wait_for("the first release in /released", first_release, timeout=90, interval=1.0)
        expect(phone.locator('li[data-kind="release"]').first).to_contain_text("件の健康データの要約 → 市 予防医療課")
        axe_clean(phone)

        # 4. withdraw with one tap; the receipt arrives on the page by itself (htmx polls)
        phone.goto(web.url + "/consent")
        phone.get_by_test_id("withdraw-preventive-care-p1").click()
        expect(phone.get_by_test_id("consent-message")).to_contain_text("撤回しました")
        receipt = phone.locator('#preventive-care [data-testid^="receipt-"]').first
        expect(receipt).to_be_visible()
        expect(receipt).to_have_attribute("data-state", "erased", timeout=90_000)
        expect(receipt).to_contain_text("削除証明")
        axe_clean(phone)

        # 5. verify the log: the verdict in words
        phone.goto(web.url + "/released")
        phone.get_by_test_id("verify").click()
        verdict = phone.get_by_test_id("verdict")
        expect(verdict).to_be_visible()
        assert verdict.get_attribute("data-ok") == "true", verdict.inner_text()
        expect(phone.get_by_test_id("verdict")).to_contain_text("改ざんはありません")
        expect(phone.locator('li[data-kind="erasure_receipt"]')).to_have_count(1)
        axe_clean(phone)

        # 6. switch language: English, remembered on the next page
        phone.get_by_test_id("lang-switch").click()
        expect(phone.locator("html")).to_have_attribute("lang", "en")
        expect(phone.locator("h1")).to_have_text("What left my home")
        phone.goto(web.url + "/settings")
        expect(phone.locator("html")).to_have_attribute("lang", "en")
        expect(phone.locator("h1")).to_have_text("Settings")
        axe_clean(phone)

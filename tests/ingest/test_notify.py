"""The watch-over notifier (issue 17 section 1): a family signs up with the household's code, confirms by mail, and
is e-mailed (a real SMTP exchange with aiosmtpd) about the watch-over events in a real InfluxDB, once each, in
Japanese, with a link that acknowledges for the whole family. A hostile gateway cannot reach another home's family,
and nobody unconfirmed is written to."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from cloud_ingest.erasure import InfluxV1Admin
from cloud_ingest.lineproto import event_lines
from cloud_ingest.notify import Mailer, Notifier, serve
from edge_agent.processors.watchover import family_code
from kyojo.contract.vocab import Category
from kyojo.contract.wire import EventBatch, EventItem, family_key
from provisioning.local import InfluxDB
from tests.kit import wait_for
from tests.webkit import free_port

pytestmark = pytest.mark.influx

T = 1_717_200_000_000  # 2024-06-01 00:00 UTC, 09:00 JST


class Inbox:
    """aiosmtpd handler: every message the notifier sends, parsed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m["To"] == address]


def text(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(msg.get_content_charset() or "utf-8")


def subject(msg: Message) -> str:
    from email.header import decode_header, make_header

    return str(make_header(decode_header(msg["Subject"])))


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    yield inbox, port
    ctl.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback test server
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def post(url: str, form: dict[str, str]) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def link(msg: Message, path: str) -> str:
    m = re.search(rf"(http://\S+{path}\?t=\S+)", text(msg))
    assert m, text(msg)
    return m.group(1)


def write_event(admin: InfluxV1Admin, gateway: str, eid: str, kind: str, at_ms: int, key: str, **attrs: Any) -> None:
    item = EventItem(
        id=eid, kind=kind, subject="s-wo", device="d-m", at=at_ms, severity=attrs.pop("severity", "warning"),
        attrs={"family_key": key, **attrs},
    )  # fmt: skip
    batch = EventBatch(
        gateway=gateway, seq=1, sent=at_ms, consent="c1", purpose="watchover-family",
        category=Category.WELLBEING, events=[item],
    )  # fmt: skip
    for line in event_lines(batch):
        admin.write(line)


def test_family_signs_up_confirms_and_is_told_once_in_japanese(
    tmp_path: Path, influxdb: InfluxDB, influx_db: str, smtp: tuple[Inbox, int]
) -> None:
    inbox, smtp_port = smtp
    admin = InfluxV1Admin(influxdb.url, influx_db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    notifier = Notifier(tmp_path / "notify.sqlite3", admin, Mailer("127.0.0.1", smtp_port, "mimamori@city.test"), base)
    server = serve(notifier, "127.0.0.1", port)
    try:
        code = family_code(tmp_path / "gateway", "h1")
        assert re.fullmatch(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){3}", code)
        key = family_key(code)

        status, page = get(base + "/")
        assert status == 200 and "ご家族用コード" in page and 'lang="ja"' in page
        status, page = post(base + "/signup", {"code": "NOT-A-CODE", "email": "x@example.jp"})
        assert status == 400 and "コードが正しくありません" in page
        # typed loosely: lower case, no dashes
        status, page = post(base + "/signup", {"code": code.lower().replace("-", ""), "email": "musume@example.jp"})
        assert status == 200 and "確認のメール" in page
        assert post(base + "/signup", {"code": code, "email": "musuko@example.jp"})[0] == 200  # never confirms
        wait_for(lambda: len(inbox.messages) == 2, what="two confirmation mails")
        (confirm,) = inbox.to("musume@example.jp")
        assert subject(confirm) == "見守りのお知らせ：登録の確認"
        status, page = get(link(confirm, "/confirm"))
        assert status == 200 and "登録が完了しました" in page
        assert notifier.stats.refused == {"bad_code": 1}

        # the gateway's absence, as the ingester wrote it, and an event of another home with no family signed up
        write_event(admin, "home-a", "wo-1", "watchover.absence", T + 3 * 3600_000, key, since_ms=T, quiet_min=180,
                    usual_hours="09,10,11")  # fmt: skip
        write_event(admin, "home-b", "wo-9", "watchover.absence", T, family_key("0000-0000-0000-0001"))
        assert notifier.poll() == 1
        assert notifier.poll() == 0  # polled again (the cursor looks back): not sent twice
        wait_for(lambda: len(inbox.messages) == 3, what="the notice")
        (notice,) = [m for m in inbox.to("musume@example.jp") if m is not confirm]
        assert inbox.to("musuko@example.jp") == [inbox.messages[1]]  # unconfirmed: only the confirmation
        body = text(notice)
        assert subject(notice) == "見守りのお知らせ：2024-06-01 09:00 JST からご自宅に動きがありません"
        assert "約3時間0分" in body and "9時台、10時台、11時台" in body and "連絡をとって" in body
        assert not re.search(r"\d\s*(W|kWh|Wh)\b", body)  # no power figure: the event carries none
        status, page = get(link(notice, "/ack"))
        assert status == 200 and "確認済みとして記録しました" in page and "JST" in page

        # a hostile gateway replays the family's key from another home: ignored, counted
        write_event(admin, "home-evil", "wo-2", "watchover.absence", T + 4 * 3600_000, key, since_ms=T)
        assert notifier.poll() == 0 and notifier.stats.foreign == 1

        # activity again: the family hears it, and that somebody acknowledged
        write_event(admin, "home-a", "wo-3", "watchover.resumed", T + 5 * 3600_000, key, since_ms=T, severity="info")
        assert notifier.poll() == 1
        wait_for(lambda: len(inbox.to("musume@example.jp")) == 3, what="the resumed notice")
        resumed = inbox.to("musume@example.jp")[-1]
        assert subject(resumed) == "見守りのお知らせ：ご自宅に動きが戻りました" and "確認済み" in text(resumed)

        # stop: nothing more
        assert get(link(resumed, "/stop"))[0] == 200
        write_event(admin, "home-a", "wo-4", "watchover.absence", T + 30 * 3600_000, key, since_ms=T + 26 * 3600_000)
        assert notifier.poll() == 0
        assert get(base + "/ack?t=forged")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        notifier.close()


def test_the_page_and_mails_speak_english_when_asked(
    tmp_path: Path, influxdb: InfluxDB, influx_db: str, smtp: tuple[Inbox, int]
) -> None:
    inbox, smtp_port = smtp
    admin = InfluxV1Admin(influxdb.url, influx_db)
    notifier = Notifier(tmp_path / "n.sqlite3", admin, Mailer("127.0.0.1", smtp_port, "m@city.test"), "http://x")
    code = family_code(tmp_path, "h2")
    notifier.signup(code, "son@example.com", "en")
    wait_for(lambda: len(inbox.messages) == 1, what="the confirmation")
    token = link(inbox.messages[0], "/confirm").split("t=")[1]
    assert notifier.confirm(token) == "en"
    write_event(admin, "home-e", "wo-e", "watchover.absence", T + 3600_000, family_key(code), since_ms=T,
                quiet_min=75, severity="urgent")  # fmt: skip
    assert notifier.poll() == 1
    wait_for(lambda: len(inbox.messages) == 2, what="the notice")
    assert subject(inbox.messages[1]) == "URGENT: Watch-over: no activity at home since 2024-06-01 00:00 UTC"
    assert "1 h 15 min" in text(inbox.messages[1])
    notifier.close()

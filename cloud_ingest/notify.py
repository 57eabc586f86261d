"""``kyojo ingest notify``: the city's watch-over notifier. It e-mails a person's family when their home has been
quiet for much longer than usual, and again when it is not (issue 17 section 1).

What it reads. Only what the ingester already accepted into InfluxDB: ``events`` under the ``watchover-family``
purpose (the ingester has checked the consent, its signature, its terms and that the purpose carries these kinds).
It polls them (``--interval``) from a cursor kept in its own SQLite store, with an overlap so a late write is not
missed; each (event, contact) is sent once.

Who it writes to. Nobody the gateway names: the family sign up themselves on the notifier's page with the family
code the household gave them (``kyojo consent family-code`` on the gateway) and their e-mail address, and confirm
by a link sent to that address (double opt-in). Events carry only ``family_key``, a one-way hash of the code
(:func:`kyojo.contract.wire.family_key`), so the gateway and the city's database never hold the family's
addresses, an analyst who sees the events cannot sign up as family, and a gateway cannot make the city e-mail
anybody who did not ask. A family key is bound to the first household (the ingester's ``household`` tag) whose
event used it: a hostile gateway copying another home's key is ignored and counted (``foreign``).

What the mails say. In the contact's language (Japanese first): since when the home has been quiet (JST), for
how long, the hours in which it is usually active, what to do (call), and a link to acknowledge; the *resumed*
notice says whether somebody acknowledged. At most ``max_per_day`` mails per contact per day.

The page (``GET /``): a sign-up form, phone-first, Japanese with English (``?lang=en``); ``/confirm``, ``/ack``
and ``/stop`` take the tokens from the mails. Stdlib HTTP server; put it behind the city's TLS proxy.
"""

from __future__ import annotations

import html
import logging
import secrets
import smtplib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cloud_ingest.erasure import InfluxV1Admin
from kyojo.contract.wire import family_key
from kyojo.i18n import local_time
from kyojo.style import CSS

log = logging.getLogger(__name__)

PURPOSE = "watchover-family"
#: a late write (a gateway catching up) is still found: the cursor looks this far back
OVERLAP_MS = 6 * 3600 * 1000
MAX_CONTACTS = 5
MAX_BODY = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts(
    id INTEGER PRIMARY KEY, family_key TEXT NOT NULL, email TEXT NOT NULL, lang TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL, confirmed_ms INTEGER, stopped_ms INTEGER,
    UNIQUE(family_key, email));
CREATE TABLE IF NOT EXISTS notices(
    event_id TEXT NOT NULL, contact_id INTEGER NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
    household TEXT NOT NULL, since_ms INTEGER, sent_ms INTEGER NOT NULL, ack_token TEXT NOT NULL UNIQUE,
    acked_ms INTEGER, PRIMARY KEY(event_id, contact_id));
CREATE TABLE IF NOT EXISTS bindings(family_key TEXT PRIMARY KEY, household TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SignupError(ValueError):
    """A sign-up that cannot be taken; ``reason`` is one of bad_code, bad_email, too_many."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Mailer:
    """Plain SMTP to the city's relay (no TLS on loopback; ``starttls`` for a relay elsewhere)."""

    host: str
    port: int
    sender: str
    starttls: bool = False
    timeout: float = 30.0

    def send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.sender, to, subject
        msg.set_content(body, charset="utf-8")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            smtp.send_message(msg)


@dataclass
class Stats:
    polls: int = 0
    sent: int = 0
    failed: int = 0
    foreign: int = 0
    unknown_family: int = 0
    signups: int = 0
    refused: dict[str, int] = field(default_factory=dict)


def _email_ok(email: str) -> bool:
    local, _, domain = email.partition("@")
    plain = not any(c.isspace() or c in "<>,;\"'" for c in email)
    return 0 < len(email) <= 254 and bool(local) and "." in domain and plain


class Notifier:
    def __init__(
        self, store: Path, admin: InfluxV1Admin, mailer: Mailer, base_url: str, *, max_per_day: int = 10
    ) -> None:
        self.admin, self.mailer, self.base_url = admin, mailer, base_url.rstrip("/")
        self.max_per_day = max_per_day
        self.stats = Stats()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(store, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _refuse(self, reason: str) -> SignupError:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        log.info("sign-up refused: %s", reason)
        return SignupError(reason)

    # -- the family's side ------------------------------------------------------------------------------------
    def signup(self, code: str, email: str, lang: str = "ja") -> None:
        """File a sign-up and mail the confirmation link (an address already confirmed gets it again)."""
        try:
            key = family_key(code)
        except ValueError:
            raise self._refuse("bad_code") from None
        email = email.strip()
        if not _email_ok(email):
            raise self._refuse("bad_email")
        lang = "en" if lang == "en" else "ja"
        now = int(time.time() * 1000)
        with self._tx() as db:
            row = db.execute("SELECT token FROM contacts WHERE family_key = ? AND email = ?", (key, email)).fetchone()
            if row is None:
                (n,) = db.execute("SELECT count(*) FROM contacts WHERE family_key = ?", (key,)).fetchone()
                if n >= MAX_CONTACTS:
                    raise self._refuse("too_many")
                token = secrets.token_urlsafe(24)
                db.execute(
                    "INSERT INTO contacts(family_key, email, lang, token, created_ms) VALUES(?, ?, ?, ?, ?)",
                    (key, email, lang, token, now),
                )
            else:
                token = row[0]
                db.execute("UPDATE contacts SET lang = ?, stopped_ms = NULL WHERE token = ?", (lang, token))
        self.stats.signups += 1
        subject, body = _confirm_mail(lang, f"{self.base_url}/confirm?t={token}")
        self.mailer.send(email, subject, body)

    def confirm(self, token: str) -> str | None:
        """The contact's language once confirmed; None for an unknown token."""
        with self._tx() as db:
            row = db.execute("SELECT lang FROM contacts WHERE token = ?", (token,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE contacts SET confirmed_ms = coalesce(confirmed_ms, ?), stopped_ms = NULL WHERE token = ?",
                (int(time.time() * 1000), token),
            )
            return str(row[0])

    def stop(self, token: str) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT lang FROM contacts WHERE token = ?", (token,)).fetchone()
            if row is not None:
                db.execute("UPDATE contacts SET stopped_ms = ? WHERE token = ?", (int(time.time() * 1000), token))
            return None if row is None else str(row[0])

    def ack(self, token: str) -> tuple[str, int] | None:
        """(language, when acknowledged, ms) for a notice's token; the first acknowledgement is kept."""
        with self._tx() as db:
            row = db.execute(
                "SELECT c.lang, n.event_id FROM notices n JOIN contacts c ON c.id = n.contact_id WHERE n.ack_token = ?",
                (token,),
            ).fetchone()
            if row is None:
                return None
            now = int(time.time() * 1000)
            # acknowledging for one of the family acknowledges the notice for all of them
            db.execute("UPDATE notices SET acked_ms = coalesce(acked_ms, ?) WHERE event_id = ?", (now, row[1]))
            (when,) = db.execute("SELECT acked_ms FROM notices WHERE ack_token = ?", (token,)).fetchone()
            return str(row[0]), int(when)

    # -- the events' side -------------------------------------------------------------------------------------
    def poll(self) -> int:
        """Mail every confirmed contact about every new watch-over event; the number of mails sent."""
        self.stats.polls += 1
        (cursor,) = self._db.execute("SELECT coalesce(max(value), 0) FROM meta WHERE key = 'cursor'").fetchone()
        since = max(0, int(cursor) - OVERLAP_MS)
        fields = '"event_id", "family_key", "quiet_min", "since_ms", "usual_hours", "kind", "severity", "household"'
        where = f"\"purpose\" = '{PURPOSE}' AND time > {since}ms"
        q = f'SELECT {fields} FROM "events" WHERE {where} ORDER BY time'  # noqa: S608 - constants and an int
        rows = [
            dict(zip(series["columns"], values, strict=True))
            for result in self.admin.query_epoch_ms(q)
            for series in result.get("series", [])
            for values in series.get("values", [])
        ]
        sent = 0
        newest = int(cursor)
        for row in rows:
            newest = max(newest, int(row["time"]))
            sent += self._notify(row)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('cursor', ?)", (newest,))
        return sent

    def _notify(self, row: dict[str, Any]) -> int:
        key, household, event_id = row.get("family_key"), str(row.get("household") or ""), str(row["event_id"])
        if not isinstance(key, str):
            return 0
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO bindings(family_key, household) VALUES(?, ?)", (key, household))
            (bound,) = db.execute("SELECT household FROM bindings WHERE family_key = ?", (key,)).fetchone()
            contacts = db.execute(
                "SELECT id, email, lang, token FROM contacts WHERE family_key = ? AND confirmed_ms IS NOT NULL "
                "AND stopped_ms IS NULL",
                (key,),
            ).fetchall()
        if bound != household:
            self.stats.foreign += 1
            log.warning("family key of another household used by %s: ignored", household)
            return 0
        if not contacts:
            self.stats.unknown_family += 1
            return 0
        sent = 0
        day_ago = int(time.time() * 1000) - 86_400_000
        for contact_id, email, lang, token in contacts:
            with self._tx() as db:
                if db.execute(
                    "SELECT 1 FROM notices WHERE event_id = ? AND contact_id = ?", (event_id, contact_id)
                ).fetchone():
                    continue
                (today,) = db.execute(
                    "SELECT count(*) FROM notices WHERE contact_id = ? AND sent_ms > ?", (contact_id, day_ago)
                ).fetchone()
                if today >= self.max_per_day:
                    continue
                acked = db.execute(
                    "SELECT max(acked_ms) FROM notices n JOIN contacts c ON c.id = n.contact_id "
                    "WHERE c.family_key = ? AND n.since_ms = ?",
                    (key, row.get("since_ms")),
                ).fetchone()[0]
            ack_token = secrets.token_urlsafe(24)
            subject, body = _notice_mail(
                lang, row, f"{self.base_url}/ack?t={ack_token}", f"{self.base_url}/stop?t={token}", acked
            )
            try:
                self.mailer.send(email, subject, body)
            except (OSError, smtplib.SMTPException) as err:
                self.stats.failed += 1
                log.warning("notice %s not sent (%s); tried again next poll", event_id, err)
                continue
            with self._tx() as db:
                db.execute(
                    "INSERT INTO notices(event_id, contact_id, kind, severity, household, since_ms, sent_ms, "
                    "ack_token) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        event_id,
                        contact_id,
                        str(row["kind"]),
                        str(row["severity"]),
                        household,
                        row.get("since_ms"),
                        int(time.time() * 1000),
                        ack_token,
                    ),
                )
            self.stats.sent += 1
            sent += 1
        return sent

    def close(self) -> None:
        self._db.close()


# -- words ------------------------------------------------------------------------------------------------------
def _at(ms: float, lang: str) -> str:
    """A time in the mail's language: JST in Japanese, UTC in English (kyojo.i18n.local_time)."""
    return local_time(datetime.fromtimestamp(ms / 1000, tz=UTC), lang)


def _confirm_mail(lang: str, link: str) -> tuple[str, str]:
    if lang == "en":
        return "Watch-over notices: please confirm", (
            "You asked to receive the city's watch-over notices for a family member.\n\n"
            f"Open this link to confirm: {link}\n\nIf you did not ask, ignore this mail: nothing will be sent.\n"
        )
    return "見守りのお知らせ：登録の確認", (
        "ご家族の見守りのお知らせの受け取りを申し込まれました。\n\n"
        f"次のリンクを開くと登録が完了します：\n{link}\n\n"
        "お心当たりがない場合は、このメールを無視してください。何も送られません。\n"
    )


def _notice_mail(lang: str, row: dict[str, Any], ack: str, stop: str, acked: int | None) -> tuple[str, str]:
    kind, severity = str(row["kind"]), str(row["severity"])
    since = row.get("since_ms")
    quiet = int(row.get("quiet_min") or 0)
    hours = [h for h in str(row.get("usual_hours") or "").split(",") if h]
    h, m = divmod(quiet, 60)
    if lang == "en":
        when = _at(since, "en") if isinstance(since, int | float) else "-"
        if kind == "watchover.resumed":
            seen = f" (acknowledged {_at(acked, 'en')})" if acked else ""
            return "Watch-over: activity again at home", (
                f"The home you watch over shows activity again, after being quiet since {when}{seen}.\n\n"
                f"Stop these notices: {stop}\n"
            )
        tag = "URGENT: " if severity == "urgent" else ""
        usual = f" It is usually active at {', '.join(f'{x}:00' for x in hours)}." if hours else ""
        return f"{tag}Watch-over: no activity at home since {when}", (
            f"The home you watch over has shown no sign of life (no change in its electricity use) since {when}, "
            f"{h} h {m} min, much longer than usual for this time of day.{usual}\n\n"
            "Please call them to check. When you have, open this link (it tells the rest of the family):\n"
            f"{ack}\n\nThis is an estimate from electricity use, not a diagnosis.\nStop these notices: {stop}\n"
        )
    when = _at(since, "ja") if isinstance(since, int | float) else "-"
    if kind == "watchover.resumed":
        seen = f"（{_at(acked, 'ja')} に確認済み）" if acked else ""
        return "見守りのお知らせ：ご自宅に動きが戻りました", (
            f"{when} から静かだったご自宅に、生活の動きが戻りました{seen}。\n\n配信の停止：{stop}\n"
        )
    tag = "【至急】" if severity == "urgent" else ""
    usual = f"ふだんは {'、'.join(f'{int(x)}時台' for x in hours)} に動きがあるご家庭です。\n" if hours else ""
    return f"{tag}見守りのお知らせ：{when} からご自宅に動きがありません", (
        f"見守っているご自宅で、{when} から約{h}時間{m}分、生活の動き（電気の使い方の変化）が見られません。"
        "この時間帯としては、ふだんよりずっと長い時間です。\n"
        f"{usual}\n"
        "念のため、ご本人に電話などで連絡をとってください。確認できたら、次のリンクを開いてください"
        "（ほかのご家族にも確認済みと伝わります）：\n"
        f"{ack}\n\n"
        "これは電気の使い方からの推定で、異常を断定するものではありません。\n"
        f"配信の停止：{stop}\n"
    )


_PAGE = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<link rel="stylesheet" href="/static/kyojo.css"></head><body>
<header class="top"><span class="brand">{brand}</span><span class="top-actions"><a href="{other}" lang="{other_lang}"
data-testid="lang-switch">{other_label}</a></span></header>
<main><h1>{title}</h1>{body}</main></body></html>"""

_WORDS = {
    "ja": {
        "title": "見守りのお知らせ（ご家族向け）",
        "brand": "共助 見守り",
        "intro": "ご本人から受け取ったご家族用コードとメールアドレスを入力してください。確認のメールが届きます。",
        "code": "ご家族用コード（例 KJ7Q-M2XP-9RT4-WZ3H）",
        "email": "メールアドレス",
        "send": "申し込む",
        "sent": "確認のメールを送りました。メールのリンクを開くと登録が完了します。",
        "confirmed": "登録が完了しました。お知らせはこのアドレスに届きます。",
        "acked": "確認済みとして記録しました（{when}）。ありがとうございました。",
        "stopped": "お知らせの配信を停止しました。",
        "unknown": "このリンクは使えません。",
        "bad_code": "コードが正しくありません。ご本人の画面に表示されたコードをご確認ください。",
        "bad_email": "メールアドレスが正しくありません。",
        "too_many": "このコードにはこれ以上登録できません（5件まで）。",
        "other": "English",
    },
    "en": {
        "title": "Watch-over notices (for family)",
        "brand": "Kyojo watch-over",
        "intro": "Enter the family code you were given and your e-mail address. We will send you a confirmation mail.",
        "code": "Family code (e.g. KJ7Q-M2XP-9RT4-WZ3H)",
        "email": "E-mail address",
        "send": "Sign up",
        "sent": "We sent you a confirmation mail. Open its link to finish.",
        "confirmed": "Done: the notices will come to this address.",
        "acked": "Recorded as acknowledged ({when}). Thank you.",
        "stopped": "The notices are stopped.",
        "unknown": "This link is not valid.",
        "bad_code": "That code is not right. Please check the code shown on their screen.",
        "bad_email": "That e-mail address is not right.",
        "too_many": "No more sign-ups for this code (at most 5).",
        "other": "日本語",
    },
}


def make_handler(notifier: Notifier) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kyojo-notify"

        def log_message(self, fmt: str, *args: Any) -> None:  # tokens are in the query: log the path only
            log.debug("%s %s", self.command, urlsplit(self.path).path)

        def _page(self, lang: str, body: str, status: int = 200) -> None:
            w = _WORDS[lang]
            other = "en" if lang == "ja" else "ja"
            doc = _PAGE.format(
                lang=lang,
                title=w["title"],
                brand=w["brand"],
                body=body,
                other=f"/?lang={other}",
                other_lang=other,
                other_label=w["other"],
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(doc)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(doc)

        def _css(self) -> None:
            doc = CSS.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/css; charset=utf-8")
            self.send_header("Content-Length", str(len(doc)))
            self.send_header("Cache-Control", "public, max-age=3600")
            self.end_headers()
            self.wfile.write(doc)

        def _msg(self, lang: str, key: str, status: int = 200, **kw: str) -> None:
            cls = "notice ok" if status < 400 else "notice error"
            text = html.escape(_WORDS[lang][key].format(**kw))
            self._page(lang, f'<p class="{cls}" role="status" data-testid="message">{text}</p>', status)

        def _form(self, lang: str, error: str | None = None, status: int = 200) -> None:
            w = _WORDS[lang]
            err = (
                f'<p class="notice error" role="alert" data-testid="message">{html.escape(w[error])}</p>'
                if error
                else ""
            )
            body = (
                f'<p class="lead">{w["intro"]}</p>{err}<form method="post" action="/signup" class="stack">'
                f'<input type="hidden" name="lang" value="{lang}">'
                f'<label for="code">{w["code"]}</label>'
                '<input id="code" name="code" required autocomplete="off" autocapitalize="characters" '
                'spellcheck="false" inputmode="text">'
                f'<label for="email">{w["email"]}</label>'
                '<input id="email" name="email" type="email" required autocomplete="email">'
                f'<button class="primary wide" type="submit">{w["send"]}</button></form>'
            )
            self._page(lang, body, status)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            lang = "en" if q.get("lang") == "en" else "ja"
            token = q.get("t", "")
            if url.path == "/":
                self._form(lang)
            elif url.path == "/static/kyojo.css":
                self._css()
            elif url.path == "/confirm":
                got = notifier.confirm(token)
                self._msg(got or lang, "confirmed") if got else self._msg(lang, "unknown", 404)
            elif url.path == "/stop":
                got = notifier.stop(token)
                self._msg(got or lang, "stopped") if got else self._msg(lang, "unknown", 404)
            elif url.path == "/ack":
                acked = notifier.ack(token)
                if acked is None:
                    self._msg(lang, "unknown", 404)
                else:
                    when = _at(acked[1], acked[0])
                    self._msg(acked[0], "acked", when=when)
            else:
                self._msg(lang, "unknown", 404)

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/signup":
                self._msg("ja", "unknown", 404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._msg("ja", "unknown", 413)
                return
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode("utf-8", "replace")).items()}
            lang = "en" if form.get("lang") == "en" else "ja"
            try:
                notifier.signup(form.get("code", ""), form.get("email", ""), lang)
            except SignupError as err:
                self._form(lang, err.reason, 400)
                return
            except (OSError, smtplib.SMTPException) as err:
                log.warning("confirmation mail not sent: %s", err)
                self._msg(lang, "unknown", 503)
                return
            self._msg(lang, "sent")

    return Handler


def serve(notifier: Notifier, host: str, port: int) -> ThreadingHTTPServer:
    """The page's server, started in a daemon thread (``shutdown()`` stops it)."""
    server = ThreadingHTTPServer((host, port), make_handler(notifier))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="notify-http", daemon=True).start()
    return server

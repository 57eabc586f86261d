"""The one door every request goes through (a plain ASGI middleware, so no page can forget it).

1. Language: the ``kyojo_lang`` cookie (``ja`` default, ``en``), put in ``scope["state"]["lang"]``.
2. Session: the ``kyojo_session`` cookie -> ``state["session"]`` (an :class:`~edge_agent.web.auth.Session`).
3. Without a session only :data:`PUBLIC` paths answer: a page request is sent to ``/signin``, anything else
   (htmx, downloads, APIs) gets 401. A stranger on the LAN sees the sign-in page and nothing else.
4. A state-changing request (anything but GET/HEAD/OPTIONS) must carry the CSRF token, as the form field ``csrf``
   or the header ``X-CSRF-Token``: the session's token once signed in, the ``kyojo_presession`` cookie's value
   before (sign-in, language). An ``Origin`` header naming another site is refused too. Refusals are 403.
   The body is read here (at most :data:`MAX_BODY` bytes) and replayed to the page unchanged.
5. Every response gets a strict Content-Security-Policy (same origin only, no inline script or style),
   ``X-Frame-Options: DENY``, ``nosniff``, ``no-referrer``; pages are not cached.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from edge_agent.web.auth import AuthStore, same_token
from kyojo.i18n import normalise

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "kyojo_session"
PRE_COOKIE = "kyojo_presession"
LANG_COOKIE = "kyojo_lang"
#: paths that answer without a session (exact, or a prefix ending in "/")
PUBLIC = ("/signin", "/lang", "/static/", "/favicon.ico")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BODY = 64 * 1024

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def is_public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:
        return {}
    return {k: m.value for k, m in jar.items()}


def cookie_header(name: str, value: str, *, max_age: int | None, secure: bool, http_only: bool = True) -> str:
    parts = [f"{name}={value}", "Path=/", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if http_only:
        parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *SECURITY_HEADERS,
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, auth: Callable[[], AuthStore], *, secure: bool) -> None:
        self.app = app
        self.auth = auth
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        cookies = _cookies(headers)
        path = str(scope.get("path", "/"))
        method = str(scope.get("method", "GET")).upper()
        state = scope.setdefault("state", {})
        state["lang"] = normalise(cookies.get(LANG_COOKIE))
        session = self.auth().session(cookies.get(SESSION_COOKIE))
        state["session"] = session
        pre = cookies.get(PRE_COOKIE, "")
        set_cookies: list[tuple[bytes, bytes]] = []
        if session is None and not pre:
            pre = secrets.token_urlsafe(24)
            set_cookies.append(
                (b"set-cookie", cookie_header(PRE_COOKIE, pre, max_age=None, secure=self.secure).encode())
            )
        state["csrf"] = session.csrf if session is not None else pre

        if session is None and not is_public(path):
            if method in SAFE_METHODS and "hx-request" not in headers:
                target = "/signin" + ("" if path == "/" else "?next=" + quote(path, safe="/"))
                await _plain(send, 303, "sign in first", [(b"location", target.encode()), *set_cookies])
            else:
                await _plain(send, 401, "sign in first", set_cookies)
            return

        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != headers.get("host", ""):
                await _plain(send, 403, "refused: the request came from another site")
                return
            body, too_big = await _read_body(receive)
            if too_big:
                await _plain(send, 413, "request too large")
                return
            token = headers.get("x-csrf-token") or _form_field(headers, body, "csrf")
            if not same_token(token, state["csrf"]):
                await _plain(send, 403, "refused: the form is out of date (CSRF token missing or wrong); reload")
                return
            receive = _replay(body)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                names = {k.lower() for k, _ in hdrs}
                hdrs += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    hdrs.append((b"cache-control", b"no-store"))
                hdrs += set_cookies
                message["headers"] = hdrs
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _form_field(headers: dict[str, str], body: bytes, name: str) -> str:
    ctype = headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        values = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get(name)
        return values[0] if values else ""
    return ""  # other bodies (JSON, multipart) must send X-CSRF-Token

"""``/signin`` (pairing code), ``/signout``, and ``/lang`` (switch language, remembered in a cookie)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent.web.auth import AuthError
from edge_agent.web.guard import LANG_COOKIE, SESSION_COOKIE, cookie_header
from edge_agent.web.site import session_of, site_of
from edge_agent.web.templating import gettext, render
from kyojo.i18n import LANGS

log = logging.getLogger(__name__)

LANG_MAX_AGE = 400 * 86_400  # browsers cap cookies at 400 days


def safe_next(value: str | None) -> str:
    """Only a path on this site (``/x``), never ``//host`` or a URL."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def signin_page(request: Request) -> Response:
    if request.state.session is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    site = site_of(request)
    return render(
        request,
        "signin.html",
        {
            "next": safe_next(request.query_params.get("next")),
            "first_run": not site.auth.has_admin(),
            "error": None,
            "locked_s": site.auth.locked_for(_client(request)),
        },
    )


async def signin(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    nxt = safe_next(str(form.get("next") or "/"))
    addr = _client(request)
    _ = gettext(request)
    try:
        user, token = site.auth.redeem(str(form.get("code") or ""), addr, str(form.get("name") or ""))
    except AuthError as err:
        log.info("sign-in refused from %s: %s", addr, err.reason)
        if err.reason == "locked":
            message = _("Too many wrong codes. Try again in %(minutes)d minutes.") % {
                "minutes": max(1, -(-err.retry_after_s // 60))
            }
        elif err.reason == "expired":
            message = _("This code has expired. Ask for a new one.")
        else:
            left = max(0, site.config.web.max_failures - site.auth.failures(addr))
            message = _("That code is not right. Attempts left: %(left)d.") % {"left": left}
        return render(
            request,
            "signin.html",
            {
                "next": nxt,
                "first_run": not site.auth.has_admin(),
                "error": message,
                "locked_s": site.auth.locked_for(addr),
            },
            status_code=429 if err.reason == "locked" else 400,
        )
    log.info("signed in: user %d (%s) from %s", user.id, user.role.value, addr)
    response = RedirectResponse(nxt, status_code=303)
    max_age = int(site.config.web.session_idle.total_seconds())
    response.headers.append(
        "set-cookie", cookie_header(SESSION_COOKIE, token, max_age=max_age, secure=site.config.web.tls is not None)
    )
    return response


async def signout(request: Request) -> Response:
    site = site_of(request)
    site.auth.sign_out(session_of(request).token_hash)
    response = RedirectResponse("/signin", status_code=303)
    response.headers.append(
        "set-cookie", cookie_header(SESSION_COOKIE, "", max_age=0, secure=site.config.web.tls is not None)
    )
    return response


async def set_lang(request: Request) -> Response:
    form = await request.form()
    lang = str(form.get("lang") or "")
    if lang not in LANGS:
        lang = "ja"
    response = RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)
    response.headers.append(
        "set-cookie",
        cookie_header(
            LANG_COOKIE, lang, max_age=LANG_MAX_AGE, secure=site_of(request).config.web.tls is not None, http_only=False
        ),
    )
    return response


routes: list[BaseRoute] = [
    Route("/signin", signin_page, methods=["GET"]),
    Route("/signin", signin, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
    Route("/lang", set_lang, methods=["POST"]),
]

"""Jinja2 with gettext: one environment per language, the Babel catalogs of :mod:`kyojo.i18n` installed.

Pages call :func:`render`; templates mark text with ``{% trans %}`` / ``{{ _("...") }}`` and get ``csrf_field()``,
``csrf_token``, ``lang``, ``user``, ``nav`` (the menu) and ``path``. Python code marks text with :func:`gettext`
(``_ = gettext(request)``). Times are shown in the gateway's local time zone (:func:`local_time`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from kyojo.i18n import LANGS, translations

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")


def _noop(text: str) -> str:
    return text


#: marks a message id for extraction without translating it here (e.g. :data:`NAV`)
N_ = _noop

#: the menu: (path, message id); pages of other engineers are listed here too
NAV: tuple[tuple[str, str], ...] = (
    ("/", N_("Home")),
    ("/devices", N_("Devices")),
    ("/consent", N_("Consent")),
    ("/released", N_("What left my home")),
    ("/alerts", N_("Alerts")),
    ("/energy", N_("Energy")),
    ("/trades", N_("Energy trades")),
    ("/settings", N_("Settings")),
)
#: menu entries shown only when their predicate says so (a page module registers its own, e.g. ``/trades`` only
#: for a household that has or had an energy-trading consent)
NAV_WHEN: dict[str, Callable[[Request], bool]] = {}


def nav_of(request: Request) -> list[tuple[str, str]]:
    """The menu for this request: :data:`NAV` without the entries whose :data:`NAV_WHEN` predicate is false."""
    return [(href, label) for href, label in NAV if href not in NAV_WHEN or NAV_WHEN[href](request)]


@cache
def environment(lang: str) -> Environment:
    """The Jinja2 environment of one language (cached; templates are compiled once per language)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "xml"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
    env.globals["vendor"] = vendor_assets()
    env.filters["local_time"] = local_time
    env.filters["local_date"] = local_date
    return env


def gettext(request: Request) -> Callable[[str], str]:
    """``_ = gettext(request)``: translate into the request's language."""
    return translations(str(getattr(request.state, "lang", "ja"))).gettext


def local_time(ms: int | float | None) -> str:
    """Epoch ms -> ``2024-06-01 09:00`` in the gateway's time zone."""
    if ms is None:
        return "—"
    return datetime.fromtimestamp(float(ms) / 1000, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M")


def local_date(ms: int | float | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(float(ms) / 1000, tz=UTC).astimezone().strftime("%Y-%m-%d")


@cache
def vendor_assets() -> dict[str, bool]:
    """Which vendored scripts are present (``static/vendor/``): htmx, uPlot."""
    vendor = STATIC / "vendor"
    return {
        "htmx": (vendor / "htmx.min.js").exists(),
        "uplot": (vendor / "uPlot.iife.min.js").exists(),
    }


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    """Render ``templates/<name>`` in the request's language."""
    lang = str(getattr(request.state, "lang", "ja"))
    if lang not in LANGS:
        lang = "ja"
    token = str(getattr(request.state, "csrf", ""))
    session = getattr(request.state, "session", None)

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="csrf" value="{}">').format(escape(token))

    ctx: dict[str, Any] = {
        "request": request,
        "lang": lang,
        "csrf_token": token,
        "csrf_field": csrf_field,
        "user": None if session is None else session.user,
        "nav": nav_of(request) if session is not None else NAV,
        "path": request.url.path,
        "other_lang": "en" if lang == "ja" else "ja",
    }
    ctx.update(context or {})
    html = environment(lang).get_template(name).render(ctx)
    return HTMLResponse(html, status_code=status_code)

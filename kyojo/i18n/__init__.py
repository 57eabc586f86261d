"""Kyojo's translations: gettext catalogs (Babel ``.po`` files) for Japanese (the default) and English.

A leaf package (stdlib + babel) so that the web app and, later, the CLI share one set of catalogs. Message ids
are the English text; ``locale/ja/LC_MESSAGES/kyojo.po`` translates every one of them (a test extracts every
marked string of the web app and fails on one without a Japanese translation); ``locale/en/...`` exists so
English wording can differ from the id where it needs to.

The ``.po`` files are the source of truth and are compiled in memory on first use (no ``.mo`` build step):
:func:`translations` returns a :class:`gettext.GNUTranslations` per language, cached for the process.
"""

from __future__ import annotations

import gettext
import io
import os
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Final

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

__all__ = [
    "DEFAULT",
    "DOMAIN",
    "LANGS",
    "catalog_path",
    "from_env",
    "gettext_for",
    "local_time",
    "normalise",
    "translations",
]

#: the languages Kyojo speaks, the default first
LANGS: Final = ("ja", "en")
DEFAULT: Final = "ja"
DOMAIN: Final = "kyojo"


def normalise(value: str | None) -> str:
    """``"en"``, ``"en-US"``, ``"en_GB.UTF-8"`` -> ``"en"``; anything unknown or missing -> the default."""
    if not value:
        return DEFAULT
    lang = value.strip().lower().replace("_", "-").split("-", 1)[0].split(".", 1)[0]
    return lang if lang in LANGS else DEFAULT


def catalog_path(lang: str) -> str:
    """Where a language's ``.po`` catalog lives in the package (relative to :mod:`kyojo.i18n`)."""
    return f"locale/{lang}/LC_MESSAGES/{DOMAIN}.po"


@cache
def translations(lang: str) -> gettext.GNUTranslations:
    """The compiled catalog of ``lang`` (one of :data:`LANGS`), cached."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; Kyojo speaks {', '.join(LANGS)}")
    text = resources.files(__name__).joinpath(catalog_path(lang)).read_bytes()
    catalog = read_po(io.BytesIO(text), locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def gettext_for(lang: str) -> gettext.GNUTranslations:
    """:func:`translations` for a possibly unnormalised language tag."""
    return translations(normalise(lang))


def from_env(explicit: str | None = None) -> str:
    """A command's language: ``--lang`` when given, else ``LC_ALL``/``LANG``; Japanese when it says so, English
    otherwise (unlike :func:`normalise`, a terminal that says nothing is spoken to in English)."""
    value = explicit or os.environ.get("LC_ALL") or os.environ.get("LANG") or "en"
    return "ja" if value.lower().startswith("ja") else "en"


def local_time(at: datetime, lang: str, *, seconds: bool = False) -> str:
    """A time as a household reads it: JST (and said so) in Japanese, UTC in English."""
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    if lang == "ja":
        from zoneinfo import ZoneInfo

        return at.astimezone(ZoneInfo("Asia/Tokyo")).strftime(fmt + " JST")
    return at.astimezone(UTC).strftime(fmt + " UTC")

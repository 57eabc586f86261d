"""Keeping the catalogs in step with the code (developers only; the running app needs :mod:`kyojo.i18n`).

``python -m kyojo.i18n.catalogs update`` extracts every marked string of the web app and the household CLI
(Python: ``_``, ``N_``, ``gettext``, ``ngettext``; templates: ``{% trans %}``, ``_()``, ``ngettext()``), adds
new ids to each language's ``.po`` (keeping existing translations, marking vanished ids obsolete) and lists what
still needs a Japanese translation. ``python -m kyojo.i18n.catalogs check`` exits 1 when anything is untranslated
in Japanese.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir, extract_from_file
from babel.messages.pofile import read_po, write_po

from kyojo.i18n import DOMAIN, LANGS, catalog_path

ROOT = Path(__file__).resolve().parents[2]
#: the packages (and single modules) whose strings are Kyojo's to translate: the web app and the household CLI
SOURCES = (
    "edge_agent/web",
    "edge_agent/cli.py",
    "edge_agent/audit.py",
    "drivers/ble/pair.py",
    "cloud_ingest/navi",
)
METHODS = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
OPTIONS = {
    "**/templates/**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"},
}
KEYWORDS = {"_": None, "_t": None, "N_": None, "gettext": None, "ngettext": (1, 2)}
HERE = Path(__file__).resolve().parent
FIXED = datetime(2026, 1, 1, tzinfo=UTC)


def extract(sources: Iterable[str] = SOURCES) -> Catalog:
    """Every marked string of ``sources`` (paths relative to the repository)."""
    cat = Catalog(domain=DOMAIN, project="kyojo", charset="utf-8")
    for src in sources:
        if (ROOT / src).is_file():
            for lineno, message, comments, context in extract_from_file(
                "python", str(ROOT / src), keywords=KEYWORDS, strip_comment_tags=True
            ):
                cat.add(message, None, [(src, lineno)], auto_comments=comments, context=context)
            continue
        for filename, lineno, message, comments, context in extract_from_dir(
            str(ROOT / src), method_map=METHODS, options_map=OPTIONS, keywords=KEYWORDS, strip_comment_tags=True
        ):
            cat.add(message, None, [(f"{src}/{filename}", lineno)], auto_comments=comments, context=context)
    return cat


def load(lang: str) -> Catalog:
    path = HERE / catalog_path(lang)
    if not path.exists():
        return Catalog(locale=lang, domain=DOMAIN, project="kyojo", charset="utf-8")
    with path.open("rb") as fh:
        return read_po(fh, locale=lang, domain=DOMAIN)


def save(lang: str, cat: Catalog) -> None:
    """Write a catalog with a stable header (no dates), so updates by several people merge cleanly."""
    cat.fuzzy = False  # a fuzzy header would be left out of the compiled catalog, and Plural-Forms with it
    cat.creation_date = FIXED
    cat.revision_date = FIXED
    cat.last_translator = "Kyojo developers"
    cat.language_team = f"{lang} <kyojo>"
    cat.version = "1"
    cat.copyright_holder = "Kyojo developers"
    cat.msgid_bugs_address = "issues"
    path = HERE / catalog_path(lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        write_po(fh, cat, width=120, sort_output=True, ignore_obsolete=True, include_lineno=False)


def missing(lang: str, template: Catalog | None = None) -> list[str]:
    """Ids of ``template`` (default: a fresh extraction) without a translation in ``lang`` (fuzzy counts as none)."""
    template = template or extract()
    cat = load(lang)
    out = []
    for msg in template:
        if not msg.id:
            continue
        have = cat.get(msg.id, context=msg.context)
        strings = have.string if have is not None else None
        empty = not strings or (isinstance(strings, tuple | list) and not all(strings))
        if have is None or empty or have.fuzzy:
            out.append(msg.id if isinstance(msg.id, str) else msg.id[0])
    return out


def update(langs: Iterable[str] = LANGS) -> dict[str, list[str]]:
    """Merge a fresh extraction into each catalog; returns the ids each language still lacks."""
    template = extract()
    todo: dict[str, list[str]] = {}
    for lang in langs:
        cat = load(lang)
        cat.update(template, no_fuzzy_matching=True)
        save(lang, cat)
        todo[lang] = missing(lang, template)
    return todo


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "check"
    if cmd == "update":
        for lang, ids in update().items():
            print(f"{lang}: {len(ids)} untranslated")
        return 0
    if cmd == "check":
        ids = missing("ja")
        for i in ids:
            print(f"ja: untranslated: {i!r}")
        return 1 if ids else 0
    print("usage: python -m kyojo.i18n.catalogs update|check")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

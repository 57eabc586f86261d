"""What a purpose means, in words a household reads: the consent page and ``kyojo consent`` say the same.

Strings are marked with ``N_`` for the catalogs (``python -m kyojo.i18n.catalogs update``); the caller passes its
``gettext`` as ``_``. No web framework here, so the CLI can use it.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from edge_agent import consent
from edge_agent.config import AgentConfig, Profile
from edge_agent.consent import Consent, Purpose
from edge_agent.web import household
from kyojo.contract.vocab import Category


def N_(text: str) -> str:
    """Marks a message for the catalogs (translated where it is shown)."""
    return text


#: what a plug may power: (appliance id, as the energy page and the appliance models know it; name for people).
#: The home page offers these; ``kyojo pair plugs --appliance`` takes the id or the name in either language.
APPLIANCES: tuple[tuple[str, str], ...] = (
    ("kettle", N_("Electric kettle")),
    ("washing_machine", N_("Washing machine")),
    ("fridge", N_("Fridge")),
    ("tv", N_("TV")),
    ("rice_cooker", N_("Rice cooker")),
    ("microwave", N_("Microwave")),
    ("air_conditioner", N_("Air conditioner")),
    ("other", N_("Something else")),
)
#: appliance ids (the plug's, as the config or the page named it) -> names for people
APPLIANCE_NAMES: dict[str, str] = {**dict(APPLIANCES), "washer": N_("Washing machine")}
#: more words households use for an appliance, besides its id and its name in Japanese and English (NFKC, casefolded)
APPLIANCE_WORDS: dict[str, tuple[str, ...]] = {
    "kettle": ("ケトル", "ポット", "電気ポット", "やかん", "kettle"),
    "washing_machine": ("洗濯機", "せんたくき", "washer"),
    "fridge": ("れいぞうこ", "refrigerator"),
    "tv": ("television", "てれび"),
    "rice_cooker": ("すいはんき",),
    "microwave": ("レンジ", "でんしれんじ"),
    "air_conditioner": ("クーラー", "aircon"),
}


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def appliance_of(text: str, taken: Collection[str], ja: Callable[[str], str]) -> tuple[str, str | None]:
    """What a household typed for a plug's appliance -> (appliance id, its display name or None).

    A known appliance by its id or name in either language (``ja`` is the Japanese catalog's gettext) gets its id
    and keeps the household's word as the display name when it is not the id: ``"ケトル"`` -> ``("kettle",
    "ケトル")``. Any other identifier is taken as the id (``"kitchen_kettle"``); anything else (``"こたつ"``,
    ``"Grandma's heater"``) becomes the next free ``other-<n>`` with the text as its display name, as on the page.
    """
    clean = " ".join(unicodedata.normalize("NFKC", text).split())
    key = clean.casefold()
    for app_id, name in APPLIANCES:
        if app_id == "other":
            continue
        words = {app_id, app_id.replace("_", " "), _fold(name), _fold(ja(name)), *APPLIANCE_WORDS.get(app_id, ())}
        if key in words:
            return app_id, None if clean == app_id else clean
    from drivers.plugs.pairing import valid_appliance

    if valid_appliance(clean):
        return clean, None
    return next(f"other-{i}" for i in range(1, 10_000) if f"other-{i}" not in taken), clean


#: what each category means to a household
CATEGORY_WORDS = {
    Category.HEALTH: N_("summaries of vital signs (heart rate, blood pressure, temperature, blood oxygen, glucose)"),
    Category.ENERGY: N_("summaries of your home's electricity use (whole home and each plug)"),
    Category.EV: N_("summaries of your electric car's charging (power, energy, battery level)"),
    Category.MOBILITY: N_("the vehicle's position and stops"),
    Category.WELLBEING: N_("a notice when your home has been quiet for much longer than usual, and when it is not"),
    Category.DEVICE: N_("device housekeeping (battery level)"),
}
#: names in the shipped catalog that have a Japanese rendering (unknown names are shown as they are)
CATALOG_NAMES = (
    N_("City Preventive Care Office"),
    N_("City Energy Planning Office"),
    N_("City Mobility and Energy Office"),
    N_("City Sanitation Bureau"),
    N_("City Welfare Office"),
    N_("City Disaster Management Office"),
    N_("the family contacts you named"),
    N_("City data platform, InfluxDB, Japan"),
    N_("JP (APPI)"),
    N_("the trading counterparties (pseudonyms only)"),
    N_("City data platform, PostgreSQL, Japan"),
)
#: which purposes a gateway of each profile offers
PROFILE_CATEGORIES = {
    Profile.HOME: {Category.HEALTH, Category.ENERGY, Category.EV, Category.WELLBEING},
    Profile.TRUCK: {Category.MOBILITY},
    Profile.CHARGING_SITE: {Category.EV, Category.ENERGY},
}
PER_PERSON = {Category.HEALTH}


def subject_ok(
    purpose: Purpose, subject: str, config: AgentConfig, web: sqlite3.Connection, agent: sqlite3.Connection | None
) -> bool:
    """A purpose about people (health) is given for a person the home knows; one about the home (energy, EV) for
    the household, whose id is the gateway's."""
    if purpose.categories & PER_PERSON:
        return subject in {p.id for p in household.people(web, config, agent)}
    return subject == config.gateway.id


def retention_words(days: int, _: Any) -> str:
    if days % 365 == 0:
        return str(_("%(n)d year(s)") % {"n": days // 365})
    return str(_("%(n)d days") % {"n": days})


def granularity_words(seconds: int, _: Any) -> str:
    if seconds % 60 == 0:
        return str(_("at most one summary every %(n)d minute(s)") % {"n": seconds // 60})
    return str(_("at most one summary every %(n)d seconds") % {"n": seconds})


def notice_lines(purpose: Purpose, lang: str, _: Callable[[str], str]) -> list[str]:
    """The notice of a purpose as the CLI prints it before asking (the consent page's card, in lines)."""
    words: Any = _
    return [
        f"{purpose.title[lang]} ({purpose.name})",
        f"  {_('Who receives it')}: {', '.join(words(r) for r in purpose.recipients)}",
        f"  {_('What')}: {'; '.join(words(CATEGORY_WORDS[c]) for c in sorted(purpose.categories))}",
        f"  {_('How detailed')}: {granularity_words(purpose.min_window_s, words)}",
        f"  {_('How long it is kept')}: {retention_words(purpose.retention_days, words)} "
        f"({words(purpose.storage_location)})",
        f"  {_('Why')}: {purpose.notice[lang]}",
        f"  {_('Withdrawing')}: {purpose.withdrawal_method[lang]}",
    ]


@dataclass
class Receipt:
    state: str  # waiting | erased | incomplete
    at: str | None = None
    points: int | None = None
    remaining: int | None = None


def receipt_of(conn: Any, c: Consent) -> Receipt:
    """What the cloud said about erasing a withdrawn or expired consent's data."""
    evs = consent.events(conn, c.id)
    for e in reversed(evs):
        if e["event"] == "erased":
            return Receipt("erased", e.get("erased_at"), e.get("points_erased"), 0)
        if e["event"] == "erasure_incomplete":
            return Receipt("incomplete", e.get("erased_at"), e.get("points_erased"), e.get("remaining"))
    return Receipt("waiting")


def receipt_words(receipt: Receipt, _: Callable[[str], str]) -> str:
    """The receipt as the CLI says it (the consent page renders the same :class:`Receipt`)."""
    if receipt.state == "erased":
        return _("erased by the city (%(n)s points), receipt received") % {"n": receipt.points}
    if receipt.state == "incomplete":
        return _("the city could not erase everything yet (%(n)s left); it tries again") % {"n": receipt.remaining}
    return _("waiting for the city's receipt (it arrives when the gateway is online)")

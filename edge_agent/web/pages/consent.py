"""``/consent``: the purpose catalog as cards, grant once, withdraw with one tap, erasure receipts, the signed record.

Everything goes through :class:`edge_agent.consent.ConsentStore` (what ``kyojo consent grant|withdraw`` use), so
once-only, renewal when a purpose widened, the cloud's copy in the outbox and the audit entries are the same as
from the terminal. A purpose about people (health) is given per person; one about the home (energy, EV) once for
the household.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent import consent
from edge_agent.consent import Catalog, Consent, ConsentError, Purpose
from edge_agent.web import household
from edge_agent.web.site import Site, lang_of, site_of
from edge_agent.web.templating import gettext, render
from edge_agent.web.wording import (
    CATEGORY_WORDS,
    PER_PERSON,
    PROFILE_CATEGORIES,
    Receipt,
    granularity_words,
    receipt_of,
    retention_words,
    subject_ok,
)
from kyojo.contract.vocab import Category
from kyojo.contract.wire import ConsentStatus
from kyojo.keys import load_keys, verify_signature

log = logging.getLogger(__name__)


@dataclass
class Past:
    consent: Consent
    receipt: Receipt


@dataclass
class Row:
    """One purpose for one person (or the household)."""

    subject: str
    label: str
    active: Consent | None
    state: str  # none | active | renew | narrowed
    past: list[Past] = field(default_factory=list)


@dataclass
class Card:
    purpose: Purpose
    rows: list[Row]
    what: list[str]
    per_person: bool


def offered(site: Site, cat: Catalog) -> list[Purpose]:
    cats = PROFILE_CATEGORIES.get(site.config.gateway.profile, set(Category))
    return [p for p in cat.purposes.values() if p.categories & cats]


def build_cards(site: Site, conn: Any) -> list[Card]:
    cat = site.catalog
    people = household.people(site.web_db, site.config, conn)
    all_consents = consent.list_consents(conn)
    gw = site.config.gateway.id
    cards = []
    for purpose in offered(site, cat):
        per_person = bool(purpose.categories & PER_PERSON)
        subjects = [(p.id, p.label) for p in people] if per_person else [(gw, "")]
        rows = []
        for sid, label in subjects:
            mine = [c for c in all_consents if c.subject == sid and c.purpose == purpose.name]
            active = next((c for c in mine if c.status is ConsentStatus.ACTIVE), None)
            state = "none"
            if active is not None:
                state = "renew" if active.needs_renewal(cat) else "narrowed" if active.narrowed(cat) else "active"
            past = [Past(c, receipt_of(conn, c)) for c in reversed(mine) if c.status is not ConsentStatus.ACTIVE]
            rows.append(Row(sid, label, active, state, past))
        what = [CATEGORY_WORDS[c] for c in sorted(purpose.categories)]
        cards.append(Card(purpose, rows, what, per_person))
    return cards


def _context(request: Request, **extra: Any) -> dict[str, Any]:
    site = site_of(request)
    _ = gettext(request)
    with site.agent_db() as conn:
        cards = build_cards(site, conn)
    return {
        "cards": cards,
        "retention": lambda d: retention_words(d, _),
        "granularity": lambda s: granularity_words(s, _),
        "catalog_version": site.catalog.version,
        "message": None,
        "error": None,
        **extra,
    }


async def consent_page(request: Request) -> Response:
    done = request.query_params.get("done")
    _ = gettext(request)
    messages = {
        "granted": _("Thank you. Your consent is recorded; it covers every present and future device."),
        "renewed": _("Thank you. Your consent now covers the purpose as it is today."),
        "already": _("You already agreed to this. Nothing more to do: you are never asked twice."),
        "withdrawn": _("Withdrawn. Nothing more is sent for it, and the city has been asked to erase what it holds."),
    }
    return render(request, "consent.html", _context(request, message=messages.get(done or "")))


def _valid_subject(site: Site, purpose: Purpose, subject: str, conn: Any) -> bool:
    return subject_ok(purpose, subject, site.config, site.web_db, conn)


async def grant(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    _ = gettext(request)
    name, subject = str(form.get("purpose") or ""), str(form.get("subject") or "")
    purpose = site.catalog.purposes.get(name)
    with site.agent_db() as conn:
        if purpose is None or not _valid_subject(site, purpose, subject, conn):
            return render(
                request, "consent.html", _context(request, error=_("Unknown purpose or person.")), status_code=400
            )
        store = site.consent_store(conn)
        before = {c.id: c for c in consent.list_consents(conn, include_inactive=False)}
        now = datetime.fromtimestamp(site.gateway_now(), tz=UTC)
        try:
            c = store.grant(name, subject, now=now, by="household (web)", lang=lang_of(request))
        except ConsentError as err:
            return render(request, "consent.html", _context(request, error=str(err)), status_code=400)
    old = before.get(c.id)
    done = "granted" if old is None else "renewed" if old.catalog_version != c.catalog_version else "already"
    log.info("consent %s: %s for purpose %s", c.id, done, name)
    return RedirectResponse(f"/consent?done={done}#{name}", status_code=303)


async def withdraw(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    _ = gettext(request)
    cid = str(form.get("consent") or "")
    with site.agent_db() as conn:
        try:
            c = consent.get_consent(conn, cid)
            now = datetime.fromtimestamp(max(site.gateway_now(), c.given_at / 1000), tz=UTC)
            dropped = site.consent_store(conn).withdraw(cid, now=now, by="household (web)")
        except ConsentError:
            return render(
                request, "consent.html", _context(request, error=_("This consent is not active.")), status_code=400
            )
    log.info("consent %s withdrawn from the web page; %d queued message(s) dropped", cid, dropped)
    return RedirectResponse(f"/consent?done=withdrawn#{c.purpose}", status_code=303)


async def record(request: Request) -> Response:
    """The signed record, as ``kyojo consent show --json`` prints it (with the gateway's public key)."""
    site = site_of(request)
    cid = request.path_params["cid"]
    with site.agent_db() as conn:
        try:
            signed = consent.signed_record(conn, cid)
        except ConsentError:
            return Response("no such consent", status_code=404, media_type="text/plain")
    keys = load_keys(site.config.gateway.data_dir)
    ok = verify_signature(keys.public_key_b64(), consent.canonical(signed["record"]), signed["signature"])
    doc = {**signed, "public_key": keys.public_key_b64(), "signature_valid": ok}
    body = json.dumps(doc, ensure_ascii=False, indent=2).encode()
    return Response(
        body,
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="kyojo-consent-{cid}.json"'},
    )


async def receipt_fragment(request: Request) -> Response:
    """The receipt line of one withdrawn consent (htmx polls it until the receipt arrives)."""
    site = site_of(request)
    cid = request.path_params["cid"]
    with site.agent_db() as conn:
        try:
            c = consent.get_consent(conn, cid)
        except ConsentError:
            return Response("no such consent", status_code=404, media_type="text/plain")
        past = Past(c, receipt_of(conn, c))
    return render(request, "consent_receipt.html", {"past": past})


routes: list[BaseRoute] = [
    Route("/consent", consent_page, methods=["GET"]),
    Route("/consent/grant", grant, methods=["POST"]),
    Route("/consent/withdraw", withdraw, methods=["POST"]),
    Route("/consent/{cid}/record.json", record, methods=["GET"]),
    Route("/consent/{cid}/receipt", receipt_fragment, methods=["GET"]),
]

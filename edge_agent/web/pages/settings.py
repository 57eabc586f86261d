"""``/settings``: language, people in the home, who may sign in (invites), notification contacts, gateway health."""

from __future__ import annotations

import contextlib
import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent.web import household
from edge_agent.web.auth import AuthError, Role, format_code
from edge_agent.web.health import read_health
from edge_agent.web.household import HouseholdError
from edge_agent.web.site import session_of, site_of
from edge_agent.web.templating import gettext, render

log = logging.getLogger(__name__)


def _page(request: Request, *, status_code: int = 200, **extra: object) -> Response:
    site = site_of(request)
    with site.agent_db() as conn:
        people = household.people(site.web_db, site.config, conn)
        health = read_health(site.config, conn, site.now())
    return render(
        request,
        "settings.html",
        {
            "people": people,
            "contacts": household.contacts(site.web_db),
            "users": site.auth.users(),
            "health": health,
            "me": session_of(request).user,
            "invite_code": None,
            "error": None,
            "saved": None,
            **extra,
        },
        status_code=status_code,
    )


async def settings_page(request: Request) -> Response:
    return _page(request)


async def invite(request: Request) -> Response:
    """An admin makes a one-time code for another person of the home (shown once, on this page)."""
    site = site_of(request)
    me = session_of(request).user
    _ = gettext(request)
    if not me.is_admin:
        return _page(request, status_code=403, error=_("Only the person who looks after this page can invite."))
    form = await request.form()
    role = Role.ADMIN if form.get("role") == "admin" else Role.MEMBER
    code = site.auth.new_code(role=role, made_by=f"user:{me.id}")
    log.info("invite code made by user %d (%s)", me.id, role.value)
    return _page(request, invite_code=format_code(code), invite_role=role.value)


async def remove_user(request: Request) -> Response:
    site = site_of(request)
    me = session_of(request).user
    _ = gettext(request)
    form = await request.form()
    try:
        site.auth.remove_user(int(str(form.get("user") or "0")), by=me)
    except (AuthError, ValueError) as err:
        reason = getattr(err, "reason", "")
        msg = _("The last admin cannot be removed.") if reason == "last_admin" else _("Not allowed.")
        return _page(request, status_code=403 if reason == "not_admin" else 400, error=msg)
    return RedirectResponse("/settings#users", status_code=303)


async def name_person(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    _ = gettext(request)
    try:
        person = str(form.get("person") or "")
        if person:
            household.set_name(site.web_db, person, str(form.get("name") or ""))
        else:
            with site.agent_db() as conn:
                household.add_person(site.web_db, site.config, str(form.get("name") or ""), conn)
    except HouseholdError as err:
        return _page(request, status_code=400, error=_("Could not save: %(why)s") % {"why": _(str(err))})
    return RedirectResponse("/settings#people", status_code=303)


async def add_contact(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    _ = gettext(request)
    person = str(form.get("person") or "") or None
    try:
        household.add_contact(
            site.web_db, str(form.get("name") or ""), str(form.get("kind") or ""), str(form.get("value") or ""), person
        )
    except HouseholdError as err:
        return _page(request, status_code=400, error=_("Could not save: %(why)s") % {"why": _(str(err))})
    return RedirectResponse("/settings#contacts", status_code=303)


async def remove_contact(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    with contextlib.suppress(ValueError):
        household.remove_contact(site.web_db, int(str(form.get("contact") or "0")))
    return RedirectResponse("/settings#contacts", status_code=303)


routes: list[BaseRoute] = [
    Route("/settings", settings_page, methods=["GET"]),
    Route("/settings/invite", invite, methods=["POST"]),
    Route("/settings/users/remove", remove_user, methods=["POST"]),
    Route("/settings/people", name_person, methods=["POST"]),
    Route("/settings/contacts", add_contact, methods=["POST"]),
    Route("/settings/contacts/remove", remove_contact, methods=["POST"]),
]

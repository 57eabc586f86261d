"""``/``: the home page — a summary of everything else, each card linking to its page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent import consent
from edge_agent.disaster import Declarations, press, read_press
from edge_agent.web import household
from edge_agent.web.health import read_health
from edge_agent.web.pages.consent import offered
from edge_agent.web.site import site_of
from edge_agent.web.templating import render
from kyojo.contract.wire import ConsentStatus


async def home(request: Request) -> Response:
    site = site_of(request)
    with site.agent_db() as conn:
        consents = consent.list_consents(conn)
        people = household.people(site.web_db, site.config, conn)
        health = read_health(site.config, conn, site.now())
        last = conn.execute(
            "SELECT at, body FROM audit WHERE kind = 'release_acked' ORDER BY n DESC LIMIT 1"
        ).fetchone()
        open_alerts = int(
            conn.execute(
                "SELECT count(DISTINCT json_extract(attrs, '$.alert_id')) FROM events e "
                "WHERE kind LIKE 'alert.%' AND json_extract(attrs, '$.state') = 'open' AND ts = ("
                "SELECT max(ts) FROM events f WHERE json_extract(f.attrs, '$.alert_id') = "
                "json_extract(e.attrs, '$.alert_id'))"
            ).fetchone()[0]
        )
        acked = {str(a) for (a,) in conn.execute("SELECT alert_id FROM alert_acks")}
    cat = site.catalog
    active = [c for c in consents if c.status is ConsentStatus.ACTIVE]
    data_dir = site.config.gateway.data_dir
    disaster = Declarations(data_dir, None).active(site.config.gateway.area, site.now())
    answering = any(c.purpose == "disaster-safety" for c in active)
    pressed = read_press(data_dir) if disaster is not None else {}
    pressed_at = pressed.get("at")
    if disaster is None or not isinstance(pressed_at, int | float) or pressed_at < disaster.issued_at.timestamp():
        pressed = {}
    renew = [c for c in active if c.needs_renewal(cat)]
    return render(
        request,
        "home.html",
        {
            "people": people,
            "active": len(active),
            "renew": len(renew),
            "purposes": len(offered(site, cat)),
            "last_release_ms": None if last is None else int(last[0]),
            "health": health,
            "open_alerts": open_alerts,
            "acked": len(acked),
            "disaster": disaster,
            "answering": answering,
            "pressed": pressed,
        },
    )


async def safety(request: Request) -> Response:
    """The household's "we are safe" / "please check on us" while a disaster is declared (edge_agent.disaster)."""
    site = site_of(request)
    form = await request.form()
    choice = str(form.get("choice") or "")
    contact = str(form.get("contact") or "")[:200]
    if choice in ("safe", "check"):
        press(
            site.config.gateway.data_dir,
            safe=choice == "safe",
            check_on_us=choice == "check",
            now=site.now(),
            contact=contact if choice == "check" else None,
        )
    return RedirectResponse("/#safety", status_code=303)


routes: list[BaseRoute] = [Route("/", home, methods=["GET"]), Route("/safety", safety, methods=["POST"])]

"""``/released``: what left my home — the audit log as a readable timeline, a verify button, CSV and signed JSON.

Every entry ``kyojo audit show`` prints is here, newest first, 50 to a page (``before=<n>`` pages back), each
with its number so nothing can be silently left out; filters narrow it to one person or one purpose, as
``kyojo audit show --purpose`` does. "Verify" runs :func:`edge_agent.audit.verify` on the gateway (the hash chain,
the gateway's counters and the cloud's anchor) and says the verdict in words.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge_agent import audit
from edge_agent.audit import Entry
from edge_agent.transparency import export_log
from edge_agent.web import household
from edge_agent.web.site import Site, lang_of, site_of
from edge_agent.web.templating import N_, gettext, local_time, render
from kyojo.contract.vocab import KyojoError

log = logging.getLogger(__name__)

PAGE = 50

KIND_WORDS = {
    "release": N_("Queued to send"),
    "release_acked": N_("Sent"),
    "release_dropped": N_("Deleted without sending"),
    "release_refused": N_("Refused by the city's broker"),
    "consent_given": N_("Consent given"),
    "consent_renewed": N_("Consent renewed"),
    "consent_withdrawn": N_("Consent withdrawn"),
    "consent_expired": N_("Consent expired"),
    "erasure_receipt": N_("The city confirmed erasure"),
    "erasure_incomplete": N_("The city reports data remains after erasure"),
}
CATEGORY_WORDS = {
    "health": N_("health summaries"),
    "energy": N_("electricity summaries"),
    "ev": N_("EV charging summaries"),
    "mobility": N_("vehicle positions"),
    "wellbeing": N_("watch-over notices"),
}
REASON_WORDS = {
    "outbox_full": N_("the send queue was full"),
    "consent_withdrawn": N_("consent was withdrawn"),
    "consent_expired": N_("consent expired"),
}
KIND_CLASS = {
    "release": "queued",
    "release_acked": "sent",
    "release_dropped": "dropped",
    "release_refused": "dropped",
}


class FilterError(KyojoError, ValueError):
    """A filter value the page does not offer."""


#: the "show" filter: which kinds of entry (None: every entry)
SHOW = {
    "sent": ("release_acked",),
    "consent": (
        "consent_given",
        "consent_renewed",
        "consent_withdrawn",
        "consent_expired",
        "erasure_receipt",
        "erasure_incomplete",
    ),
}
SHOW_WORDS = {"sent": N_("what reached the city"), "consent": N_("consents and erasures")}


@dataclass(frozen=True, slots=True)
class Filters:
    person: str | None
    purpose: str | None
    before: int | None
    show: str | None = None

    def sql(self) -> tuple[str, list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if self.person:
            where.append("json_extract(body, '$.subject') = ?")
            args.append(self.person)
        if self.purpose:
            where.append("json_extract(body, '$.purpose') = ?")
            args.append(self.purpose)
        if self.before is not None:
            where.append("n < ?")
            args.append(self.before)
        if self.show:
            kinds = SHOW[self.show]
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        return (" WHERE " + " AND ".join(where)) if where else "", args

    def query(self, **override: Any) -> str:
        from urllib.parse import urlencode

        values = {"person": self.person, "purpose": self.purpose, "show": self.show, "before": self.before, **override}
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def filters_of(request: Request, site: Site) -> Filters:
    q = request.query_params
    person = q.get("person") or None
    purpose = q.get("purpose") or None
    before_text = q.get("before") or None
    if purpose is not None and purpose not in site.catalog.purposes:
        raise FilterError(f"unknown purpose {purpose!r}")
    show = q.get("show") or None
    if show is not None and show not in SHOW:
        raise FilterError(f"unknown choice {show!r}")
    try:
        before = None if before_text is None else int(before_text)
    except ValueError as err:
        raise FilterError("before must be an entry number") from err
    return Filters(person, purpose, before, show)


def _rows(conn: sqlite3.Connection, f: Filters, limit: int | None) -> Iterator[Entry]:
    where, args = f.sql()
    sql = f"SELECT n, at, kind, body, prev, hash FROM audit{where} ORDER BY n DESC"  # noqa: S608 - fixed fragments
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    for n, at, kind, body, prev, digest in conn.execute(sql, args):
        yield Entry(int(n), int(at), str(kind), json.loads(body), str(prev), str(digest))


def words(e: Entry, _: Any, names: dict[str, str], titles: dict[str, str]) -> dict[str, Any]:
    """One entry in the household's words (and every fact the log holds, for the details)."""
    b = e.body
    subject = str(b.get("subject", ""))
    items = b.get("items")
    releases = b.get("releases") or []
    what = ""
    if e.kind == "release":
        kind_of = _(CATEGORY_WORDS.get(str(b.get("category")), str(b.get("category"))))
        if "events" in b:
            what = _("%(n)d events (%(kinds)s) to %(to)s") % {
                "n": items or 0,
                "kinds": ", ".join(b.get("events", [])),
                "to": _(str(b.get("recipient", ""))),
            }
        else:
            what = _("%(n)d %(what)s to %(to)s") % {"n": items or 0, "what": kind_of, "to": _(str(b.get("recipient")))}
    elif e.kind == "release_acked":
        what = _("%(m)d message(s) with %(n)d values reached the city") % {"m": len(releases), "n": items or 0}
    elif e.kind == "release_dropped":
        reason = str(b.get("reason", ""))
        what = _("%(m)d message(s) with %(n)d values: %(why)s") % {
            "m": len(releases),
            "n": items or 0,
            "why": _(REASON_WORDS.get(reason, reason)),
        }
    elif e.kind == "release_refused":
        what = _("%(m)d message(s) with %(n)d values (%(why)s)") % {
            "m": len(releases),
            "n": items or 0,
            "why": str(b.get("reason", "")),
        }
    elif e.kind in ("erasure_receipt", "erasure_incomplete"):
        r = b.get("receipt", {})
        what = _("%(n)d values erased, %(left)d remain") % {
            "n": r.get("points_erased", 0),
            "left": r.get("remaining", 0),
        }
    seqs = [r.get("seq") for r in releases] if releases else ([b["seq"]] if "seq" in b else [])
    return {
        "n": e.n,
        "at": e.at,
        "kind": e.kind,
        "css": KIND_CLASS.get(e.kind, "consent"),
        "title": _(KIND_WORDS.get(e.kind, e.kind)),
        "what": what,
        "purpose": str(b.get("purpose", "")),
        "purpose_title": titles.get(str(b.get("purpose", "")), str(b.get("purpose", ""))),
        "subject": subject,
        "person": names.get(subject) or subject,
        "items": items if isinstance(items, int) else None,
        "consent": b.get("consent"),
        "seqs": seqs,
        "hash": e.hash,
        "body": json.dumps(b, ensure_ascii=False, sort_keys=True),
    }


def _names(site: Site, conn: sqlite3.Connection, _: Any) -> dict[str, str]:
    names = {p.id: p.label for p in household.people(site.web_db, site.config, conn)}
    names[site.config.gateway.id] = _("the household")
    return names


def _titles(site: Site, lang: str) -> dict[str, str]:
    return {name: p.title.get(lang) or p.title.get("en", name) for name, p in site.catalog.purposes.items()}


def _verdict_words(v: audit.Verdict, _: Any) -> dict[str, Any]:
    if v.ok:
        headline = _("Intact: all %(n)d entries check out, each one sealed to the one before it.") % {"n": v.entries}
        if v.anchor is None:
            detail = _("The city has not confirmed a copy yet, so this was checked against the gateway's own counters.")
        else:
            detail = _("It also matches what the city holds: entry %(n)d, as the city saw it on %(when)s.") % {
                "n": v.anchor["n"],
                "when": v.anchor["seen_at"][:16].replace("T", " "),
            }
    else:
        headline = _("Not intact: the log was changed after it was written.")
        where = _("From entry %(n)d: ") % {"n": v.first_bad} if v.first_bad is not None else ""
        detail = where + v.reason
    return {"ok": v.ok, "headline": headline, "detail": detail, "head": v.head, "entries": v.entries}


def _page_context(request: Request, *, verdict: audit.Verdict | None = None) -> tuple[dict[str, Any], int]:
    site = site_of(request)
    _ = gettext(request)
    try:
        f = filters_of(request, site)
    except FilterError as err:
        f = Filters(None, None, None)
        error: str | None = str(err)
    else:
        error = None
    with site.agent_db() as conn:
        names = _names(site, conn, _)
        titles = _titles(site, lang_of(request))
        rows = [words(e, _, names, titles) for e in _rows(conn, f, PAGE + 1)]
        total = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
        people = household.people(site.web_db, site.config, conn)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return {
        "rows": rows,
        "filters": f,
        "more_query": f.query(before=rows[-1]["n"]) if more and rows else None,
        "newest_query": f.query(before=None),
        "export_query": f.query(before=None),
        "people": people,
        "gateway_id": site.config.gateway.id,
        "purposes": titles,
        "shows": {k: gettext(request)(v) for k, v in SHOW_WORDS.items()},
        "total": total,
        "verdict": None if verdict is None else _verdict_words(verdict, _),
        "error": error,
    }, (400 if error else 200)


async def released_page(request: Request) -> Response:
    ctx, status = _page_context(request)
    return render(request, "released.html", ctx, status_code=status)


async def verify(request: Request) -> Response:
    """Check the chain on the gateway now (read-only: a GET) and say the verdict."""
    site = site_of(request)
    with site.agent_db() as conn:
        verdict = audit.verify(conn)
    log.info("audit verify from the web page: ok=%s entries=%d", verdict.ok, verdict.entries)
    if request.headers.get("hx-request"):
        return render(request, "released_verdict.html", {"verdict": _verdict_words(verdict, gettext(request))})
    ctx, status = _page_context(request, verdict=verdict)
    return render(request, "released.html", ctx, status_code=status)


CSV_FIELDS = ["n", "time_utc", "kind", "what", "purpose", "person", "items", "consent", "seq", "hash", "body"]


async def export_csv(request: Request) -> Response:
    site = site_of(request)
    _ = gettext(request)
    f = filters_of(request, site)
    f = Filters(f.person, f.purpose, None, f.show)
    with site.agent_db() as conn:
        names = _names(site, conn, _)
        titles = _titles(site, lang_of(request))
        rows = [words(e, _, names, titles) for e in _rows(conn, f, None)]
    buf = io.StringIO()
    buf.write("\ufeff")  # so a spreadsheet opens the Japanese text as UTF-8
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in reversed(rows):  # oldest first, as `kyojo audit show`
        when = datetime.fromtimestamp(r["at"] / 1000, tz=UTC).isoformat()
        w.writerow(
            [
                r["n"],
                when,
                r["kind"],
                f"{r['title']}: {r['what']}" if r["what"] else r["title"],
                r["purpose"],
                r["subject"],
                "" if r["items"] is None else r["items"],
                r["consent"] or "",
                " ".join(str(s) for s in r["seqs"]),
                r["hash"],
                r["body"],
            ]
        )
    return Response(
        buf.getvalue().encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="kyojo-what-left-my-home.csv"'},
    )


async def export_json(request: Request) -> Response:
    """The signed export, exactly as ``kyojo audit export`` writes it."""
    site = site_of(request)
    with site.agent_db() as conn:
        doc = export_log(site.config, conn)
    body = json.dumps(doc, ensure_ascii=False, indent=2).encode()

    def chunks() -> Iterator[bytes]:
        yield body

    return StreamingResponse(
        chunks(),
        media_type="application/json",
        headers={"content-disposition": 'attachment; filename="kyojo-audit-export.json"'},
    )


__all__ = ["local_time", "routes"]

routes: list[BaseRoute] = [
    Route("/released", released_page, methods=["GET"]),
    Route("/released/verify", verify, methods=["GET"]),
    Route("/released/export.csv", export_csv, methods=["GET"]),
    Route("/released/export.json", export_json, methods=["GET"]),
]

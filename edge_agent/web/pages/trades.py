"""``/trades``: the household's neighbour energy trades — its own entries on the city's ledger, in words, checked.

In the menu only for a household that has (or had) an ``energy-trading`` consent. With ``[trading] ledger_url`` the
gateway reads the household's entries from the city's read API (a request signed with its trading key, a short
timeout; a failure is said in words, counted in ``site.counts`` and logged) and checks them
(:mod:`edge_agent.ledger_check`): each offer, bid and meter report the home sent must be there unchanged, every
entry must match its seal, the city's entries must carry the signature of a ledger key the city CA certified. The
page shows the token balance and each entry, newest first, with its ledger number, and flags in words what does
not check out. Without ``ledger_url`` it says so and shows only what the home itself sent, from its audit log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edge_agent import ledger_check, trading
from edge_agent.consent import list_consents
from edge_agent.ledger_check import Checked, Finding, LedgerAnswer, LedgerEntry, LedgerUnavailable, Sent
from edge_agent.web.site import Site, site_of
from edge_agent.web.templating import N_, NAV_WHEN, gettext, render
from kyojo.contract.wire import SLOT_S, TRADING_PURPOSE
from kyojo.keys import load_keys

log = logging.getLogger(__name__)

JST = timezone(timedelta(hours=9))
#: the account that mints delivered tokens (cloud_ingest.ledger.market.DELIVERY; the gateway does not import the
#: cloud's code, and the read API's settlements name it as it is)
DELIVERY = "delivery"

STATE_WORDS = {
    "queued": N_("waiting to be sent"),
    "sent": N_("sent"),
    "dropped": N_("deleted without sending"),
    "refused": N_("refused by the city's broker"),
}
UNAVAILABLE_WORDS = {
    "unreachable": N_(
        "The city's ledger could not be reached just now, so your entries cannot be shown. "
        "Your home's own record is below."
    ),
    "refused": N_(
        "The city's ledger did not accept your home's request (your home may not have joined yet, or its clock "
        "is off). Your home's own record is below."
    ),
    "bad_answer": N_("The city's ledger gave an answer the gateway could not read. Your home's own record is below."),
}

Tr = Callable[[str], str]


def trading_consents(site: Site) -> int:
    """How many energy-trading consents this household has or had."""
    with site.agent_db() as conn:
        return sum(
            1
            for c in list_consents(conn, include_inactive=True)
            if c.purpose == TRADING_PURPOSE and c.subject == site.config.gateway.id
        )


def _shown_in_menu(request: Request) -> bool:
    try:
        return trading_consents(site_of(request)) > 0
    except Exception:  # the menu never fails a page; the page itself says what is wrong
        log.exception("trades: cannot read the consents for the menu")
        return False


NAV_WHEN["/trades"] = _shown_in_menu


def kwh(wh: int) -> str:
    """Watt-hours as kWh for people: ``2500`` -> ``2.5``, ``1800`` -> ``1.8``, ``0`` -> ``0``."""
    text = f"{wh / 1000:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def slot_words(slot: Any) -> str:
    """A slot's start (UTC epoch seconds) as ``2026-06-01 10:00–10:30`` in Japan time."""
    start = datetime.fromtimestamp(int(slot), tz=JST)
    end = start + timedelta(seconds=SLOT_S)
    return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M}"


def _at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(JST).strftime("%Y-%m-%d %H:%M")


def message_words(kind: str, m: dict[str, Any] | None, _: Tr) -> str:
    """What a household's own message says (an offer, a bid, a meter report, an enrollment)."""
    if kind == "enroll":
        return _("Joining the neighbour trading ledger")
    if m is None:
        return _("A trading message (sent before the gateway kept a copy)")
    args = {"kwh": kwh(int(m.get("wh", 0))), "price": m.get("price"), "slot": slot_words(m.get("slot", 0))}
    if kind == "offer":
        return _("Offered %(kwh)s kWh at %(price)s yen/kWh or more for %(slot)s") % args
    if kind == "bid":
        return _("Bid for %(kwh)s kWh at up to %(price)s yen/kWh for %(slot)s") % args
    if m.get("direction") == "export":
        return _("Meter: %(kwh)s kWh sent out to the grid in %(slot)s") % args
    return _("Meter: %(kwh)s kWh taken from the grid in %(slot)s") % args


def entry_words(e: LedgerEntry, account: str, _: Tr) -> tuple[str, int]:
    """An entry in words, and what it did to the household's tokens (Wh, + received, - given)."""
    b = e.body
    if e.kind == "join":
        return _("Joined the neighbour trading ledger"), 0
    if e.kind == "leave":
        return _("Left the neighbour trading ledger"), 0
    if e.kind in ("offer", "bid", "meter"):
        return message_words(e.kind, b, _), 0
    if e.kind == "match":
        pairs = [p for p in b.get("pairs", []) if isinstance(p, dict)]
        sold = sum(int(p.get("wh", 0)) for p in pairs if p.get("seller") == account)
        bought = sum(int(p.get("wh", 0)) for p in pairs if p.get("buyer") == account)
        args = {"slot": slot_words(b.get("slot", 0)), "price": b.get("price")}
        parts = []
        if sold:
            parts.append(
                _("Sold %(kwh)s kWh in the clearing at %(price)s yen/kWh for %(slot)s") % {**args, "kwh": kwh(sold)}
            )
        if bought:
            parts.append(
                _("Bought %(kwh)s kWh in the clearing at %(price)s yen/kWh for %(slot)s") % {**args, "kwh": kwh(bought)}
            )
        return (" / ".join(parts) or _("Cleared %(slot)s: nothing matched for you") % args), 0
    if e.kind == "settle":
        change = 0
        delivered = 0
        for t in b.get("transfers", []):
            frm, to, wh = str(t[0]), str(t[1]), int(t[2])
            change += wh if to == account else -wh if frm == account else 0
            if account in (frm, to) and DELIVERY not in (frm, to):
                delivered += wh
        words = _("Settled %(slot)s: %(kwh)s kWh delivered as tokens") % {
            "slot": slot_words(b.get("slot", 0)),
            "kwh": kwh(delivered),
        }
        return words, change
    return e.kind, 0


def finding_words(f: Finding, _: Tr) -> str:
    """A finding in words (what the household should know)."""
    if f.cause == "missing" and f.sent is not None:
        what = message_words(f.sent.kind, f.sent.message, _)
        return _("The ledger does not show this message your home sent at %(at)s: %(what)s.") % {
            "at": _at(f.sent.at_ms),
            "what": what,
        }
    if f.cause == "altered" and f.sent is not None:
        return _(
            "The ledger shows this message your home sent at %(at)s differently. Your home sent: %(sent)s. "
            "Entry %(seq)s says: %(shown)s."
        ) % {
            "at": _at(f.sent.at_ms),
            "sent": message_words(f.sent.kind, f.sent.message, _),
            "seq": f.seq,
            "shown": message_words(f.sent.kind, f.shown, _),
        }
    if f.cause == "not_yours":
        return _("Entry %(seq)s is under your name but your home did not sign it.") % {"seq": f.seq}
    if f.cause == "seal":
        return _("Entry %(seq)s does not match its own seal: it was changed after it was written.") % {"seq": f.seq}
    if f.cause == "city_signature":
        return _("Entry %(seq)s is not signed by the city's certified ledger key.") % {"seq": f.seq}
    if f.cause == "ledger_key":
        return _("The ledger's key is not certified by the city authority your gateway trusts (entry %(seq)s).") % {
            "seq": f.seq
        }
    return f.cause


def _safe_finding(f: Finding, _: Tr) -> str:
    try:
        return finding_words(f, _)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, OSError):  # the ledger's body is unreadable
        return _("Entry %(seq)s does not match what your home sent.") % {"seq": f.seq}


def _ledger_rows(answer: LedgerAnswer, checked: Checked, _: Tr) -> list[dict[str, Any]]:
    flagged = {f.seq for f in checked.findings if f.seq is not None}
    rows = []
    for e in sorted(answer.entries, key=lambda e: e.seq, reverse=True):
        try:
            what, change = entry_words(e, answer.account, _)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, OSError):
            what, change = _("An entry the gateway could not read (%(kind)s)") % {"kind": e.kind[:40]}, 0
        if e.seq in flagged:
            check, css = _("Does not check out (see above)"), "bad"
        elif e.seq in checked.confirmed:
            check, css = _("Matches what your home sent"), "ok"
        elif e.seq in checked.city_ok:
            check, css = _("Signed by the city"), "ok"
        else:
            check, css = _("Not checked"), "muted"
        rows.append({"seq": e.seq, "kind": e.kind, "what": what, "change": change, "check": check, "css": css})
    return rows


def _sent_rows(sent: list[Sent], _: Tr) -> list[dict[str, Any]]:
    return [
        {
            "n": s.n,
            "seq": s.seq,
            "kind": s.kind,
            "at": _at(s.at_ms),
            "what": message_words(s.kind, s.message, _),
            "state": s.state,
            "state_words": _(STATE_WORDS.get(s.state, s.state)),
        }
        for s in reversed(sent)
    ]


def _read_ledger(site: Site) -> tuple[LedgerAnswer, Checked]:
    """Fetch and check (in a worker thread: urllib and the signature checks block)."""
    cfg = site.config
    url = cfg.trading.ledger_url
    assert url is not None
    keys = load_keys(cfg.gateway.data_dir)
    household = cfg.gateway.id
    account = trading.account(keys, household)
    headers = trading.read_headers(keys, household, now=datetime.fromtimestamp(site.now(), tz=UTC))
    timeout = cfg.trading.timeout.total_seconds()
    ca = cfg.city_ca if cfg.city_ca is not None and cfg.city_ca.exists() else None
    answer = ledger_check.fetch(url, account, headers, timeout=timeout, cafile=ca)
    with site.agent_db() as conn:
        sent = ledger_check.sent_messages(conn)
    checked = ledger_check.check(
        answer,
        sent,
        trading_key=keys.purpose_public_key_b64(TRADING_PURPOSE),
        ca=ledger_check.load_ca(cfg.city_ca),
        now_ms=int(site.now() * 1000),
    )
    return answer, checked


async def trades_page(request: Request) -> Response:
    site = site_of(request)
    _ = gettext(request)
    with site.agent_db() as conn:
        sent = ledger_check.sent_messages(conn)
    ctx: dict[str, Any] = {
        "taking_part": trading_consents(site) > 0,
        "configured": site.config.trading.ledger_url is not None,
        "sent": _sent_rows(sent, _),
        "unavailable": None,
        "answer": None,
        "kwh": kwh,
    }
    if ctx["taking_part"] and ctx["configured"]:
        # the request's own timeout covers each network step; this bounds the whole read (name lookup included):
        # the page answers in words even when the worker thread is still waiting
        bound = site.config.trading.timeout.total_seconds() * 2 + 1
        try:
            try:
                async with asyncio.timeout(bound):
                    answer, checked = await run_in_threadpool(_read_ledger, site)
            except TimeoutError as err:
                raise LedgerUnavailable("unreachable", f"no answer within {bound:.0f} s") from err
        except LedgerUnavailable as err:
            site.counts[f"ledger:{err.cause}"] += 1
            log.warning("trades: the ledger at %s could not be read: %s", site.config.trading.ledger_url, err)
            ctx["unavailable"] = _(UNAVAILABLE_WORDS.get(err.cause, UNAVAILABLE_WORDS["unreachable"]))
        else:
            site.counts["ledger:read"] += 1
            if checked.findings:
                site.counts["ledger:findings"] += len(checked.findings)
                log.warning("trades: %d problem(s) with the household's ledger entries: %s", len(checked.findings),
                            ", ".join(f"{f.cause}@{f.seq}" for f in checked.findings))  # fmt: skip
            ctx["answer"] = {
                "balance": kwh(answer.balance_wh),
                "balance_wh": answer.balance_wh,
                "entries": _ledger_rows(answer, checked, _),
                "findings": [_safe_finding(f, _) for f in checked.findings],
                "city_checked": checked.city_checked,
                "pending": [message_words(p.kind, p.message, _) for p in checked.pending],
                "head": answer.head.split(":", 1)[0],
            }
    return render(request, "trades.html", ctx)


__all__ = ["DELIVERY", "entry_words", "kwh", "routes", "slot_words", "trading_consents"]

routes: list[BaseRoute] = [Route("/trades", trades_page, methods=["GET"])]

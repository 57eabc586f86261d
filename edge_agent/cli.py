"""The gateway's commands of ``kyojo``: agent, consent, audit, decode, alerts, pair, doctor.

The root command (:mod:`kyojo.cli`) mounts them lazily next to the other parts' commands; this module imports no
cloud, provisioning or model code, nor bleak (``pair`` is built by :func:`pair_app` only when it runs).
Sub-commands import their heavy dependencies only when they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kyojo.contract.vocab import KyojoError

if TYPE_CHECKING:
    from drivers.ble import pairing as ble_pairing
    from edge_agent.config import AgentConfig
from drivers.ble.cli import register as register_ble
from drivers.meter.cli import register as register_echonet
from drivers.plugs.cli import register as register_plug

app = typer.Typer(
    help="Kyojo on the gateway: agent, household and installer commands.", no_args_is_help=True, add_completion=False
)
agent_app = typer.Typer(help="Run and inspect the gateway agent.", no_args_is_help=True)
consent_app = typer.Typer(help="Give, withdraw and list consents (household).", no_args_is_help=True)
audit_app = typer.Typer(help="See and check everything that left the home (household).", no_args_is_help=True)
alerts_app = typer.Typer(help="Health alerts on this gateway (household).", no_args_is_help=True)
decode_app = typer.Typer(help="Decode captured payloads, as a device sends them (installers).", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(consent_app, name="consent")
app.add_typer(audit_app, name="audit")
app.add_typer(decode_app, name="decode")
app.add_typer(alerts_app, name="alerts")
PAIR_HELP = "Pair BLE health devices and assign them to a person (household)."


def pairing_site(config: Path) -> ble_pairing.Site:
    """What ``kyojo pair`` needs from the gateway config: the data dir and the BLE devices it lists; for ``pair
    list`` also the config's BLE devices as entries, the household's names for devices and the home's plugs."""
    from drivers.ble import paired
    from drivers.ble import pairing as ble_pairing
    from edge_agent.config import load_config

    cfg = load_config(config)
    ble = [dev for dev in cfg.devices if getattr(dev, "kind", None) == "ble"]
    configured = {str(dev.address).upper(): str(dev.id) for dev in ble}
    entries = tuple(
        paired.PairedDevice(id=dev.id, address=str(dev.address).upper(), profile=dev.profile, subject=dev.subject)
        for dev in ble
    )
    return ble_pairing.Site(
        data_dir=cfg.gateway.data_dir,
        configured=configured,
        config_devices=entries,
        labels=_device_labels(cfg.gateway.data_dir),
        others=tuple(_plug_rows(cfg)),
        lang=_lang(None),
    )


def _device_labels(data_dir: Path) -> dict[str, str]:
    """Device id -> the household's name for it (the home page's table; none before the page or ``pair rename``)."""
    if not (data_dir / "web.sqlite3").exists():
        return {}
    from edge_agent.web import auth
    from edge_agent.web.pairing import labels

    web = auth.connect(data_dir)
    try:
        return labels(web)
    finally:
        web.close()


def _plug_rows(cfg: AgentConfig) -> list[dict[str, object]]:
    """The home's plugs for ``pair list``: configured or paired (heard or not), with when they were last heard."""
    from drivers.plugs import pairing

    data_dir = cfg.gateway.data_dir
    seen = {str(r["device"]): r for r in pairing.seen(data_dir)}
    paired_plugs = pairing.load(data_dir)
    rows: list[dict[str, object]] = []
    for dev in cfg.devices:
        if getattr(dev, "kind", "") != "plugs":
            continue
        table = {**paired_plugs, **dev.appliances}
        for key, appliance in sorted(table.items(), key=lambda kv: kv[1]):
            last = seen.get(key, {}).get("last_seen")
            rows.append(
                {
                    "id": f"{dev.household}-{appliance}",
                    "kind": "plug",
                    "key": key,
                    "what": appliance,
                    "source": "config" if key in dev.appliances else "paired",
                    "last_seen": None if not last else datetime.fromtimestamp(float(last), tz=UTC).isoformat(),
                }
            )
    return rows


def pair_app() -> typer.Typer:
    """``kyojo pair``: the BLE pairing commands (:mod:`drivers.ble.pair`, which imports bleak) and ``pair plugs``.

    Built when ``pair`` runs (:mod:`kyojo.cli` mounts it on its own), so the gateway's other commands, ``kyojo
    decode`` on an installer's laptop among them, never import bleak. Registers :func:`pairing_site`, the one
    view of the gateway config pairing has.
    """
    from drivers.ble import pair as ble_pair

    ble_pair.use_site_loader(pairing_site)
    if not any(c.name == "plugs" for c in ble_pair.app.registered_commands):
        ble_pair.app.command("plugs")(pair_plugs)
        ble_pair.app.command("rename")(pair_rename)
    return ble_pair.app


register_ble(decode_app)
register_plug(decode_app)
register_echonet(decode_app)

DEFAULT_CONFIG = Path(os.environ.get("KYOJO_CONFIG", "/etc/kyojo/agent.toml"))
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway config (TOML); env KYOJO_CONFIG")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


@contextlib.contextmanager
def _gateway_db(config: Path) -> Iterator[tuple[AgentConfig, sqlite3.Connection]]:
    """The gateway's config and a connection to its database, closed afterwards."""
    from edge_agent.db import connect

    cfg = _load(config)

    def damaged(err: sqlite3.DatabaseError) -> typer.Exit:
        return _fail(
            KyojoError(
                f"the gateway database {cfg.db_path} is damaged ({err}): the agent sets it aside and restores the "
                "consents and the log from its backup when it starts (systemctl restart kyojo-agent; kyojo doctor)"
            )
        )

    try:
        conn = connect(cfg.db_path)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        raise damaged(err) from err
    try:
        yield cfg, conn
    except sqlite3.DatabaseError as err:
        raise damaged(err) from err
    finally:
        conn.close()


def _load(config: Path) -> AgentConfig:
    from edge_agent.config import load_config

    try:
        return load_config(config)
    except KyojoError as err:
        raise _fail(err) from err


@agent_app.command("run")
def agent_run(config: ConfigOpt = DEFAULT_CONFIG, verbose: bool = False) -> None:
    """Run the gateway agent until SIGTERM or Ctrl-C."""
    from edge_agent.agent import Agent

    _setup_logging(verbose)
    cfg = _load(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(main())
    except KyojoError as err:
        raise _fail(err) from err


@agent_app.command("status")
def agent_status(
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: bool = typer.Option(False, "--json", help="the raw status document (one JSON line)"),
) -> None:
    """The agent's last status: running or not, broker connection, what was sent and what waits, problems."""
    cfg = _load(config)
    try:
        text = cfg.status_path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise _fail(KyojoError(f"no status at {cfg.status_path}: has the agent run?")) from err
    if as_json:
        typer.echo(text.strip())
        return
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise _fail(KyojoError(f"{cfg.status_path}: not a status document ({err})")) from err
    typer.echo(render_status(doc, now=time.time()))


def render_status(doc: dict[str, Any], *, now: float) -> str:
    """``kyojo agent status`` for a person: a few aligned lines, problems last and only when there are some."""
    age = now - float(doc.get("at", 0))
    fresh = age < 120
    when = datetime.fromtimestamp(float(doc.get("at", 0)), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    up = int(float(doc.get("uptime_s", 0)))
    lines = [
        f"gateway     {doc.get('gateway', '?')} (kyojo {doc.get('version', '?')})",
        f"agent       {'running' if fresh else 'NOT RUNNING?'}: status written {when}"
        + (f" ({int(age)} s ago)" if fresh else f" ({int(age // 60)} min ago)")
        + f", up {up // 3600} h {up % 3600 // 60} min",
        f"broker      {'connected' if doc.get('connected') else 'NOT CONNECTED'}"
        + (f" ({doc['broker_error']})" if doc.get("broker_error") else ""),
        f"devices     {doc.get('drivers', 0)} driver(s), {doc.get('readings', 0)} readings since start",
        f"sent        {doc.get('aggregates_sent', 0)} aggregates, {doc.get('events_sent', 0)} events "
        f"in {doc.get('messages_sent', 0)} messages (since start; {doc.get('aggregates_sent_total', 0)} aggregates "
        "in all)",
        f"waiting     {doc.get('outbox_depth', 0)} message(s) in the outbox"
        + (f", {doc.get('inflight', 0)} in flight" if doc.get("inflight") else ""),
        f"withheld    {doc.get('denied', 0)} aggregate(s) without consent, {doc.get('events_withheld', 0)} event(s)",
    ]
    ev = doc.get("ev_surplus")
    if isinstance(ev, dict):
        txs = ev.get("transactions") or {}
        charging = ", ".join(
            f"{t.get('charge_point')}/{t.get('connector')} {t.get('state')}"
            + (f" {t['limit_a']:g} A" if t.get("limit_a") is not None else "")
            + (f" ({t['reason']})" if t.get("reason") else "")
            for t in txs.values()
        )
        lines.append(f"ev surplus  {ev.get('mode')}: {ev.get('state')}" + (f"; {charging}" if charging else ""))
    problems = []
    for name, value in (
        ("driver errors", doc.get("driver_errors")),
        ("drivers stopped", doc.get("drivers_stopped")),
        ("counter steps held", doc.get("counter_steps_held")),
        ("receipts refused", doc.get("receipts_refused")),
    ):
        if value:
            problems.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(value.items())))
    if doc.get("anchor_problem"):
        problems.append(f"audit anchor: {doc['anchor_problem']}")
    if doc.get("outbox_dropped"):
        problems.append(f"outbox dropped {doc['outbox_dropped']} message(s) (it was full)")
    if doc.get("late"):
        problems.append(f"{doc['late']} reading(s) arrived after their window closed")
    lines += [f"problem     {p}" for p in problems] or ["problems    none"]
    return "\n".join(lines)


def _lang(lang: str | None) -> str:
    from kyojo.i18n import from_env

    return from_env(lang)


LangOpt = Annotated[str | None, typer.Option("--lang", help="en or ja (default: from LANG)")]


@consent_app.command("catalog")
def consent_catalog(lang: LangOpt = None) -> None:
    """List the purposes a household can consent to."""
    from edge_agent.consent import catalog

    lg = _lang(lang)
    for p in catalog().values():
        cats = ", ".join(sorted(p.categories))
        typer.echo(f"{p.name}: {p.title[lg]} [{cats}; >= {p.min_window_s}s windows; {p.controller}]")
        typer.echo(f"    {p.notice[lg]}")


@consent_app.command("grant")
def consent_grant(
    purpose: str,
    subject: Annotated[str, typer.Option("--person", "--subject", help="person or household id")],
    config: ConfigOpt = DEFAULT_CONFIG,
    lang: LangOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (the notice is printed all the same)")] = False,
    new_person: Annotated[
        bool, typer.Option("--new-person", help="the person is new to this gateway (no device or consent yet)")
    ] = False,
) -> None:
    """Give consent for a person (or the household) to one purpose, after reading its notice. Asked once, reused
    by every device."""
    from edge_agent import consent
    from edge_agent.config import gateway_now
    from edge_agent.web import auth, wording

    lg = _lang(lang)
    _ = _gettext(lg)
    with _gateway_db(config) as (cfg, conn):
        p = consent.catalog().get(purpose)
        if p is None:
            raise _fail(
                consent.ConsentError(
                    f"unknown purpose {purpose!r}; the catalog has: {', '.join(sorted(consent.catalog()))}"
                )
            )
        web = auth.connect(cfg.gateway.data_dir)
        try:
            known = wording.subject_ok(p, subject, cfg, web, conn)
            per_person = bool(p.categories & wording.PER_PERSON)
            if not known and not (new_person and per_person):
                if per_person:
                    from edge_agent.web import household

                    people = ", ".join(x.id for x in household.people(web, cfg, conn)) or "-"
                    msg = _("%(who)s is not a person this gateway knows (known: %(known)s); a new person: --new-person")
                    raise _fail(consent.ConsentError(msg % {"who": subject, "known": people}))
                msg = _("%(purpose)s is given for the household: use --person %(household)s")
                raise _fail(consent.ConsentError(msg % {"purpose": purpose, "household": cfg.gateway.id}))
            typer.echo("\n".join(wording.notice_lines(p, lg, _)))
            if not yes and not typer.confirm(_("Give this consent?"), default=False):
                typer.echo(_("Nothing was given."))
                raise typer.Exit(1)
            if new_person and not known:
                web.execute(
                    "INSERT OR IGNORE INTO people(id, name, created) VALUES(?, '', ?)",
                    (subject, int(datetime.now(UTC).timestamp() * 1000)),
                )
        finally:
            web.close()
        now = datetime.fromtimestamp(gateway_now(cfg), tz=UTC)  # the agent's clock, also when it is simulated
        try:
            c = consent.open_store(cfg, conn).grant(purpose, subject, lang=lg, now=now)
        except KyojoError as err:
            raise _fail(err) from err
    typer.echo(
        _("%(id)s: %(who)s -> %(purpose)s, given %(when)s")
        % {"id": c.id, "who": subject, "purpose": p.title[lg], "when": _when(c.given_at, lg)}
    )


@consent_app.command("withdraw")
def consent_withdraw(consent_id: str, config: ConfigOpt = DEFAULT_CONFIG, lang: LangOpt = None) -> None:
    """Withdraw a consent: nothing more is released for it, what is queued is dropped, the city erases what it
    holds and sends a receipt (``kyojo consent show`` tells when it arrived)."""
    from edge_agent import consent
    from edge_agent.config import gateway_now

    lg = _lang(lang)
    _ = _gettext(lg)
    with _gateway_db(config) as (cfg, conn):
        try:
            c = consent.get_consent(conn, consent_id)
            now = datetime.fromtimestamp(max(gateway_now(cfg), c.given_at / 1000), tz=UTC)
            dropped = consent.open_store(cfg, conn).withdraw(consent_id, now=now)
        except KyojoError as err:
            raise _fail(err) from err
    typer.echo(_("%(id)s: withdrawn; %(n)d queued message(s) dropped") % {"id": consent_id, "n": dropped})
    typer.echo(
        _(
            "erasure: the city erases what it holds under this consent and sends a receipt; "
            "'kyojo consent show %(id)s' says when it arrived"
        )
        % {"id": consent_id}
    )


@consent_app.command("family-code")
def consent_family_code(
    person: str = typer.Option(..., "--person", help="the person living alone, as in the watchover processor"),
    config: ConfigOpt = DEFAULT_CONFIG,
    lang: LangOpt = None,
) -> None:
    """The code the person's family types on the city's watch-over page to receive the notices (it stays the same;
    give it only to family)."""
    from edge_agent.processors.watchover import family_code

    _ = _gettext(_lang(lang))
    cfg = _load(config)
    code = family_code(cfg.gateway.data_dir, person)
    typer.echo(_("Family code for %(person)s: %(code)s") % {"person": person, "code": code})
    typer.echo(
        _(
            "Give it to the family members who should be told when the home is unusually quiet. They enter it, with "
            "their e-mail address, on the city's watch-over page and confirm by e-mail. Notices go out only while "
            "the watchover-family consent is given."
        )
    )


def _gettext(lang: str) -> Callable[[str], str]:
    from kyojo.i18n import gettext_for

    return gettext_for(lang).gettext


def _when(ms: int | None, lang: str) -> str:
    """A time as a person reads it: JST (and said so) in Japanese, UTC in English."""
    from kyojo.i18n import local_time

    return "-" if ms is None else local_time(datetime.fromtimestamp(ms / 1000, tz=UTC), lang)


@consent_app.command("list")
def consent_list(
    config: ConfigOpt = DEFAULT_CONFIG, as_json: bool = typer.Option(False, "--json"), lang: LangOpt = None
) -> None:
    """List the consents on this gateway."""
    from edge_agent import consent

    with _gateway_db(config) as (_, conn):
        rows = consent.list_consents(conn)
    cat = consent.default_catalog()

    def when(ms: int | None) -> str | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()

    docs = [
        {
            "id": c.id,
            "subject": c.subject,
            "purpose": c.purpose,
            "categories": sorted(c.categories),
            "status": c.status.value,
            "given_at": when(c.given_at),
            "expires_at": when(c.expires_at),
            "withdrawn_at": when(c.withdrawn_at),
            "needs_renewal": c.needs_renewal(cat),
        }
        for c in rows
    ]
    if as_json:
        typer.echo(json.dumps(docs, ensure_ascii=False))
        return
    lg = _lang(lang)
    _ = _gettext(lg)
    for c, d in zip(rows, docs, strict=True):
        renew = "  " + _("(the purpose changed: grant again to renew)") if d["needs_renewal"] else ""
        status = _(STATUS_WORDS.get(c.status.value, c.status.value))
        typer.echo(f"{c.id}  {status:<9} {c.subject:<12} {c.purpose:<20} {_('since')} {_when(c.given_at, lg)}{renew}")


@consent_app.command("show")
def consent_show(
    consent_id: str,
    config: ConfigOpt = DEFAULT_CONFIG,
    lang: LangOpt = None,
    as_json: bool = typer.Option(False, "--json", help="the full signed record"),
) -> None:
    """Show one consent: its notice, scope, recipients, history, and whether its signature holds."""
    from edge_agent import consent
    from edge_agent.web.wording import (
        CATEGORY_WORDS,
        granularity_words,
        receipt_of,
        receipt_words,
        retention_words,
    )
    from kyojo.keys import load_keys, verify_signature

    with _gateway_db(config) as (cfg, conn):
        try:
            signed = consent.signed_record(conn, consent_id)
            receipt = receipt_of(conn, consent.get_consent(conn, consent_id))
        except KyojoError as err:
            raise _fail(err) from err
    keys = load_keys(cfg.gateway.data_dir)
    ok = verify_signature(keys.public_key_b64(), consent.canonical(signed["record"]), signed["signature"])
    if as_json:
        typer.echo(
            json.dumps(
                {**signed, "public_key": keys.public_key_b64(), "signature_valid": ok}, ensure_ascii=False, indent=2
            )
        )
        return
    r, lg = signed["record"], _lang(lang)
    _ = _gettext(lg)
    words: Any = _
    status = _(STATUS_WORDS.get(str(r["status"]), str(r["status"])))
    lines = [
        f"{r['record_id']}: {r['purpose_title'][lg]} ({r['purpose']}) — {status}",
        f"  {_('Person')}: {r['subject']}   {_('Controller')}: {_(r['controller'])}",
        f"  {_('Who receives it')}: {', '.join(_(x) for x in r['recipients'])}",
        f"  {_('What')}: {'; '.join(_(CATEGORY_WORDS.get(c, c)) for c in r['categories'])}",
        f"  {_('How detailed')}: {granularity_words(int(r['granularity_s']), words)}",
        f"  {_('How long it is kept')}: {retention_words(int(r['retention_days']), words)} "
        f"({_(r['storage_location'])}; {_(r['jurisdiction'])})",
        f"  {_('Notice')} v{r['notice']['version']}: {r['notice']['text'][lg]}",
        f"  {_('Withdrawing')}: {r['withdrawal_method'][lg]}",
    ]
    for e in r.get("events", []):
        at = datetime.fromisoformat(str(e["at"]).replace("Z", "+00:00"))
        lines.append(f"  {_when(int(at.timestamp() * 1000), lg)}  {_(str(e['event']))} ({e['by']})")
    if r["status"] != "active":
        lines.append(f"  {_('Erasure')}: {receipt_words(receipt, _)}")
    lines.append(f"  {_('Signature')}: {'OK' if ok else _('INVALID')} ({_('key')} {signed['key_id']})")
    typer.echo("\n".join(lines))


def N_(text: str) -> str:
    """Marks a message for the catalogs (``python -m kyojo.i18n.catalogs update``); translated where shown."""
    return text


#: consent statuses in words (translated where shown)
STATUS_WORDS = {"active": N_("active"), "withdrawn": N_("withdrawn"), "expired": N_("expired")}
#: labels and event names the household commands show through ``_()`` inside f-strings, which the extractor
#: cannot see: marked here so that the catalogs hold them
_MARKED = (
    N_("since"),
    N_("Person"),
    N_("Controller"),
    N_("Notice"),
    N_("Erasure"),
    N_("Signature"),
    N_("INVALID"),
    N_("key"),
    N_("given"),
    N_("renewed"),
    N_("erased"),
    N_("erasure_incomplete"),
    N_("Who receives it"),
    N_("What"),
    N_("How detailed"),
    N_("How long it is kept"),
    N_("Why"),
    N_("Withdrawing"),
)


@audit_app.command("show")
def audit_show(
    config: ConfigOpt = DEFAULT_CONFIG,
    since: Annotated[
        str | None, typer.Option(help="ISO date or time, e.g. 2024-06-01 (JST in Japanese, else UTC)")
    ] = None,
    purpose: Annotated[str | None, typer.Option(help="only this purpose")] = None,
    lang: LangOpt = None,
) -> None:
    """Everything that left the home and every consent event, in plain language, oldest first."""
    from edge_agent import audit

    lg = _lang(lang)
    since_ms = None
    if since:
        try:
            dt = datetime.fromisoformat(since)
        except ValueError as err:
            raise _fail(
                KyojoError(_gettext(lg)("--since: not an ISO date/time: %(value)r") % {"value": since})
            ) from err
        if dt.tzinfo is None:
            from zoneinfo import ZoneInfo

            dt = dt.replace(tzinfo=ZoneInfo("Asia/Tokyo") if lg == "ja" else UTC)
        since_ms = int(dt.timestamp() * 1000)
    with _gateway_db(config) as (_cfg, conn):
        for e in audit.entries(conn, since_ms=since_ms, purpose=purpose):
            typer.echo(audit.describe(e, lg))


@audit_app.command("verify")
def audit_verify(
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: bool = typer.Option(False, "--json", help="the verdict and the cloud's anchor as JSON"),
    lang: LangOpt = None,
) -> None:
    """Check the log: its hash chain, the gateway's counters and the cloud's anchor. Exits 1 if any entry was
    edited, deleted or reordered, or the newest ones were removed."""
    from edge_agent import audit
    from kyojo.i18n import local_time

    with _gateway_db(config) as (_cfg, conn):
        verdict = audit.verify(conn)
    lg = _lang(lang)
    _ = _gettext(lg)
    if as_json:
        typer.echo(json.dumps(verdict.as_dict(), ensure_ascii=False))
    elif verdict.ok:
        typer.echo(
            _("ok: %(n)d entries, head %(last)s:%(head)s")
            % {"n": verdict.entries, "last": verdict.last_n, "head": verdict.head}
        )
        a = verdict.anchor
        if a is None:
            typer.echo(_("the cloud has not sent an anchor yet: checked against the gateway's own counters only"))
        else:
            seen = datetime.fromisoformat(str(a["seen_at"]).replace("Z", "+00:00"))
            typer.echo(
                _("matches the cloud's anchor: entry %(n)s as seen by the cloud at %(when)s")
                % {"n": a["n"], "when": local_time(seen, lg, seconds=True)}
            )
    else:
        where = _("entry %(n)s: ") % {"n": verdict.first_bad} if verdict.first_bad is not None else ""
        typer.echo(_("TAMPERED: %(where)s%(reason)s") % {"where": where, "reason": verdict.reason}, err=True)
    if not verdict.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    config: ConfigOpt = DEFAULT_CONFIG,
    out: Annotated[Path | None, typer.Option(help="file to write (default: stdout)")] = None,
) -> None:
    """The whole log as JSON (entries, verdict, signed consents, the gateway's public key), signed by the gateway,
    for the household to keep."""
    from edge_agent.transparency import export_log

    with _gateway_db(config) as (cfg, conn):
        doc = export_log(cfg, conn)
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {out}")


def _alerts(cfg_path: Path) -> list[dict[str, object]]:
    """Latest state of every alert (the home page's folding, :func:`edge_agent.web.alerting.list_alerts`), newest
    first, as ``kyojo alerts list --json`` prints them."""
    from edge_agent.web.alerting import list_alerts

    with _gateway_db(cfg_path) as (_cfg, conn):
        views = list_alerts(conn)
    docs = [
        {
            "alert_id": v.alert_id,
            "person": v.person,
            "kind": v.kind,
            "severity": v.severity,
            "level": v.level,
            "state": v.state,
            "message": v.message,
            "started": datetime.fromtimestamp(v.started_ms / 1000, tz=UTC).isoformat(),
            "updated": datetime.fromtimestamp(v.updated_ms / 1000, tz=UTC).isoformat(),
            "shared": v.shared,
            "acknowledged": v.acknowledged,
        }
        for v in views
    ]
    return sorted(docs, key=lambda d: str(d["updated"]), reverse=True)


#: alert levels and states in words (translated where shown)
ALERT_WORDS = {
    "urgent": N_("urgent"),
    "warning": N_("warning"),
    "advisory": N_("advisory"),
    "info": N_("for information"),
    "open": N_("ongoing"),
    "closed": N_("passed"),
}


@alerts_app.command("list")
def alerts_list(
    config: ConfigOpt = DEFAULT_CONFIG,
    person: Annotated[str | None, typer.Option("--person", help="only this person")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="only alerts not yet closed")] = False,
    as_json: bool = typer.Option(False, "--json"),
    lang: LangOpt = None,
) -> None:
    """Alerts for the people of this home: what, how urgent, since when, whether it was shared, what to do."""
    from edge_agent.web.alerting import advice, list_alerts

    with _gateway_db(config) as (cfg, conn):
        views = [v for v in list_alerts(conn, person) if not open_only or v.state == "open"]
    if as_json:
        keep = {v.alert_id for v in views}
        typer.echo(json.dumps([d for d in _alerts(config) if d["alert_id"] in keep], ensure_ascii=False))
        return
    lg = _lang(lang)
    _ = _gettext(lg)
    names: dict[str, str] = {}
    if (cfg.gateway.data_dir / "web.sqlite3").exists():
        from edge_agent.web import auth, household

        web = auth.connect(cfg.gateway.data_dir)
        try:
            names = {v.person: household.name_of(web, v.person) for v in views}
        finally:
            web.close()
    if not views:
        typer.echo(_("no alerts"))
    for v in views:
        words = advice(_, v)
        shared = _("shared") if v.shared else _("kept on the gateway")
        seen = ", " + _("acknowledged") if v.acknowledged else ""
        who = names.get(v.person) or v.person
        level = _(ALERT_WORDS.get(v.level, v.level))
        state = _(ALERT_WORDS.get(v.state, v.state))
        since = _("since")
        typer.echo(
            f"{v.alert_id}  {who}  {words['title']}  [{level}, {state}]  {since} {_when(v.started_ms, lg)}  "
            f"({shared}{seen})"
        )
        if v.burden is not None:
            span = _when(v.episode_start_ms, lg) + (f" - {_when(v.episode_end_ms, lg)}" if v.episode_end_ms else "")
            rhythm = _("irregular rhythm %(percent)d%% of the time") % {"percent": round(v.burden * 100)}
            typer.echo(f"    {rhythm} ({span})")
        typer.echo(f"    {words['todo']}")


@alerts_app.command("ack")
def alerts_ack(alert_id: str, config: ConfigOpt = DEFAULT_CONFIG, lang: LangOpt = None) -> None:
    """Mark an alert as seen by the household."""
    from edge_agent.web.alerting import acknowledge

    _ = _gettext(_lang(lang))
    with _gateway_db(config) as (_cfg, conn):
        ok = acknowledge(conn, alert_id, int(datetime.now(UTC).timestamp() * 1000))
    if not ok:
        raise _fail(KyojoError(_("no alert %(id)s on this gateway") % {"id": alert_id}))
    typer.echo(_("%(id)s: acknowledged") % {"id": alert_id})


def pair_plugs(
    config: ConfigOpt = DEFAULT_CONFIG,
    accept: Annotated[str | None, typer.Option(help="plug key to pair or rename, e.g. tasmota:tasmota_5A3C7F")] = None,
    appliance: Annotated[
        str | None, typer.Option(help="what the plug powers: kettle, ケトル, 電子レンジ, or any name of yours")
    ] = None,
    label: Annotated[str | None, typer.Option(help="the name the household calls it (default: as given)")] = None,
    forget: Annotated[str | None, typer.Option(help="plug key to unpair")] = None,
    as_json: bool = typer.Option(False, "--json"),
    lang: LangOpt = None,
) -> None:
    """Smart plugs on the home's LAN broker: the ones heard and the ones paired; pair, rename or forget one. The
    running agent applies a change within seconds."""
    from drivers.plugs import pairing
    from edge_agent.web import auth
    from edge_agent.web.pairing import labels, set_label, valid_label
    from edge_agent.web.wording import appliance_of

    lg = _lang(lang)
    _ = _gettext(lg)
    cfg = _load(config)
    plugs = [d for d in cfg.devices if getattr(d, "kind", "") == "plugs"]
    if not plugs:
        raise _fail(KyojoError(_('the gateway config has no kind = "plugs" device (README, installers, step 7)')))
    household = plugs[0].household
    configured: dict[str, str] = {}
    for d in plugs:
        configured |= dict(d.appliances)
    data_dir = cfg.gateway.data_dir
    web = auth.connect(data_dir)
    try:
        if accept is not None:
            if appliance is None:
                raise _fail(KyojoError(_("--accept needs --appliance")))
            if label is not None and not valid_label(label):
                raise _fail(KyojoError(_("a name is 1 to 40 characters")))
            if accept in configured:
                msg = _(
                    "%(key)s is set in the gateway config as %(appliance)s: change it there, or name it with "
                    "'kyojo pair rename'"
                )
                raise _fail(KyojoError(msg % {"key": accept, "appliance": configured[accept]}))
            before = pairing.load(data_dir)
            taken = {*before.values(), *configured.values()} - {before.get(accept)}
            app_id, name = appliance_of(appliance, taken, _gettext("ja"))
            try:
                pairing.accept(data_dir, accept, app_id, configured)
            except KyojoError as err:
                raise _fail(err) from err
            device_id = f"{household}-{app_id}"
            if (old := before.get(accept)) not in (None, app_id):
                set_label(web, f"{household}-{old}", None)
            if label is not None or name is not None:
                set_label(web, device_id, label or name)
            shown = label or name or app_id
            typer.echo(
                _("%(key)s: paired as %(name)s (%(device)s); the running agent uses it from its next message")
                % {"key": accept, "name": shown, "device": device_id}
            )
            if not any(r["device"] == accept for r in pairing.seen(data_dir)):
                typer.echo(
                    _(
                        "note: this plug has not been heard on the LAN broker yet; check the key in 'kyojo pair "
                        "plugs' (it is used as soon as it reports)"
                    ),
                    err=True,
                )
            return
        if forget is not None:
            before = pairing.load(data_dir)
            if not pairing.forget(data_dir, forget):
                raise _fail(KyojoError(_("%(key)s is not paired with kyojo pair plugs") % {"key": forget}))
            set_label(web, f"{household}-{before[forget]}", None)
            typer.echo(_("%(key)s: unpaired; the running agent ignores it from its next message") % {"key": forget})
            return
        names = labels(web)
    finally:
        web.close()
    paired = {**pairing.load(data_dir), **configured}
    seen = {str(r["device"]): r for r in pairing.seen(data_dir)}
    rows: list[dict[str, Any]] = []
    for key in sorted(seen.keys() | paired.keys()):
        plug_as = paired.get(key)
        plug_id = None if plug_as is None else f"{household}-{plug_as}"
        rows.append(
            {
                **seen.get(key, {"device": key, "family": key.partition(":")[0]}),
                "paired_as": plug_as,
                "device_id": plug_id,
                "label": names.get(plug_id or ""),
                "source": "config" if key in configured else "paired" if plug_as else None,
                "heard": key in seen,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        typer.echo(_("no plugs heard yet: is the agent running, and are the plugs on the LAN broker?"))
    heard_word = _("heard")
    for r in rows:
        what = (r["label"] or r["paired_as"]) if r["paired_as"] else _("not paired")
        last = r.get("last_seen")
        heard = _when(int(float(last) * 1000), lg) if r["heard"] and last else _("not heard yet")
        typer.echo(f"{r['device']:<44} {r.get('family', ''):<12} {what:<16} {heard_word} {heard}")


def pair_rename(
    device: Annotated[str, typer.Argument(help="device id, as `kyojo pair list` shows it")],
    name: Annotated[str | None, typer.Argument(help="the household's name for it, e.g. 父の心拍ベルト")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="forget the name")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    lang: LangOpt = None,
) -> None:
    """Give a device the name the household calls it; `kyojo pair list` and the home page show it."""
    from drivers.ble import pair as ble_pair
    from edge_agent.web import auth
    from edge_agent.web.pairing import set_label, valid_label

    _ = _gettext(_lang(lang))
    if (name is None) == (not clear):
        raise _fail(KyojoError(_("give a name, or --clear")))
    if name is not None and not valid_label(name):
        raise _fail(KyojoError(_("a name is 1 to 40 characters")))
    site = pairing_site(config)
    known = {str(r["id"]) for r in ble_pair.list_rows(site)}
    if device not in known:
        msg = _("%(device)s is not a device of this home (known: %(known)s)")
        raise _fail(KyojoError(msg % {"device": device, "known": ", ".join(sorted(known)) or "-"}))
    web = auth.connect(site.data_dir)
    try:
        set_label(web, device, None if clear else " ".join(str(name).split()))
    finally:
        web.close()
    if clear:
        typer.echo(_("%(device)s: name cleared") % {"device": device})
    else:
        typer.echo(_("%(device)s: now called %(name)s") % {"device": device, "name": name})


@app.command("doctor")
def doctor(
    config: ConfigOpt = DEFAULT_CONFIG,
    crl: Annotated[
        Path | None, typer.Option(help="on the broker host: also check this CRL (the broker's crlfile) is fresh")
    ] = None,
) -> None:
    """One-screen acceptance summary for the installer: clock, disk, broker, certificate, renewal, serial, Bluetooth."""
    from firmware_tests.doctor import render, run_all

    cfg = _load(config)
    ports = [Path(str(d.port)) for d in cfg.devices if getattr(d, "kind", "") == "gnss" and d.source == "serial"]
    ports += [Path(str(d.serial_port)) for d in cfg.devices if getattr(d, "kind", "") == "bmeter"]
    city = (cfg.mqtt.host, cfg.mqtt.port) if cfg.mqtt.tls is not None else None
    checks = run_all(
        state_dir=cfg.gateway.data_dir,
        local_broker=None if cfg.mqtt.tls is not None else (cfg.mqtt.host, cfg.mqtt.port),
        city_broker=city,
        serial_ports=ports,
        bluetooth=any(getattr(d, "kind", "") == "ble" for d in cfg.devices),
        timers=("kyojo-renew.timer", "kyojo-crl.timer") if crl is not None else ("kyojo-renew.timer",),
        crl=crl,
        lan_brokers=[(d.id, d.broker_host, d.broker_port) for d in cfg.devices if getattr(d, "kind", "") == "plugs"],
    )
    typer.echo(render(checks))
    if any(c.ok is False for c in checks):
        raise typer.Exit(1)


def main() -> None:
    """The gateway's commands alone (``kyojo`` itself is :func:`kyojo.cli.main`)."""
    app.add_typer(pair_app(), name="pair", help=PAIR_HELP)
    app()

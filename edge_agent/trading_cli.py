"""``kyojo trade``: the household's side of neighbour energy trading, on the gateway.

Every command signs on the gateway and queues in its outbox (the running agent sends it; nothing leaves without
the household's active ``energy-trading`` consent, and a withdrawal drops what is still queued); ``mine`` asks the
city for the household's own ledger entries with a request signed by its trading key.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from edge_agent import consent, ledger_check, trading
from edge_agent.cli import DEFAULT_CONFIG, ConfigOpt, _fail, _gateway_db
from edge_agent.config import AgentConfig, gateway_now
from kyojo.contract.errors import KyojoError
from kyojo.contract.wire import SLOT_S, TRADING_PURPOSE, MeterReport, TradeOrder, TradingEnrollment
from kyojo.keys import GatewayKeys, load_keys

JST = timezone(timedelta(hours=9))
Message = TradingEnrollment | TradeOrder | MeterReport
#: what a command builds: (gateway keys, gateway id, the household's energy-trading consent, now) -> a message
Build = Callable[[GatewayKeys, str, consent.Consent, datetime], Message]

app = typer.Typer(help="Neighbour energy trading: join, offer, bid, report the meter, see my entries (household).")

Slot = Annotated[
    str | None,
    typer.Option(help="the slot's start, ISO time (JST if no offset); default: the first slot >= 10 minutes ahead"),
]


@app.callback()
def _root() -> None:
    """Neighbour energy trading (household)."""


def _now(cfg: AgentConfig) -> datetime:
    return datetime.fromtimestamp(gateway_now(cfg), tz=UTC)


def _slot(text: str | None, now: datetime) -> int:
    if text is None:
        return trading.next_slot(now + timedelta(minutes=10))
    when = datetime.fromisoformat(text)
    when = when if when.tzinfo else when.replace(tzinfo=JST)
    t = int(when.timestamp())
    if t % SLOT_S:
        raise _fail(KyojoError(f"{text} is not the start of a 30-minute slot (hh:00 or hh:30)"))
    return t


def _queue(what: str, build: Build, config: Path) -> None:
    with _gateway_db(config) as (cfg, conn):
        active = [
            c
            for c in consent.list_consents(conn, include_inactive=False)
            if c.purpose == TRADING_PURPOSE and c.subject == cfg.gateway.id
        ]
        if not active:
            raise _fail(
                KyojoError(
                    f"the household has not granted {TRADING_PURPOSE}: kyojo consent grant {TRADING_PURPOSE} "
                    f"--person {cfg.gateway.id}"
                )
            )
        now = _now(cfg)
        msg = build(load_keys(cfg.gateway.data_dir), cfg.gateway.id, active[-1], now)
        seq = trading.queue(conn, cfg.gateway.id, msg, consent=active[-1].id, now_ms=int(now.timestamp() * 1000))
    typer.echo(f"{what} queued (outbox {seq}); the agent sends it")


@app.command("join")
def join(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Join the city's trading ledger under the household's energy-trading pseudonym (once)."""

    def build(keys: GatewayKeys, gw: str, c: consent.Consent, now: datetime) -> Message:
        return trading.enrollment(keys, gw, trading.consent_of(keys, gw, c), now=now)

    _queue("enrollment", build, config)


def _order(kind: Literal["offer", "bid"], wh: int, price: int, slot: str | None, config: Path) -> None:
    def build(keys: GatewayKeys, gw: str, c: consent.Consent, now: datetime) -> Message:
        start = _slot(slot, now)
        oid = f"{kind[0]}-{start}-{secrets.token_hex(3)}"
        return trading.order(keys, gw, kind, oid, slot=start, wh=wh, price=price, now=now)

    _queue(kind, build, config)


@app.command("offer")
def offer(
    wh: Annotated[int, typer.Option(help="watt-hours to sell in the slot (your forecast surplus)", min=1)],
    price: Annotated[int, typer.Option(help="the least you take, yen per kWh", min=0)],
    slot: Slot = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Offer surplus for a coming slot."""
    _order("offer", wh, price, slot, config)


@app.command("bid")
def bid(
    wh: Annotated[int, typer.Option(help="watt-hours to buy in the slot", min=1)],
    price: Annotated[int, typer.Option(help="the most you pay, yen per kWh", min=0)],
    slot: Slot = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Bid for energy in a coming slot."""
    _order("bid", wh, price, slot, config)


@app.command("meter")
def meter(
    slot: Annotated[str, typer.Option(help="the traded slot's start, ISO time (JST if no offset)")],
    export_wh: Annotated[int | None, typer.Option("--export", help="Wh the meter measured going out", min=0)] = None,
    import_wh: Annotated[int | None, typer.Option("--import", help="Wh the meter measured coming in", min=0)] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Report what the meter measured over a traded slot."""
    if (export_wh is None) == (import_wh is None):
        raise _fail(KyojoError("give exactly one of --export and --import"))

    def build(keys: GatewayKeys, gw: str, c: consent.Consent, now: datetime) -> Message:
        start = _slot(slot, now)
        if export_wh is not None:
            return trading.meter_report(keys, gw, slot=start, direction="export", wh=export_wh, now=now)
        assert import_wh is not None
        return trading.meter_report(keys, gw, slot=start, direction="import", wh=import_wh, now=now)

    _queue("meter report", build, config)


@app.command("mine")
def mine(
    url: Annotated[
        str | None,
        typer.Option(
            help="the city's ledger read API, e.g. https://ledger.city.example (default: [trading] ledger_url)"
        ),
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The household's own entries on the city's ledger (asked with a request signed by its trading key), checked
    as the household page checks them (edge_agent.ledger_check): exit 1 when something does not match."""
    with _gateway_db(config) as (cfg, conn):
        keys = load_keys(cfg.gateway.data_dir)
        account = trading.account(keys, cfg.gateway.id)
        headers = trading.read_headers(keys, cfg.gateway.id, now=datetime.now(UTC))
        sent = ledger_check.sent_messages(conn)
    url = url or cfg.trading.ledger_url
    if url is None:
        raise _fail(KyojoError("no ledger address: pass --url or set [trading] ledger_url"))
    req = urllib.request.Request(f"{url.rstrip('/')}/ledger/v1/accounts/{account}", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - the operator's configured URL
            doc = json.loads(resp.read())
    except OSError as err:
        raise _fail(KyojoError(f"the ledger did not answer: {err}")) from err
    if as_json:
        typer.echo(json.dumps(doc, ensure_ascii=False))
        return
    typer.echo(f"account {account}: {doc['balance_wh'] / 1000:.3f} kWh in tokens (ledger head {doc['head']})")
    for e in doc["entries"]:
        b = e["body"]
        what = {
            "join": "joined",
            "leave": "left",
            "offer": f"offered {b.get('wh')} Wh at {b.get('price')} yen/kWh for slot {b.get('slot')}",
            "bid": f"bid {b.get('wh')} Wh at {b.get('price')} yen/kWh for slot {b.get('slot')}",
            "meter": f"metered {b.get('direction')} {b.get('wh')} Wh in slot {b.get('slot')}",
            "match": f"slot {b.get('slot')} cleared at {b.get('price')} yen/kWh",
            "settle": f"slot {b.get('slot')} settled",
        }.get(e["kind"], e["kind"])
        typer.echo(f"{e['seq']:>8}  {what}")
    _check_mine(cfg, keys, doc, account, sent)


def _check_mine(cfg: AgentConfig, keys: GatewayKeys, doc: Any, account: str, sent: list[ledger_check.Sent]) -> None:
    """Hold the answer to what the home sent, its trading key and the city CA; say each problem; exit 1 on any."""
    from edge_agent.web.pages.trades import finding_words  # the household page's words (English here)
    from kyojo.i18n import translations

    try:
        answer = ledger_check.answer_of(doc, account)
    except ledger_check.LedgerUnavailable as err:
        raise _fail(KyojoError(f"the ledger's answer cannot be read: {err}")) from err
    checked = ledger_check.check(
        answer,
        sent,
        trading_key=keys.purpose_public_key_b64(TRADING_PURPOSE),
        ca=ledger_check.load_ca(cfg.city_ca),
        now_ms=int(datetime.now(UTC).timestamp() * 1000),
    )
    _ = translations("en").gettext
    for f in checked.findings:
        typer.echo(f"PROBLEM: {finding_words(f, _)}")
    if checked.findings:
        raise typer.Exit(1)
    city = "the city's signatures checked" if checked.city_checked else "the city's signatures not checked: no city CA"
    typer.echo(
        f"checked: nothing missing or altered; {len(checked.confirmed)} of the home's messages confirmed; {city}"
    )

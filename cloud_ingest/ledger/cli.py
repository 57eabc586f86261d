"""``kyojo ledger``: the city's trading ledger (operator: migrate, tick, checkpoint, export) and the check anyone can
run (``verify``: offline, from an exported file and the city CA's certificate, or against the database).

Imports stay light: psycopg and Alembic are imported only by the commands that talk to the database, so
``kyojo ledger verify --file`` runs on a gateway without them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cloud_ingest.ledger.chain import CitySigner, Entry
    from cloud_ingest.ledger.store import LedgerStore

app = typer.Typer(help="The city's energy-trading ledger: run the matcher, export, verify.", no_args_is_help=True)

Db = Annotated[
    str | None,
    typer.Option(help="the ledger's PostgreSQL URL, postgresql://user@host:port/db (or KYOJO_LEDGER_DB)"),
]
StateDir = Annotated[
    Path,
    typer.Option(
        help="the ledger identity's state dir: tls/identity.key and tls/identity.crt from "
        "'kyojo provision service <id> --role ledger' and 'kyojo provision install'"
    ),
]
Now = Annotated[str | None, typer.Option(help="act as of this ISO time (UTC if no offset); default: now")]


@app.callback()
def _root() -> None:
    """The city's energy-trading ledger."""


def _db(db: str | None) -> str:
    url = db or os.environ.get("KYOJO_LEDGER_DB")
    if not url:
        raise typer.BadParameter("name the database with --db or KYOJO_LEDGER_DB")
    return url


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _signer(state_dir: Path) -> CitySigner:
    from cloud_ingest.ledger.chain import CitySigner

    return CitySigner.load(state_dir / "tls" / "identity.key", state_dir / "tls" / "identity.crt")


def _store(db: str | None, state_dir: Path | None, now: datetime) -> LedgerStore:
    from cloud_ingest.ledger.store import LedgerStore

    return LedgerStore.open(_db(db), _signer(state_dir) if state_dir is not None else None, now=now)


@app.command("migrate")
def migrate(db: Db = None) -> None:
    """Create or upgrade the ledger's tables (Alembic); safe to run again."""
    from cloud_ingest.ledger.migrate import upgrade

    upgrade(_db(db))
    typer.echo("ledger schema at head")


@app.command("tick")
def tick(
    db: Db = None,
    state_dir: StateDir = Path("/var/lib/kyojo-ledger"),
    gate: Annotated[int, typer.Option(help="clear a slot this many seconds before it begins")] = 300,
    grace: Annotated[int, typer.Option(help="settle a slot this many seconds after it ends")] = 900,
    now: Now = None,
) -> None:
    """The matcher, once: clear the slots about to begin, settle the ended ones, checkpoint. Run it every minute
    (a systemd timer); a second matcher running at the same time is harmless."""
    from cloud_ingest.ledger.service import LedgerService, Timing

    when = _now(now)
    with _store(db, state_dir, when) as store:
        made = LedgerService(store, {}, Timing(gate, grace)).tick(when)
    for e in made:
        typer.echo(f"{e.seq} {e.kind} {json.dumps({k: v for k, v in e.body.items() if k != 'pairs'})[:200]}")


@app.command("serve")
def serve(
    broker_host: Annotated[str, typer.Option(help="the city's broker")],
    gateway_keys: Annotated[Path, typer.Option(help="the CA's gateway_keys.json (kyojo provision gateway-keys)")],
    db: Db = None,
    state_dir: StateDir = Path("/var/lib/kyojo-ledger"),
    broker_port: Annotated[int, typer.Option()] = 8883,
    client_id: Annotated[str | None, typer.Option(help="default: the ledger identity's CN")] = None,
    tick: Annotated[float, typer.Option(help="seconds between two runs of the matcher (0: no matcher here)")] = 60.0,
    stats_interval: Annotated[float, typer.Option(help="seconds between two JSON stats lines")] = 60.0,
) -> None:
    """The ledger's intake and matcher as one process: households' trading messages from the broker (mTLS, the
    ledger identity, a persistent session; acknowledged only once the ledger committed or refused them) and the
    matcher every ``--tick`` seconds. Stops on SIGTERM/SIGINT."""
    import contextlib
    import signal
    import ssl
    import threading
    import time

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from cloud_ingest.ledger.intake import LedgerIntake
    from cloud_ingest.ledger.migrate import upgrade
    from cloud_ingest.ledger.service import LedgerService
    from cloud_ingest.ledger.store import LedgerStore

    url = _db(db)
    upgrade(url)
    signer = _signer(state_dir)
    tls_dir = state_dir / "tls"
    cert = x509.load_pem_x509_certificate((tls_dir / "identity.crt").read_bytes())
    cn = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    ctx.load_cert_chain(tls_dir / "identity.crt", tls_dir / "identity.key")
    with LedgerStore.open(url, signer):
        pass  # the genesis, once

    def make() -> LedgerService:
        return LedgerService(LedgerStore(url, signer), gateway_keys)

    intake = LedgerIntake(make, host=broker_host, port=broker_port, client_id=client_id or cn, tls=ctx)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = threading.Thread(target=intake.run, name="ledger-intake", daemon=True)
    worker.start()
    matcher: LedgerService | None = None
    next_tick = next_stats = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if tick > 0 and now >= next_tick:
            try:
                matcher = matcher or LedgerService(LedgerStore(url, signer), gateway_keys)
                matcher.tick(datetime.now(UTC))
            except Exception:  # this turn fails (the database?), the intake goes on; the next tick tries again
                logging.getLogger(__name__).exception("ledger matcher failed")
                if matcher is not None:
                    with contextlib.suppress(Exception):
                        matcher.store.close()
                matcher = None
            next_tick = now + tick
        if now >= next_stats:
            counts = dict(intake.counts) | ({f"matcher:{k}": v for k, v in matcher.counts.items()} if matcher else {})
            typer.echo(json.dumps({"ts": round(time.time(), 3), **counts}, separators=(",", ":")))
            next_stats = now + stats_interval
        stop.wait(min(1.0, tick or 1.0, stats_interval))
    intake.stop()
    worker.join(10)
    if matcher is not None:
        with contextlib.suppress(Exception):
            matcher.store.close()
    typer.echo(json.dumps({"final": True, **intake.counts}, separators=(",", ":")))


@app.command("serve-http")
def serve_http(
    db: Db = None,
    host: Annotated[str, typer.Option(help="listen address (behind the city's TLS proxy)")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8095,
) -> None:
    """A household's own entries for its gateway: GET /ledger/v1/accounts/<account>, signed by the account."""
    import uvicorn

    from cloud_ingest.ledger.store import LedgerStore
    from cloud_ingest.ledger.web import create_app

    with LedgerStore(_db(db)) as store:
        uvicorn.run(create_app(store), host=host, port=port, log_level="warning")


@app.command("rotate-key")
def rotate_key(
    new_state_dir: Annotated[Path, typer.Option(help="the new ledger identity's state dir (tls/identity.key, .crt)")],
    db: Db = None,
    state_dir: StateDir = Path("/var/lib/kyojo-ledger"),
    now: Now = None,
) -> None:
    """Hand the ledger to a new key (before the current certificate expires, or to replace a key): a ``key`` entry
    signed by the current key names the new certificate; from then on only the new key signs."""
    when = _now(now)
    with _store(db, state_dir, when) as store:
        e = store.rotate_key(_signer(new_state_dir), now=when)
    typer.echo(f"entry {e.seq}: the ledger is now signed by the key in {new_state_dir / 'tls' / 'identity.crt'}")


@app.command("checkpoint")
def checkpoint(db: Db = None, state_dir: StateDir = Path("/var/lib/kyojo-ledger"), now: Now = None) -> None:
    """Sign the head and every balance now."""
    when = _now(now)
    with _store(db, state_dir, when) as store:
        e = store.checkpoint(now=when)
    typer.echo(f"checkpoint {e.seq}: head {e.body['head_seq']}:{e.body['head']}")


@app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="JSON lines, one entry per line ('-': stdout)")],
    db: Db = None,
) -> None:
    """Write the whole ledger for anyone to check offline (``kyojo ledger verify --file``)."""
    with _store(db, None, _now(None)) as store:
        lines = (json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n" for e in store.entries())
        if str(out) == "-":
            sys.stdout.writelines(lines)
            return
        n = 0
        with out.open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line)
                n += 1
    typer.echo(f"{n} entries -> {out}")


def _read_file(path: Path) -> Iterator[Entry]:
    from cloud_ingest.ledger.chain import entry_of

    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield entry_of(json.loads(line))


@app.command("verify")
def verify(
    ca: Annotated[
        Path,
        typer.Option(help="the city CA's certificate (a gateway has it as tls/ca.crt)", exists=True, dir_okay=False),
    ],
    file: Annotated[
        Path | None, typer.Option(help="an exported ledger (JSON lines)", exists=True, dir_okay=False)
    ] = None,
    db: Db = None,
    head: Annotated[
        str | None, typer.Option(help="'<n>:<hash>' of an entry seen before: the ledger must still hold it unchanged")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Check signatures (every entry by the party that made it; the city's key chained to the CA), the hash chain,
    replays, the clearing and settlement rules, double entry (tokens made only by metered delivery, never
    destroyed, balances summing to zero) and every checkpoint. Exit 1 on any problem."""
    from cryptography import x509

    from cloud_ingest.ledger.chain import LedgerError
    from cloud_ingest.ledger.chain import verify as check

    try:
        ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    except ValueError as err:
        raise typer.BadParameter(f"{ca} is not a PEM certificate") from err
    expect = None
    if head is not None:
        n, _, digest = head.partition(":")
        if not n.isdigit() or len(digest) != 64:
            raise typer.BadParameter("--head is '<n>:<64 hex>'")
        expect = (int(n), digest)
    try:
        if file is not None:
            report = check(_read_file(file), ca_cert, expect_head=expect)
        else:
            from cloud_ingest.ledger.store import LedgerStore

            with LedgerStore(_db(db)) as store:
                report = check(store.entries(), ca_cert, expect_head=expect)
    except (LedgerError, ValueError) as err:  # a line that is not an entry at all
        typer.echo(f"PROBLEM {err}\nledger BROKEN: unreadable", err=not as_json)
        raise typer.Exit(1) from err
    doc = report.as_json()
    if as_json:
        typer.echo(json.dumps(doc, ensure_ascii=False))
    else:
        kinds = ", ".join(f"{k} {v}" for k, v in doc["kinds"].items())
        issuer = ca_cert.subject.rfc4514_string()
        typer.echo(f"entries: {doc['entries']} ({kinds})")
        typer.echo(f"signatures: each entry by its maker; the ledger key's certificate checked against {issuer}")
        typer.echo(f"hash chain: head {doc['head']}")
        typer.echo(
            f"checkpoints: {doc['checkpoints']} (last at entry {doc['last_checkpoint']}; "
            f"{doc['after_last_checkpoint']} entries after it)"
        )
        typer.echo(
            f"double entry: {doc['tokens_minted_wh']} Wh minted by metered delivery; balances sum to "
            f"{doc['balances_sum']}"
        )
        for p in doc["problems"]:
            typer.echo(f"PROBLEM {p}")
        typer.echo("ledger OK" if report.ok else f"ledger BROKEN: {len(doc['problems'])} problem(s)")
    if not report.ok:
        raise typer.Exit(1)


@app.command("show")
def show(
    account: Annotated[str, typer.Argument(help="the household's energy-trading pseudonym (s-...)")],
    db: Db = None,
) -> None:
    """A household's own entries: joining, its orders and meter reports, the clearings and settlements naming it."""
    with _store(db, None, _now(None)) as store:
        for e in store.entries_for(account):
            typer.echo(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")))


@app.command("balances")
def balances(db: Db = None) -> None:
    """Tokens (Wh) per account; ``delivery`` is minus everything ever delivered."""
    with _store(db, None, _now(None)) as store:
        for account, wh in store.balances().items():
            typer.echo(f"{account}\t{wh}")

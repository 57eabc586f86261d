"""A day of neighbour energy trading for the demo (issue 18 section 2): a PV home offers its forecast surplus, the
demo charging site bids for its charging, the city's matcher clears every slot before it begins, both sides report
their metered values after it, the matcher settles and checkpoints, and the ledger verifies.

Everything is real: the city CA (and the ledger's identity, role ``ledger``, issued by it), the gateways' own keys
(:func:`kyojo.keys.load_keys` on their data directories, so the demo's gateways sign with the keys they sign
consents with), PostgreSQL (the caller's, or one started here), the Alembic migrations, the same intake and matcher
that ``kyojo ledger`` runs. Only the clock is simulated: the day runs slot by slot in well under a second per slot.

``kyojo demo`` wires it with one call (see :func:`run_demo_trading_day`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from cryptography import x509

from cloud_ingest.ledger.chain import CitySigner, verify
from cloud_ingest.ledger.service import LedgerService
from cloud_ingest.ledger.store import LedgerStore
from edge_agent import trading
from kyojo.contract.wire import SLOT_S
from kyojo.keys import load_keys
from provisioning import pki
from provisioning.local import PostgreSQL

__all__ = ["TradingParty", "default_demand", "default_surplus", "run_demo_trading_day"]

JST = timezone(timedelta(hours=9))
SLOTS_PER_DAY = 86_400 // SLOT_S


@dataclass(frozen=True)
class TradingParty:
    """A gateway that trades for one household. ``data_dir``: the gateway's data directory (its keys live in
    ``<data_dir>/keys``; made there if missing); ``consent_id``: the id of the household's ``energy-trading``
    consent on that gateway (the demo grants it with the others)."""

    gateway: str
    data_dir: Path
    household: str
    consent_id: str
    price: int  # yen per kWh: the least an offer takes / the most a bid pays


def default_surplus(slot_index: int) -> int:
    """A clear day's PV surplus of a home, Wh per 30-minute slot (index 0 = 00:00 JST): a bell from 08:00 to 16:00
    peaking at 1.8 kWh per slot around noon, after the home's own use."""
    hour = slot_index / 2
    if not 8 <= hour < 16:
        return 0
    return int(1800 * math.sin(math.pi * (hour - 8) / 8))


def default_demand(slot_index: int) -> int:
    """The demo charging site's charging, Wh per slot: a car on the charger from 10:00 to 15:00 JST at ~3 kW."""
    return 1500 if 20 <= slot_index < 30 else 0


def _city(workdir: Path, ca_dir: Path | None) -> tuple[pki.CertificateAuthority, CitySigner]:
    """The city CA (``ca_dir``, or one made in ``workdir/ca``) and the ledger's identity under ``workdir/ledger-1``,
    enrolled with the role ``ledger`` through the same request/sign/install steps as any service."""
    ca_dir = ca_dir or workdir / "ca"
    ca = pki.CertificateAuthority(ca_dir) if (ca_dir / "ca.key").exists() else pki.init_ca(ca_dir)
    state = workdir / "ledger-1"
    if not (state / "tls" / pki.CERT_NAME).exists():
        code = ca.enroll("ledger-1", pki.Role.LEDGER)
        csr = pki.create_request(state, "ledger-1", code, pki.Role.LEDGER)
        pki.install_certificate(state, ca.sign_csr(csr.read_bytes(), expected_id="ledger-1"), ca.cert_path.read_bytes())
    return ca, CitySigner.load(state / "tls" / pki.KEY_NAME, state / "tls" / pki.CERT_NAME)


def run_demo_trading_day(
    workdir: Path,
    *,
    home: TradingParty,
    site: TradingParty,
    db_url: str | None = None,
    day: date | None = None,
    surplus: Callable[[int], int] = default_surplus,
    demand: Callable[[int], int] = default_demand,
    seed: int = 18,
    exported: Callable[[int], int] | None = None,
    imported: Callable[[int], int] | None = None,
    ca_dir: Path | None = None,
    out: IO[str] | None = None,
) -> dict[str, Any]:
    """Trade one JST ``day`` (default: today) between ``home`` (offers ``surplus(slot)``) and ``site`` (bids
    ``demand(slot)``) on the ledger at ``db_url`` (None: a PostgreSQL started under ``workdir/postgres`` and stopped
    afterwards). Metered values: ``exported(slot)`` / ``imported(slot)`` Wh when given (the demo's simulated
    meters), else the home exports 75-105 % of its forecast and the site takes 85-110 % of its bid (seeded).
    Writes ``workdir/ledger.jsonl`` (the export anyone can verify) and returns the day's summary, including
    ``verify_command``. ``ca_dir``: the city CA to use (default: one made in ``workdir/ca``). Slot indexes count
    the day's 48 slots from 00:00 JST."""
    workdir.mkdir(parents=True, exist_ok=True)
    if db_url is None:
        with PostgreSQL(workdir / "postgres") as pg:
            return run_demo_trading_day(
                workdir, home=home, site=site, db_url=pg.create_database("kyojo_ledger"), day=day,
                surplus=surplus, demand=demand, seed=seed, exported=exported, imported=imported, ca_dir=ca_dir,
                out=out,
            )  # fmt: skip
    ca, signer = _city(workdir, ca_dir)
    day = day or datetime.now(JST).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=JST)
    rng = random.Random(seed)
    parties = {}
    for party in (home, site):
        keys = load_keys(party.data_dir)
        ca.register_signing_key(party.gateway, keys.public_key_b64())  # what `provision sign` does at enrollment
        rec = trading.consent_record(keys, party.gateway, party.consent_id, party.household, midnight - timedelta(1))
        parties[party.gateway] = (party, keys, rec)

    store = LedgerStore.open(db_url, signer, now=midnight - timedelta(hours=2))
    svc = LedgerService(store, ca.gateway_keys_path)
    t_join = midnight - timedelta(hours=1)
    for party, keys, rec in parties.values():
        svc.handle(party.gateway, trading.enrollment(keys, party.gateway, rec, now=t_join).model_dump_json().encode(),
                   now=t_join)  # fmt: skip

    # the day's events in time order: orders an hour ahead, clearing 5 min before, meters 1 min after, settling 15
    events: list[tuple[float, int, str, int]] = []
    start = int(midnight.timestamp())
    for i in range(SLOTS_PER_DAY):
        slot = start + i * SLOT_S
        events += [(slot - 3600, 0, "order", i), (slot - 300, 1, "tick", i), (slot + SLOT_S + 60, 2, "meter", i)]
        events.append((slot + SLOT_S + 900, 3, "tick", i))
    events.sort()
    offered = bid = 0
    exported_by_slot: dict[int, int] = {}
    for when, _, what, i in events:
        now = datetime.fromtimestamp(when, tz=UTC)
        slot = start + i * SLOT_S
        hp, hkeys, _rec = parties[home.gateway]
        sp, skeys, _rec = parties[site.gateway]
        if what == "order":
            if (wh := surplus(i)) > 0:
                offered += wh
                msg = trading.order(
                    hkeys, hp.household, "offer", f"o-{slot}", slot=slot, wh=wh, price=hp.price, now=now
                )
                svc.handle(hp.gateway, msg.model_dump_json().encode(), now=now)
            if (wh := demand(i)) > 0:
                bid += wh
                msg = trading.order(skeys, sp.household, "bid", f"b-{slot}", slot=slot, wh=wh, price=sp.price, now=now)
                svc.handle(sp.gateway, msg.model_dump_json().encode(), now=now)
        elif what == "meter":
            cleared = store.clearing(slot)
            if cleared is None or not cleared[1]:
                continue
            out_wh, in_wh = int(surplus(i) * rng.uniform(0.75, 1.05)), int(demand(i) * rng.uniform(0.85, 1.10))
            exported_by_slot[slot] = out_wh if exported is None else exported(i)
            took = in_wh if imported is None else imported(i)
            reports = (
                trading.meter_report(
                    hkeys, hp.household, slot=slot, direction="export", wh=exported_by_slot[slot], now=now
                ),
                trading.meter_report(skeys, sp.household, slot=slot, direction="import", wh=took, now=now),
            )
            for party, rep in zip((hp, sp), reports, strict=True):
                svc.handle(party.gateway, rep.model_dump_json().encode(), now=now)
        else:
            svc.tick(now)

    ledger_file = workdir / "ledger.jsonl"
    with ledger_file.open("w", encoding="utf-8") as fh:
        for e in store.entries():
            fh.write(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
    report = verify(store.entries(), x509.load_pem_x509_certificate(ca.cert_path.read_bytes()))
    balances = store.balances()
    matched = sum(p.wh for s in exported_by_slot if (c := store.clearing(s)) for p in c[1])
    store.close()
    home_account, site_account = (
        trading.account(parties[home.gateway][1], home.household),
        trading.account(parties[site.gateway][1], site.household),
    )
    summary = {
        "day": day.isoformat(),
        "slots_traded": len(exported_by_slot),
        "offered_wh": offered,
        "bid_wh": bid,
        "matched_wh": matched,
        "delivered_wh": report.minted,
        "home_account": home_account,
        "site_account": site_account,
        "site_tokens_wh": balances.get(site_account, 0),
        "balances_sum": sum(balances.values()),
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "verify_ok": report.ok,
        "problems": [str(p) for p in report.problems],
        "refused": {k: v for k, v in svc.counts.items() if k.startswith("refused:")},
        "ledger_file": str(ledger_file),
        "verify_command": f"kyojo ledger verify --file {ledger_file} --ca {ca.cert_path}",
    }
    if out is not None:
        out.write(
            f"trading day {summary['day']}: {len(exported_by_slot)} slots traded, {offered} Wh offered, "
            f"{matched} Wh matched, "
            f"{report.minted} Wh delivered as tokens; ledger {'OK' if report.ok else 'BROKEN'} "
            f"({report.entries} entries, {report.checkpoints} checkpoints)\n  check it: {summary['verify_command']}\n"
        )
    return summary

"""A city for the trading ledger's tests: the city CA, the ledger's identity (enrolled with the role ``ledger``
through the same request/sign/install flow as any service), gateways enrolled with their signing keys, and the
households' signed messages (edge_agent.trading, as a gateway makes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cloud_ingest.ledger.chain import CitySigner, Entry
from cloud_ingest.ledger.service import LedgerService
from cloud_ingest.ledger.store import LedgerStore
from edge_agent import trading
from kyojo.contract.wire import SLOT_S, ConsentRecord
from kyojo.keys import GatewayKeys, load_keys
from provisioning import pki

#: a fixed morning: 2026-06-01 09:00 JST (00:00 UTC), a slot boundary
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


@dataclass
class Home:
    """A gateway and the household that trades through it."""

    gateway: str
    keys: GatewayKeys
    household: str
    consent: ConsentRecord

    @property
    def account(self) -> str:
        return trading.account(self.keys, self.household)

    def enrollment(self, now: datetime = T0) -> bytes:
        return trading.enrollment(self.keys, self.gateway, self.consent, now=now).model_dump_json().encode()

    def order(self, kind: Literal["offer", "bid"], oid: str, slot: int, wh: int, price: int) -> bytes:
        msg = trading.order(self.keys, self.household, kind, oid, slot=slot, wh=wh, price=price, now=T0)
        return msg.model_dump_json().encode()

    def meter(self, slot: int, direction: Literal["export", "import"], wh: int) -> bytes:
        msg = trading.meter_report(self.keys, self.household, slot=slot, direction=direction, wh=wh, now=T0)
        return msg.model_dump_json().encode()


@dataclass
class City:
    """The CA, the ledger's key, and the gateways the CA enrolled."""

    base: Path
    ca: pki.CertificateAuthority
    signer: CitySigner
    homes: dict[str, Home] = field(default_factory=dict)

    @property
    def ca_cert(self) -> Path:
        return self.ca.cert_path

    def home(self, gateway: str, household: str | None = None) -> Home:
        """Enroll gateway ``gateway`` with the CA (its signing key rides in the CSR, as on a Pi) and give its
        household an energy-trading consent."""
        state = self.base / gateway
        keys = load_keys(state)
        code = self.ca.enroll(gateway)
        csr = pki.create_request(state, gateway, code, signing_key=keys.public_key_b64())
        self.ca.sign_csr(csr.read_bytes(), expected_id=gateway)
        household = household or gateway
        rec = trading.consent_record(keys, gateway, f"c-{gateway}", household, T0 - timedelta(days=1))
        home = Home(gateway, keys, household, rec)
        self.homes[gateway] = home
        return home

    def service(self, url: str) -> LedgerService:
        return LedgerService(LedgerStore.open(url, self.signer, now=T0 - timedelta(hours=1)), self.ca.gateway_keys_path)


def make_city(base: Path) -> City:
    ca = pki.init_ca(base / "ca")
    state = base / "ledger-1"
    code = ca.enroll("ledger-1", pki.Role.LEDGER)
    csr = pki.create_request(state, "ledger-1", code, pki.Role.LEDGER)
    cert = ca.sign_csr(csr.read_bytes(), expected_id="ledger-1")
    pki.install_certificate(state, cert, ca.cert_path.read_bytes())
    signer = CitySigner.load(state / "tls" / "identity.key", state / "tls" / "identity.crt")
    return City(base, ca, signer)


def slot_after(n: int) -> int:
    """The start of the ``n``-th slot after T0 (1: the one starting 30 minutes after T0)."""
    return int(T0.timestamp()) + n * SLOT_S


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def entries(svc: LedgerService) -> list[Entry]:
    return list(svc.store.entries())

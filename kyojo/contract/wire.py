"""The wire contract between gateway and cloud: the ONE module both sides import.

Topics (``<gw>`` is the gateway id, which must equal the payload's ``gateway`` and, with mTLS, the
certificate's identity)::

    kyojo/v1/<gw>/agg/<category>          AggregateBatch, QoS 1, not retained
    kyojo/v1/<gw>/event/<category>        EventBatch (pickups, alerts), QoS 1, not retained
    kyojo/v1/<gw>/consent/<consent_id>    ConsentRecord, QoS 1, retained (empty payload clears it)
    kyojo/v1/<gw>/status                  GatewayStatus, retained; also the MQTT last will
    kyojo/v1/<gw>/receipt/<consent_id>    ErasureReceipt, cloud -> gateway, QoS 1, retained
    kyojo/v1/<gw>/anchor                  AuditAnchor, cloud -> gateway, QoS 1, retained: the newest audit head
                                          the cloud holds for this gateway

A batch's ``audit_head`` is ``"<n>:<sha256 hex>"``: entry ``n`` of the gateway's hash-chained audit log and its
hash. The cloud keeps the highest one per gateway; a later batch with a lower ``n`` (a truncated log) or another
hash at a known ``n`` (a rewritten log) is flagged, and the anchor travels back so the household's own
``kyojo audit verify`` checks the local log against what the cloud saw.

Payloads are JSON (UTF-8), at most :data:`MAX_PAYLOAD_BYTES`. A receiver checks ``v`` first and refuses a
schema version it does not know.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kyojo.contract.errors import KyojoError
from kyojo.contract.vocab import ID_PATTERN, METRICS, Category, plausible_delta
from kyojo.contract.vocab import valid_id as valid_id

__all__ = [
    "AUDIT_HEAD_PATTERN",
    "MAX_ITEMS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SPAN_S",
    "SCHEMA_VERSION",
    "SLOT_S",
    "TOKEN_WH",
    "TOPIC_ROOT",
    "TRADING_PURPOSE",
    "AggregateBatch",
    "AggregateItem",
    "AttrValue",
    "AuditAnchor",
    "ConsentRecord",
    "ConsentStatus",
    "ErasureReceipt",
    "EventBatch",
    "EventItem",
    "GatewayStatus",
    "Ident",
    "MeterReport",
    "TradeOrder",
    "TradingEnrollment",
    "WireError",
    "agg_topic",
    "anchor_topic",
    "consent_topic",
    "decode_batch",
    "decode_consent",
    "decode_events",
    "decode_trade",
    "event_topic",
    "parse_audit_head",
    "parse_topic",
    "read_challenge",
    "receipt_topic",
    "status_topic",
    "trade_topic",
    "valid_id",
]

SCHEMA_VERSION = 1
TOPIC_ROOT = "kyojo/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_ITEMS = 2000
MAX_SPAN_S = 30 * 86_400

Ident = Annotated[str, Field(pattern=ID_PATTERN)]
#: ``"<n>:<64 hex>"``: an audit entry number and its hash (see the module docstring)
AUDIT_HEAD_PATTERN = r"^[0-9]{1,19}:[0-9a-f]{64}$"


class WireError(KyojoError, ValueError):
    """A message that breaks the contract; ``cause`` is a stable counter label."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AggregateItem(_Msg):
    """One window of one series. ``start`` is the window start in epoch milliseconds (UTC).

    Gauges carry count/mean/min/max/last; counters (energy) carry ``delta`` over the window and ``last``.
    The cloud stores the item as one point keyed by (metric, gateway, subject, device, purpose, start), so a
    redelivered item overwrites itself instead of doubling.
    """

    metric: str
    subject: Ident
    device: Ident
    start: int = Field(ge=0)
    window_s: int = Field(gt=0, le=86_400)
    count: int = Field(ge=1)
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    last: float
    delta: float | None = None
    #: seconds the counter ``delta`` covers when more than the window (from the counter's previous reading,
    #: e.g. after the device was out of reach); at most 30 days
    span_s: int | None = Field(default=None, gt=0, le=MAX_SPAN_S)

    @model_validator(mode="after")
    def _known_metric(self) -> AggregateItem:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}")
        if self.delta is not None:
            seconds = max(self.window_s, self.span_s or 0)
            if not plausible_delta(self.metric, self.delta, seconds):
                # a counter never decreases, and never grows faster than any supply could deliver (a 1 GWh
                # "roll-over" in a minute is a gateway bug, not energy): refused, not stored
                raise ValueError(f"implausible {self.metric} delta {self.delta!r} over {seconds}s")
        return self


class AggregateBatch(_Msg):
    """What a gateway releases: aggregates of one category, for one purpose, under one consent."""

    v: Literal[1] = 1
    gateway: Ident
    seq: int = Field(ge=0)
    sent: int = Field(ge=0, description="epoch ms when the batch was queued")
    consent: Ident
    purpose: Ident
    category: Category
    audit_head: str | None = Field(default=None, max_length=128)
    items: list[AggregateItem] = Field(min_length=1, max_length=MAX_ITEMS)


AttrValue = Annotated[str, Field(max_length=200)] | float | int | bool


class EventItem(_Msg):
    """One event: a pickup, an alert. Stored by the cloud keyed by (kind, subject, device, at, id)."""

    id: Ident
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
    subject: Ident
    device: Ident
    at: int = Field(ge=0, description="epoch ms")
    severity: Literal["info", "warning", "urgent"] = "info"
    attrs: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")], AttrValue] = Field(
        default_factory=dict, max_length=32
    )


class EventBatch(_Msg):
    """Events of one category, for one purpose, under one consent."""

    v: Literal[1] = 1
    gateway: Ident
    seq: int = Field(ge=0)
    sent: int = Field(ge=0)
    consent: Ident
    purpose: Ident
    category: Category
    audit_head: str | None = Field(default=None, max_length=128)
    events: list[EventItem] = Field(min_length=1, max_length=MAX_ITEMS)


class ConsentStatus(StrEnum):
    ACTIVE = "active"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class ConsentRecord(_Msg):
    """The part of a consent the cloud needs to enforce it. Travels retained on its own topic."""

    v: Literal[1] = 1
    gateway: Ident
    id: Ident
    subject: Ident
    purpose: Ident
    categories: list[Category] = Field(min_length=1)
    status: ConsentStatus
    given_at: datetime
    expires_at: datetime | None = None
    withdrawn_at: datetime | None = None
    #: Ed25519 signature (base64) by the gateway's signing key over :meth:`signing_bytes`; the cloud checks it
    #: against the key registered at enrollment
    sig: str | None = Field(default=None, max_length=200)

    def signing_bytes(self) -> bytes:
        """What the signature covers: canonical JSON of every field but ``sig``."""
        doc = self.model_dump(mode="json", exclude={"sig"})
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def active_at(self, when: datetime) -> bool:
        if self.status is not ConsentStatus.ACTIVE:
            return False
        return self.expires_at is None or when < self.expires_at


class ErasureReceipt(_Msg):
    """The cloud's confirmation that it erased what it held under a withdrawn consent."""

    v: Literal[1] = 1
    gateway: Ident
    consent: Ident
    subject: Ident  # the per-purpose pseudonym the cloud knows
    purpose: Ident
    points_erased: int = Field(ge=0)
    remaining: int = Field(ge=0, description="points still matching after the delete: 0 when verified")
    erased_at: datetime
    store: str = Field(max_length=200, description="where it was erased, e.g. influxdb:kyojo")


class DisasterDeclaration(_Msg):
    """The city declares (or ends) a disaster for an area (cloud -> every gateway, retained on
    :func:`disaster_topic`). Signed with the city CA's key (ECDSA P-256, SHA-256, DER, base64) over
    :meth:`signing_bytes`; ``seq`` grows with every declaration the city issues, so a gateway refuses a replayed
    or an older one. ``status`` ``ended`` ends declaration ``id`` before ``ends_at``."""

    v: Literal[1] = 1
    id: Ident
    seq: int = Field(ge=1)
    area: Ident
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "earthquake"
    status: Literal["active", "ended"] = "active"
    issued_at: datetime
    ends_at: datetime
    sig: str | None = Field(default=None, max_length=200)

    def signing_bytes(self) -> bytes:
        doc = self.model_dump(mode="json", exclude={"sig"})
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


#: the catalog purpose under which a household trades energy (kyojo/contract/purposes.json)
TRADING_PURPOSE = "energy-trading"
#: a trading slot: 30 minutes, starting on the hour or the half hour (UTC epoch seconds)
SLOT_S = 1800
#: what one ledger token is: one watt-hour delivered (1 kWh = 1000 tokens); integers only, so sums are exact
TOKEN_WH = 1
_Sig = Annotated[str, Field(max_length=200)]
_PubKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]


class _Signed(_Msg):
    """A message its maker signs (Ed25519, base64) over :meth:`signing_bytes`: canonical JSON without ``sig``."""

    sig: _Sig | None = None

    def signing_bytes(self) -> bytes:
        doc = self.model_dump(mode="json", exclude={"sig"})
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


class TradingEnrollment(_Signed):
    """A household joins the trading ledger (gateway -> city, once per consent).

    ``account`` is the household's ``energy-trading`` pseudonym and must be the ``subject`` of ``consent``, an
    active energy-trading consent record signed by the same gateway. ``key`` is the household's trading key
    (Ed25519, base64 of the 32 raw bytes; :meth:`kyojo.keys.GatewayKeys.purpose_public_key_b64`), which signs its
    offers, bids and meter reports from then on. The whole message is signed with the gateway's enrolled signing
    key (the one the city CA registered at enrollment), so the city can trace it to a gateway; the ledger itself
    records only ``account`` and ``key``.
    """

    v: Literal[1] = 1
    gateway: Ident
    account: Ident
    key: _PubKey
    consent: ConsentRecord
    made_at: datetime


class TradeOrder(_Signed):
    """An offer (sell the forecast surplus) or a bid (buy) for one future slot, signed with the account's trading
    key. ``wh``: energy in watt-hours (= tokens); ``price``: the limit in yen per kWh (at least this for an offer,
    at most this for a bid). ``id`` is the account's own order id: an order id is used once per account."""

    v: Literal[1] = 1
    kind: Literal["offer", "bid"]
    id: Ident
    account: Ident
    slot: int = Field(ge=0, multiple_of=SLOT_S, description="slot start, UTC epoch seconds")
    wh: int = Field(gt=0, le=1_000_000)
    price: int = Field(ge=0, le=1000)
    made_at: datetime


class MeterReport(_Signed):
    """What the account's meter measured over one traded slot, signed with its trading key: ``export`` (a seller's
    energy into the grid) or ``import`` (a buyer's energy from the grid), watt-hours. One per account, slot and
    direction."""

    v: Literal[1] = 1
    account: Ident
    slot: int = Field(ge=0, multiple_of=SLOT_S)
    direction: Literal["export", "import"]
    wh: int = Field(ge=0, le=10_000_000)
    made_at: datetime


def read_challenge(account: str, at: int) -> bytes:
    """What an account signs to read its own ledger entries at epoch second ``at`` (cloud_ingest/ledger/web.py)."""
    return f"kyojo-ledger-read\0{account}\0{at}".encode()


def trade_topic(gateway: str, kind: str) -> str:
    """Where a gateway publishes its trading messages: ``kyojo/v1/<gw>/trade/<enroll|order|meter>``."""
    return f"{TOPIC_ROOT}/{gateway}/trade/{kind}"


def decode_trade(payload: bytes) -> TradingEnrollment | TradeOrder | MeterReport:
    """One trading message (enrollment, order or meter report) from its JSON; WireError otherwise."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    doc = _load_versioned(payload)
    model: type[TradingEnrollment | TradeOrder | MeterReport]
    if "consent" in doc:
        model = TradingEnrollment
    elif "kind" in doc:
        model = TradeOrder
    else:
        model = MeterReport
    try:
        return model.model_validate(doc)
    except ValueError as err:
        raise WireError("invalid", _short(err)) from err


class AuditAnchor(_Msg):
    """The newest audit head the cloud holds for a gateway (cloud -> gateway, retained).

    ``n``/``hash``: the entry the gateway last vouched for in a batch. ``conflicts``: how many times the cloud
    saw this gateway go back (a lower ``n``) or change the hash of an entry it already had: non-zero means the
    log was truncated or rewritten after it was anchored.
    """

    v: Literal[1] = 1
    gateway: Ident
    n: int = Field(ge=1)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    seen_at: datetime
    conflicts: int = Field(default=0, ge=0)
    #: the batch number (``seq``) that carried this head
    seq: int | None = Field(default=None, ge=0)


def parse_audit_head(value: str | None) -> tuple[int, str] | None:
    """``"<n>:<hash>"`` -> (n, hash); None for a missing or old-style (hash-only) head."""
    if not value or ":" not in value:
        return None
    n_text, _, digest = value.partition(":")
    if not n_text.isdigit() or len(digest) != 64 or n_text.startswith("0"):
        return None
    try:
        int(digest, 16)
    except ValueError:
        return None
    return int(n_text), digest


class GatewayStatus(_Msg):
    v: Literal[1] = 1
    gateway: Ident
    online: bool
    at: int = Field(ge=0)
    detail: dict[str, float | int | str | bool] = Field(default_factory=dict)


#: the alphabet of a family code (Crockford's base32: no I, L, O, U to misread)
FAMILY_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def normalize_family_code(code: str) -> str | None:
    """A family code as typed (any case, with or without dashes/spaces) in its canonical 16-character form; None
    when it cannot be one."""
    raw = "".join(ch for ch in code.upper() if ch not in "- ")
    raw = raw.replace("O", "0").replace("I", "1").replace("L", "1")
    return raw if len(raw) == 16 and all(ch in FAMILY_ALPHABET for ch in raw) else None


def family_key(code: str) -> str:
    """What a watch-over event carries instead of the family code (``attrs.family_key``) and what the cloud's
    notifier files a family's sign-up under: neither can be turned back into the code. ValueError: not a code."""
    canon = normalize_family_code(code)
    if canon is None:
        raise ValueError("not a family code (16 letters and digits, e.g. KJ7Q-M2XP-9RT4-WZ3H)")
    return hashlib.sha256(f"kyojo-watchover|{canon}".encode()).hexdigest()[:32]


def agg_topic(gateway: str, category: Category | str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/agg/{Category(category).value}"


def event_topic(gateway: str, category: Category | str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/event/{Category(category).value}"


def consent_topic(gateway: str, consent_id: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/consent/{consent_id}"


def receipt_topic(gateway: str, consent_id: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/receipt/{consent_id}"


def anchor_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/anchor"


def disaster_topic() -> str:
    """The city's disaster declarations, retained; every gateway reads it, only the city's downlink writes it."""
    return f"{TOPIC_ROOT}/city/disaster"


def status_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/status"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split ``kyojo/v1/<gw>/<kind>/<rest>`` into (gateway, kind, rest); raise WireError otherwise."""
    parts = topic.split("/", 4)
    if len(parts) < 4 or parts[0] != "kyojo" or parts[1] != "v1":
        raise WireError("bad_topic", topic[:200])
    rest = parts[4] if len(parts) == 5 else ""
    return parts[2], parts[3], rest


_M = TypeVar("_M", AggregateBatch, EventBatch, ConsentRecord)


def _decode(topic: str, payload: bytes, kind: str, model: type[_M]) -> tuple[_M, str, str]:
    """Size, topic kind, JSON, schema version, model: the checks every message type shares."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    gateway, got_kind, rest = parse_topic(topic)
    if got_kind != kind:
        raise WireError("bad_topic", topic[:200])
    doc = _load_versioned(payload)
    try:
        msg = model.model_validate(doc)
    except ValueError as err:
        raise WireError("invalid", _short(err)) from err
    return msg, gateway, rest


_B = TypeVar("_B", AggregateBatch, EventBatch)


def _decode_stream(topic: str, payload: bytes, kind: str, model: type[_B]) -> _B:
    """A batch (aggregates or events): its gateway and category must be the topic's."""
    batch, gateway, rest = _decode(topic, payload, kind, model)
    if batch.gateway != gateway:
        raise WireError("gateway_mismatch", f"topic {gateway!r} != payload {batch.gateway!r}")
    category = batch.category.value
    if rest != category:
        raise WireError("category_mismatch", f"topic {rest!r} != payload {category!r}")
    return batch


def decode_batch(topic: str, payload: bytes) -> AggregateBatch:
    """Validate one aggregate message against its topic. Raises WireError with a stable cause."""
    return _decode_stream(topic, payload, "agg", AggregateBatch)


def decode_events(topic: str, payload: bytes) -> EventBatch:
    """Validate one event message against its topic. Raises WireError with a stable cause."""
    return _decode_stream(topic, payload, "event", EventBatch)


def decode_consent(topic: str, payload: bytes) -> ConsentRecord:
    """Validate one retained consent record; its topic must name its gateway and id."""
    record, gateway, rest = _decode(topic, payload, "consent", ConsentRecord)
    if record.gateway != gateway or record.id != rest:
        raise WireError("gateway_mismatch", f"topic {topic!r} does not match record {record.id!r}")
    return record


def _load_versioned(payload: bytes) -> dict[str, object]:
    """Parse JSON once and check the schema version before anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise WireError("bad_json", str(err)[:200]) from err
    if not isinstance(doc, dict):
        raise WireError("invalid", "payload is not a JSON object")
    version = doc.get("v")
    if version != SCHEMA_VERSION:
        raise WireError("schema_version", f"v={version!r}, this side speaks v{SCHEMA_VERSION}")
    return doc


def _short(err: ValueError) -> str:
    text = str(err).replace("\n", " ")
    return text[:300]

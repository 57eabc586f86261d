"""Decoding aggregate messages into line protocol: a fast path, and the contract as the fallback.

``kyojo.contract.wire.decode_batch`` (pydantic) is the single definition of a valid message. Validating with it
and then building lines from the models costs ~60 us for a 10-item message, which alone would cap an ingester
near 16k messages/s before paho's own cost. The fast path here parses the JSON once (orjson), checks a
*subset* of what the contract accepts with plain Python, and builds the lines in the same pass.

The rule that keeps the contract the single definition: the fast path may only say "valid" (and return the
decoded batch) or "not sure" (return None). It never rejects. On "not sure" the caller runs ``decode_batch``,
which either raises :class:`WireError` with the contract's own cause or returns models, from which the slow
path builds identical lines. tests/ingest/test_ingest_decode.py checks on a table and with hypothesis that whenever
the fast path accepts, ``decode_batch`` accepts too and the lines are equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from cloud_ingest.lineproto import LineBuilder, event_lines, fields_text
from kyojo.contract.vocab import METRICS, Category, plausible_delta
from kyojo.contract.wire import MAX_ITEMS, MAX_PAYLOAD_BYTES, AggregateBatch, decode_batch, decode_events

# fullmatch, not the contract's ``^...$``: Python's ``$`` also matches before a trailing newline, pydantic's
# (Rust) regex does not; fullmatch is the stricter of the two, which is what a fast path may be.
_ident = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}").fullmatch
_CATEGORY_OF = {name: spec.category.value for name, spec in METRICS.items()}
_CATEGORIES = frozenset(c.value for c in Category)
_BATCH_KEYS = frozenset({"v", "gateway", "seq", "sent", "consent", "purpose", "category", "audit_head", "items"})
_ITEM_KEYS = frozenset(
    {"metric", "subject", "device", "start", "window_s", "count", "mean", "min", "max", "last", "delta"}
)
_FLOAT_INT_LIMIT = 2**53  # an int beyond this does not convert to float exactly; leave it to pydantic
_loads = orjson.loads


@dataclass(frozen=True, slots=True)
class Decoded:
    """What the ingester needs from one valid aggregate message."""

    gateway: str
    consent: str
    purpose: str
    category: str
    sent: int
    subjects: frozenset[str]
    #: True when every item's metric belongs to the batch's category.
    metrics_in_category: bool
    #: the points, one line each, joined with "\n" (no trailing newline)
    body: str
    points: int
    #: the devices named by the items (pseudonyms)
    devices: frozenset[str] = frozenset()
    #: earliest item time and latest item end (epoch ms): a window's start and start + window; an event's time
    t_min: int = 0
    t_max: int = 0
    #: the shortest window of any item (seconds); 0 for events, which have none
    min_window: int = 0
    seq: int = 0
    #: the batch's ``audit_head`` as sent (``"<n>:<hash>"``; None or an old bare hash from older gateways)
    audit_head: str | None = None
    #: the kinds of an event batch's events (empty for aggregates)
    kinds: frozenset[str] = frozenset()
    #: the areas an event batch's events name (a disaster status's ``area``; empty otherwise)
    areas: frozenset[str] = frozenset()


class IdentCache:
    """Strings already known to be valid identifiers (bounded)."""

    __slots__ = ("_max", "_ok")

    def __init__(self, maximum: int = 100_000) -> None:
        self._ok: set[str] = set()
        self._max = maximum

    def valid(self, value: object) -> bool:
        """True when ``value`` is a str matching the contract's identifier pattern."""
        if value.__class__ is not str:
            return False
        ok = self._ok
        if value in ok:
            return True
        if _ident(value) is None:
            return False
        if len(ok) >= self._max:
            ok.clear()
        ok.add(value)
        return True


def _num(value: object) -> float | None:
    """A JSON number pydantic's ``float`` accepts exactly as we would, else None ("not sure")."""
    cls = value.__class__
    if cls is float:
        return value  # type: ignore[return-value]
    if cls is int and -_FLOAT_INT_LIMIT <= value <= _FLOAT_INT_LIMIT:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    return None


class BatchDecoder:
    """Decodes aggregate messages to :class:`Decoded` (fast path first, the contract as fallback)."""

    __slots__ = ("builder", "fast_hits", "ids", "slow_hits")

    def __init__(self, builder: LineBuilder | None = None) -> None:
        self.builder = builder or LineBuilder()
        self.ids = IdentCache()
        self.fast_hits = 0
        self.slow_hits = 0

    def decode(self, topic: str, payload: bytes | bytearray | memoryview) -> Decoded:
        """Decode one message or raise ``WireError`` with the contract's cause."""
        if "/event/" in topic:
            return self.events(topic, payload)
        fast = self.fast(topic, payload)
        if fast is not None:
            self.fast_hits += 1
            return fast
        self.slow_hits += 1
        return self.slow(topic, payload)

    def events(self, topic: str, payload: bytes | bytearray | memoryview) -> Decoded:
        """Event messages (rare next to aggregates): always through the contract."""
        batch = decode_events(topic, bytes(payload))
        lines = event_lines(batch, self.builder.scope)
        times = [ev.at for ev in batch.events]
        return Decoded(
            gateway=batch.gateway,
            consent=batch.consent,
            purpose=batch.purpose,
            category=batch.category.value,
            sent=batch.sent,
            subjects=frozenset(ev.subject for ev in batch.events),
            metrics_in_category=True,
            body="\n".join(lines),
            points=len(lines),
            devices=frozenset(ev.device for ev in batch.events),
            kinds=frozenset(ev.kind for ev in batch.events),
            areas=frozenset(str(ev.attrs["area"]) for ev in batch.events if "area" in ev.attrs),
            t_min=min(times),
            t_max=max(times),
            seq=batch.seq,
            audit_head=batch.audit_head,
        )

    def slow(self, topic: str, payload: bytes | bytearray | memoryview) -> Decoded:
        """The contract (``decode_batch``) and lines built from its models."""
        batch = decode_batch(topic, bytes(payload))
        return self.from_model(batch)

    def from_model(self, batch: AggregateBatch) -> Decoded:
        """A :class:`Decoded` built from validated models."""
        category = batch.category.value
        lines = self.builder.batch_lines(batch)
        return Decoded(
            gateway=batch.gateway,
            consent=batch.consent,
            purpose=batch.purpose,
            category=category,
            sent=batch.sent,
            subjects=frozenset(item.subject for item in batch.items),
            metrics_in_category=all(_CATEGORY_OF[item.metric] == category for item in batch.items),
            body="\n".join(lines),
            points=len(lines),
            devices=frozenset(item.device for item in batch.items),
            t_min=min(item.start for item in batch.items),
            t_max=max(item.start + item.window_s * 1000 for item in batch.items),
            min_window=min(item.window_s for item in batch.items),
            seq=batch.seq,
            audit_head=batch.audit_head,
        )

    def fast(self, topic: str, payload: bytes | bytearray | memoryview) -> Decoded | None:
        """The fast path: a Decoded when the message is certainly valid, None when not sure."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        parts = topic.split("/")
        if len(parts) != 5 or parts[0] != "kyojo" or parts[1] != "v1" or parts[3] != "agg":
            return None
        try:
            doc = _loads(payload)
        except orjson.JSONDecodeError:
            return None
        if doc.__class__ is not dict or not _BATCH_KEYS.issuperset(doc):
            return None
        valid = self.ids.valid
        try:
            v = doc["v"]
            gateway = doc["gateway"]
            seq = doc["seq"]
            sent = doc["sent"]
            consent = doc["consent"]
            purpose = doc["purpose"]
            category = doc["category"]
            items = doc["items"]
        except KeyError:
            return None
        if (
            v.__class__ is not int
            or v != 1
            or gateway != parts[2]
            or category != parts[4]
            or category not in _CATEGORIES
            or seq.__class__ is not int
            or seq < 0
            or sent.__class__ is not int
            or sent < 0
            or not valid(gateway)
            or not valid(consent)
            or not valid(purpose)
            or items.__class__ is not list
            or not 0 < len(items) <= MAX_ITEMS
        ):
            return None
        audit = doc.get("audit_head")
        if audit is not None and (audit.__class__ is not str or len(audit) > 128):
            return None
        # Per item: (metric, device, subject) -> (escaped series prefix, metric's category). A key is stored
        # only after all three passed validation, so a hit proves them valid. A key holding a non-str never
        # equals a stored (all-str) key; an unhashable one raises TypeError ("not sure").
        heads = self.builder.heads(category, gateway, purpose)
        item_keys = _ITEM_KEYS
        category_of = _CATEGORY_OF
        subject0: str | None = None
        subjects: set[str] | None = None
        devices: set[str] = set()
        add_device = devices.add
        t_min = t_max = -1
        min_window = 86_401
        in_category = True
        lines: list[str] = []
        append = lines.append
        for item in items:
            if item.__class__ is not dict or not item_keys.issuperset(item):
                return None
            try:
                metric = item["metric"]
                subject = item["subject"]
                device = item["device"]
                start = item["start"]
                window_s = item["window_s"]
                count = item["count"]
                last = item["last"]
                key = (metric, device, subject)
                hit = heads.get(key)
            except (KeyError, TypeError):
                return None
            if hit is None:
                mcat = category_of.get(metric) if metric.__class__ is str else None
                if mcat is None or not valid(subject) or not valid(device):
                    return None
                hit = heads[key] = (self.builder.series(metric, category, device, gateway, purpose, subject), mcat)
            head, mcat = hit
            if (
                start.__class__ is not int
                or start < 0
                or window_s.__class__ is not int
                or not 0 < window_s <= 86_400
                or count.__class__ is not int
                or count < 1
            ):
                return None
            if last.__class__ is not float and (last := _num(last)) is None:
                return None
            mean = item.get("mean")
            vmin = item.get("min")
            vmax = item.get("max")
            delta = item.get("delta")
            if mcat != category:
                in_category = False
            add_device(device)
            if start < t_min or t_min < 0:
                t_min = start
            end = start + window_s * 1000
            if end > t_max:
                t_max = end
            if window_s < min_window:
                min_window = window_s
            if subject != subject0:
                if subject0 is None:
                    subject0 = subject
                else:
                    if subjects is None:
                        subjects = {subject0}
                    subjects.add(subject)
            # The common gauge shape: four finite floats and no delta. ``x - x == 0.0`` is False exactly for
            # NaN and +/-Inf (both give NaN), an inlined isfinite.
            if (
                delta is None
                and mean.__class__ is float
                and vmin.__class__ is float
                and vmax.__class__ is float
                and mean - mean == 0.0
                and vmin - vmin == 0.0
                and vmax - vmax == 0.0
                and last - last == 0.0
            ):
                append(
                    f"{head} count={count}i,window_s={window_s}i,mean={mean!r},min={vmin!r},max={vmax!r},"
                    f"last={last!r} {start}"
                )
                continue
            if mean is not None and (mean := _num(mean)) is None:
                return None
            if vmin is not None and (vmin := _num(vmin)) is None:
                return None
            if vmax is not None and (vmax := _num(vmax)) is None:
                return None
            if delta is not None and ((delta := _num(delta)) is None or not plausible_delta(metric, delta, window_s)):
                return None  # not sure: the contract decides (an implausible delta is refused there)
            append(f"{head} {fields_text(count, window_s, mean, vmin, vmax, last, delta)} {start}")
        return Decoded(
            gateway=gateway,
            consent=consent,
            purpose=purpose,
            category=category,
            sent=sent,
            subjects=frozenset(subjects) if subjects is not None else frozenset((subject0,) if subject0 else ()),
            metrics_in_category=in_category,
            body="\n".join(lines),
            points=len(lines),
            devices=frozenset(devices),
            t_min=t_min,
            t_max=t_max,
            min_window=min_window,
            seq=seq,
            audit_head=audit,
        )

"""Hand-built InfluxDB line protocol (precision: milliseconds).

Line protocol facts this module relies on (InfluxDB 1.x and 2.x agree)::

    <measurement>[,<tag_key>=<tag_value>...] <field_key>=<field_value>[,...] [<timestamp>]

- measurement: comma and space must be escaped with a backslash;
- tag keys, tag values and field keys: comma, equals sign and space must be escaped;
- string field values are double-quoted, with ``"`` and ``\\`` escaped;
- integers carry an ``i`` suffix, floats are written as decimal (Python ``repr`` is exact and round-trips);
- NaN and +/-Inf cannot be stored: such fields are left out;
- tags should be sorted by key (InfluxDB sorts them anyway; pre-sorted input is cheaper for the server).

A point is identified by measurement + tag set + timestamp: writing the same point again overwrites its
fields, which is what makes a redelivered MQTT message harmless.

``influxdb_client.Point`` produces the same text but is 6-8x slower (docs/ARCHITECTURE.md, "Pitfalls measured"),
so the ingester builds lines by hand and caches the escaped tag set per series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from cloud_ingest.scope import Scope
from kyojo.contract.wire import AggregateBatch, AggregateItem, EventBatch

_MEAS_TABLE = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_TAG_TABLE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_STR_TABLE = str.maketrans({'"': r"\"", "\\": "\\\\", "\n": r"\n"})

_isfinite = math.isfinite

#: Field order of an aggregate point (count and window_s are always present; the rest only when not None).
FLOAT_FIELDS = ("mean", "min", "max", "last", "delta")


def escape_measurement(name: str) -> str:
    """Escape a measurement name (comma, space)."""
    return name.translate(_MEAS_TABLE)


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key (comma, equals, space)."""
    return text.translate(_TAG_TABLE)


def quote_string(text: str) -> str:
    """Quote a string field value (``"`` and ``\\`` escaped)."""
    return '"' + text.translate(_STR_TABLE) + '"'


def format_field(value: bool | int | float | str) -> str | None:
    """One field value in line protocol; ``None`` for a float that cannot be stored (NaN, Inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if _isfinite(value) else None
    return quote_string(value)


def line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, bool | int | float | str | None],
    ts: int | None = None,
) -> str:
    """A generic point as one line. Tags are sorted by key; ``None`` and non-finite fields are skipped.

    Raises ValueError when no field is left (a point needs at least one field), and for a measurement that starts
    with ``#``: such a line is a comment to InfluxDB, so the point would vanish without an error.
    """
    if measurement.startswith("#"):
        raise ValueError(f"measurement {measurement!r}: a line starting with '#' is a comment in line protocol")
    head = escape_measurement(measurement)
    for key in sorted(tags):
        head += f",{escape_tag(key)}={escape_tag(tags[key])}"
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = format_field(value)
        if text is not None:
            parts.append(f"{escape_tag(key)}={text}")
    if not parts:
        raise ValueError("a point needs at least one field")
    out = f"{head} {','.join(parts)}"
    return out if ts is None else f"{out} {ts}"


class LineBuilder:
    """Turns aggregate items into line-protocol points, caching the escaped tag set per series.

    Tags (sorted by key): category, device, household, purpose, subject. device and subject are the gateway's
    per-purpose pseudonyms; household is the cloud's keyed tag of the sending gateway under the purpose
    (:mod:`cloud_ingest.scope`), which makes every series the sending gateway's own. No gateway tag: the gateway
    id would let an analyst join one household's purposes (the topic still names it, for identity and ACLs, but it
    is not stored). Fields: count and window_s (integers),
    mean/min/max/last/delta (floats, left out when None or non-finite). Timestamp: the window start, epoch ms.
    """

    __slots__ = ("_cache", "_heads", "_max_cache", "scope")

    def __init__(self, max_cache: int = 200_000, *, scope: Scope | None = None) -> None:
        self.scope = scope if scope is not None else Scope()
        self._cache: dict[tuple[str, str, str, str, str, str], str] = {}
        self._heads: dict[tuple[str, str, str], dict[tuple[str, str, str], tuple[str, str]]] = {}
        self._max_cache = max_cache

    def heads(self, category: str, gateway: str, purpose: str) -> dict[tuple[str, str, str], tuple[str, str]]:
        """A per-(category, gateway, purpose) map for the decoder's own use: (metric, device, subject) ->
        (series prefix, metric's category). The decoder fills it, only with validated identifiers."""
        key = (category, gateway, purpose)
        heads = self._heads.get(key)
        if heads is None:
            if len(self._heads) >= self._max_cache:
                self._heads.clear()
            heads = self._heads[key] = {}
        elif len(heads) >= 10_000:
            heads.clear()
        return heads

    def series(self, metric: str, category: str, device: str, gateway: str, purpose: str, subject: str) -> str:
        """The escaped ``measurement,tags`` prefix of one series (cached)."""
        key = (metric, category, device, gateway, purpose, subject)
        head = self._cache.get(key)
        if head is None:
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            household = self.scope.household(gateway, purpose)
            head = (
                f"{escape_measurement(metric)},category={escape_tag(category)},device={escape_tag(device)}"
                f",household={household},purpose={escape_tag(purpose)},subject={escape_tag(subject)}"
            )
            self._cache[key] = head
        return head

    def item_line(self, batch: AggregateBatch, item: AggregateItem) -> str:
        """One aggregate item as one line."""
        head = self.series(item.metric, batch.category.value, item.device, batch.gateway, batch.purpose, item.subject)
        return (
            head
            + " "
            + _fields(item.count, item.window_s, item.mean, item.min, item.max, item.last, item.delta)
            + f" {item.start}"
        )

    def batch_lines(self, batch: AggregateBatch) -> list[str]:
        """Every item of a batch, one line each."""
        return [self.item_line(batch, item) for item in batch.items]


def _fields(
    count: int,
    window_s: int,
    mean: float | None,
    vmin: float | None,
    vmax: float | None,
    last: float | None,
    delta: float | None,
) -> str:
    text = f"count={count}i,window_s={window_s}i"
    if mean is not None and _isfinite(mean):
        text += f",mean={mean!r}"
    if vmin is not None and _isfinite(vmin):
        text += f",min={vmin!r}"
    if vmax is not None and _isfinite(vmax):
        text += f",max={vmax!r}"
    if last is not None and _isfinite(last):
        text += f",last={last!r}"
    if delta is not None and _isfinite(delta):
        text += f",delta={delta!r}"
    return text


fields_text = _fields


#: measurement of every event (pickups, alerts); the event's kind is a tag
EVENTS_MEASUREMENT = "events"


_DEV_SCOPE: Scope | None = None


def event_lines(batch: EventBatch, scope: Scope | None = None) -> list[str]:
    """Events as points: measurement ``events``; tags category, device, household, kind, purpose, severity,
    subject; fields ``event_id`` (string) and the event's attributes; timestamp: when it happened (ms).

    ``scope``: the ingester's (None: the development key, for tests and tools)."""
    global _DEV_SCOPE
    if scope is None:
        scope = _DEV_SCOPE = _DEV_SCOPE or Scope()
    household = scope.household(batch.gateway, batch.purpose)
    out = []
    for ev in batch.events:
        head = (
            f"{EVENTS_MEASUREMENT},category={escape_tag(batch.category.value)},device={escape_tag(ev.device)}"
            f",household={household},kind={escape_tag(ev.kind)},purpose={escape_tag(batch.purpose)}"
            f",severity={escape_tag(ev.severity)},subject={escape_tag(ev.subject)}"
        )
        fields = [f"event_id={quote_string(ev.id)}"]
        for key, value in sorted(ev.attrs.items()):
            if key == "event_id":
                continue
            if isinstance(value, bool):
                fields.append(f"{key}={'true' if value else 'false'}")
            elif isinstance(value, int):
                fields.append(f"{key}={value}i")
            elif isinstance(value, float):
                if _isfinite(value):
                    fields.append(f"{key}={value!r}")
            else:
                fields.append(f"{key}={quote_string(value)}")
        out.append(f"{head} {','.join(fields)} {ev.at}")
    return out

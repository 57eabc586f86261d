"""Raw store -> tumbling windows -> consent gate -> outbox, all in the gateway database.

Aggregates are computed from committed raw rows, not from memory, so a kill -9 loses at most the readings not
yet committed (one commit interval) and never half a window: closing a window, queueing its messages, logging
their release and moving the watermark happen in one transaction. A restart closes the windows that fell due
while the agent was down from the rows that survived.

Window semantics: [start, start + window), start aligned to the epoch. A window closes once the clock is past
its end plus a grace period for late readings; a reading older than its category's watermark is still stored
raw but counted as ``late`` and never released.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from edge_agent import audit
from edge_agent.config import AgentConfig
from edge_agent.consent import (
    Catalog,
    Consent,
    ConsentStore,
    consent_version,
    default_catalog,
    drop_queued,
    list_consents,
)
from edge_agent.db import meta_add, tx
from kyojo.contract.vocab import METRICS, Aggregation, Category, Event, Reading, plausible_delta
from kyojo.contract.wire import (
    MAX_SPAN_S,
    AggregateBatch,
    AggregateItem,
    EventBatch,
    EventItem,
    agg_topic,
    event_topic,
)
from kyojo.keys import GatewayKeys, load_keys

log = logging.getLogger(__name__)

RELEASED = (Category.HEALTH, Category.ENERGY, Category.EV, Category.MOBILITY)
#: series of model estimates (``extra["estimated"] == "true"``) keep a watermark of their own per category, so an
#: estimate that describes a past minute (NILM: up to an hour) does not hold back the measured series
ESTIMATED = ".estimated"


def stream_of(r: Reading) -> str:
    """Watermark key of a reading: its category, or ``<category>.estimated`` for model estimates."""
    cat = METRICS[r.metric].category.value
    return cat + ESTIMATED if r.extra.get("estimated") == "true" else cat


@dataclass(frozen=True, slots=True)
class SeriesKey:
    device: str
    subject: str
    metric: str


def counter_delta(
    metric: str,
    values: Sequence[float],
    times_ms: Sequence[int] | None,
    prev: float | None,
    prev_ms: int | None,
    held: Counter[str] | None = None,
) -> float:
    """What a counter grew by over ``values`` (after ``prev``, the last value before them).

    The drivers already make device counters monotonic (:mod:`drivers.counter`: roll-over, reset, re-read and
    glitch told apart), so this is the last guard before anything leaves: a step down adds nothing (state was
    lost, e.g. a restart after a roll-over), and a step up faster than the metric's physical ceiling
    (:func:`kyojo.contract.vocab.plausible_delta`) adds nothing either; both are counted in ``held`` by cause. Either
    way the value becomes the new base, so one bad reading costs at most its own step.
    """
    delta = 0.0
    for i, v in enumerate(values):
        t = times_ms[i] if times_ms is not None else None
        if prev is not None:
            step = v - prev
            if step < 0:
                if held is not None:
                    held["counter_backwards"] += 1
            elif t is not None and prev_ms is not None and not plausible_delta(metric, step, (t - prev_ms) / 1000):
                if held is not None:
                    held["counter_implausible"] += 1
            else:
                delta += step
        prev, prev_ms = v, t
    return delta


def aggregate_series(
    key: SeriesKey,
    start_ms: int,
    window_s: int,
    values: Sequence[float],
    prev_counter: float | None,
    *,
    times_ms: Sequence[int] | None = None,
    prev_ms: int | None = None,
    held: Counter[str] | None = None,
) -> AggregateItem:
    """Summarise one series over one window. ``values`` are in time order (``times_ms``, when known, theirs);
    ``prev_counter`` is the counter's last value before this window (None for a series' first window) and
    ``prev_ms`` its time.

    Counters: ``delta`` is :func:`counter_delta`; when it reaches back beyond the window (the previous reading is
    older than the window start), ``span_s`` says how far, so the cloud can check it against the physical ceiling.
    """
    common = {
        "metric": key.metric,
        "subject": key.subject,
        "device": key.device,
        "start": start_ms,
        "window_s": window_s,
        "count": len(values),
        "last": values[-1],
    }
    if METRICS[key.metric].aggregation is Aggregation.COUNTER:
        delta = counter_delta(key.metric, values, times_ms, prev_counter, prev_ms, held)
        doc: dict[str, object] = {**common, "delta": delta}
        if prev_ms is not None and prev_ms < start_ms and times_ms:
            span = -(-(times_ms[-1] - prev_ms) // 1000)  # ceil, seconds
            if span > window_s:
                doc["span_s"] = min(span, MAX_SPAN_S)
        return AggregateItem.model_validate(doc)
    return AggregateItem.model_validate(
        {**common, "mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    )


@dataclass
class PipelineStats:
    readings: int = 0
    late: int = 0
    windows_closed: int = 0
    aggregates: int = 0
    aggregates_queued: int = 0
    denied: int = 0
    messages_queued: int = 0
    outbox_dropped: int = 0
    events: int = 0
    events_released: int = 0
    events_withheld: int = 0
    by_category: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Pipeline:
    """Owns the agent's write connection; every method is a short synchronous transaction."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        config: AgentConfig,
        *,
        keys: GatewayKeys | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.conn = conn
        self.config = config
        self.gateway = config.gateway.id
        self.keys = keys or load_keys(config.gateway.data_dir)
        self.catalog = catalog or default_catalog()
        self.consents = ConsentStore(conn, self.gateway, self.keys, self.catalog)
        self.stats = PipelineStats()
        #: counter steps kept out of released deltas, by cause (see :func:`counter_delta`)
        self.held: Counter[str] = Counter()
        self._series: dict[SeriesKey, int] = {
            SeriesKey(d, s, m): i for i, d, s, m in conn.execute("SELECT id, device, subject, metric FROM series")
        }
        #: streams that have at least one series: a stream without one has no window to close, and looking for
        #: its first reading would scan the whole raw store on every flush
        self._streams: set[str] = {str(c) for (c,) in conn.execute("SELECT DISTINCT category FROM series")}
        self._watermark: dict[str, int] = {
            str(c): int(ms) for c, ms in conn.execute("SELECT category, next_start FROM watermark")
        }
        self.min_grace_s = 0.0  # the agent raises this to cover its drivers' polling tick
        #: how long the estimated series of a category wait for late estimates (set from the processors' lag)
        self.category_grace_s: dict[Category, float] = {}
        self._consent_version = -1
        self._consents: list[Consent] = []

    def released_until(self) -> float | None:
        """The newest watermark (epoch s): everything before it in some stream was already released."""
        return max(self._watermark.values()) / 1000 if self._watermark else None

    def resync(self) -> None:
        """Read the caches again from the database, after a write transaction failed (its rollback undid rows the
        caches may already hold: a series id, a watermark)."""
        self._series = {
            SeriesKey(d, s, m): i for i, d, s, m in self.conn.execute("SELECT id, device, subject, metric FROM series")
        }
        self._streams = {str(c) for (c,) in self.conn.execute("SELECT DISTINCT category FROM series")}
        self._watermark = {str(c): int(ms) for c, ms in self.conn.execute("SELECT category, next_start FROM watermark")}
        self._consent_version = -1

    # -- raw store ---------------------------------------------------------------------------------------
    def _series_id(self, key: SeriesKey, stream: str) -> int:
        sid = self._series.get(key)
        if sid is None:
            self._streams.add(stream)
            cur = self.conn.execute(
                "INSERT INTO series(device, subject, metric, category) VALUES(?, ?, ?, ?)",
                (key.device, key.subject, key.metric, stream),
            )
            sid = self._series[key] = int(cur.lastrowid or 0)
        return sid

    def store(self, readings: Iterable[Reading]) -> int:
        """Commit readings to the raw store in one transaction. Returns how many were stored."""
        rows = []
        late = 0
        with tx(self.conn):
            for r in readings:
                ts = round(r.ts * 1000)
                stream = stream_of(r)
                mark = self._watermark.get(stream)
                if mark is not None and ts < mark:
                    late += 1
                rows.append((ts, self._series_id(SeriesKey(r.device, r.subject, r.metric), stream), r.value))
            self.conn.executemany("INSERT INTO raw(ts, series, value) VALUES(?, ?, ?)", rows)
        self.stats.readings += len(rows)
        self.stats.late += late
        return len(rows)

    def store_events(self, events: Iterable[Event]) -> int:
        """Keep events on the gateway (idempotent by id); they leave only through :meth:`release_events`."""
        rows = [
            (
                e.id,
                e.kind,
                e.category.value,
                e.subject,
                e.device,
                round(e.ts * 1000),
                e.severity,
                orjson.dumps(dict(e.attrs)).decode(),
            )
            for e in events
        ]
        if not rows:
            return 0
        with tx(self.conn):
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO events(id, kind, category, subject, device, ts, severity, attrs, state) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                rows,
            )
            added = self.conn.total_changes - before
        self.stats.events += added
        return added

    def release_events(self, now: float) -> int:
        """Gate pending events by consent (default deny) and queue the released ones. Returns messages queued."""
        now_ms = round(now * 1000)
        with tx(self.conn):
            self._refresh_consents(now_ms)
            pending = self.conn.execute(
                "SELECT id, kind, category, subject, device, ts, severity, attrs FROM events "
                "WHERE state = 'pending' ORDER BY ts"
            ).fetchall()
            if not pending:
                return 0
            per: dict[tuple[str, Category], list[EventItem]] = defaultdict(list)
            consents = {c.id: c for c in self.active_consents()}
            for eid, kind, cat, subject, device, ts, severity, attrs in pending:
                category = Category(cat)
                allowed = [
                    c
                    for c in consents.values()
                    if c.subject == subject
                    and category in c.effective_categories(self.catalog)
                    and self.catalog.purposes[c.purpose].releases_event(kind)
                    and c.given_at <= ts
                    and (c.expires_at is None or ts < c.expires_at)
                ]
                state = "released" if allowed else "withheld"
                for c in allowed:
                    per[(c.id, category)].append(
                        EventItem(
                            id=eid,
                            kind=kind,
                            subject=self.keys.pseudonym(c.purpose, subject),
                            device=self.keys.device_pseudonym(c.purpose, device),
                            at=int(ts),
                            severity=severity,
                            attrs=orjson.loads(attrs),
                        )
                    )
                self.conn.execute(
                    "UPDATE events SET state = ?, consent = ? WHERE id = ?",
                    (state, ",".join(c.id for c in allowed) or None, eid),
                )
                if allowed:
                    self.stats.events_released += 1
                else:
                    self.stats.events_withheld += 1
            queued = 0
            max_items = self.config.aggregation.max_items_per_message
            for (cid, category), items in per.items():
                for i in range(0, len(items), max_items):
                    queued += self._enqueue_events(consents[cid], category, items[i : i + max_items], now_ms)
        return queued

    def _enqueue_events(self, c: Consent, category: Category, items: list[EventItem], now_ms: int) -> int:
        build = self._builder(EventBatch, "events", c, category, items)
        detail = {"events": sorted({i.kind for i in items})}
        self._queue_release(c, category, event_topic(self.gateway, category), build, len(items), detail, now_ms)
        return 1

    def _builder(
        self,
        model: type[AggregateBatch] | type[EventBatch],
        field: str,
        c: Consent,
        category: Category,
        items: Sequence[AggregateItem] | Sequence[EventItem],
    ) -> Callable[[int, int, str | None], bytes]:
        """The payload of a batch of ``items``, once its sequence number, send time and audit head are known."""

        def build(seq: int, sent: int, head: str | None) -> bytes:
            batch = model.model_validate(
                {
                    "gateway": self.gateway,
                    "seq": seq,
                    "sent": sent,
                    "consent": c.id,
                    "purpose": c.purpose,
                    "category": category,
                    "audit_head": head,
                    field: list(items),
                }
            )
            return orjson.dumps(batch.model_dump(mode="json", exclude_none=True))

        return build

    def _queue_release(
        self,
        c: Consent,
        category: Category,
        topic: str,
        build: Callable[[int, int, str | None], bytes],
        n: int,
        detail: Mapping[str, object],
        now_ms: int,
    ) -> None:
        """One release: the next sequence number, the payload (built around it and the audit head ``"<n>:<hash>"``,
        which the cloud anchors), the outbox row and the audit entry describing it — in the caller's transaction."""
        seq = meta_add(self.conn, "seq", 1)
        payload = build(seq, int(time.time() * 1000), audit.head_text(self.conn))  # ``sent``: wall time, always
        self.conn.execute(
            "INSERT INTO outbox(seq, topic, payload, retain, consent, items, created) VALUES(?, ?, ?, 0, ?, ?, ?)",
            (seq, topic, payload, c.id, n, now_ms),
        )
        purpose = self.catalog.purposes.get(c.purpose)
        audit.append(
            self.conn,
            "release",
            {
                "seq": seq,
                "topic": topic,
                "consent": c.id,
                "subject": c.subject,
                "purpose": c.purpose,
                "category": category.value,
                "items": n,
                **detail,
                "sha256": hashlib.sha256(payload).hexdigest(),
                "recipient": purpose.controller if purpose else c.purpose,
            },
            now_ms,
        )
        self.stats.messages_queued += 1

    def prune(self, now: float) -> int:
        """Delete raw rows older than the retention period."""
        cutoff = round((now - self.config.store.retention.total_seconds()) * 1000)
        with tx(self.conn):
            return self.conn.execute("DELETE FROM raw WHERE ts < ?", (cutoff,)).rowcount

    # -- consent gate ------------------------------------------------------------------------------------
    def _refresh_consents(self, now_ms: int) -> None:
        """Reload the gate when the household CLI changed a consent (call inside the release transaction)."""
        version = consent_version(self.conn)
        if version != self._consent_version:
            self._consents = list_consents(self.conn, include_inactive=True)
            self._consent_version = version

    def active_consents(self) -> list[Consent]:
        return [c for c in self._consents if c.status.value == "active"]

    # -- windows -----------------------------------------------------------------------------------------
    def close_windows(self, now: float) -> int:
        """Close every window that is due, gate its aggregates and queue the messages. Returns messages queued."""
        now_ms = round(now * 1000)
        expired = self.consents.expire_due(now_ms)
        if expired:
            log.info("consents expired: %s", ", ".join(expired))
        grace_s = max(self.config.aggregation.grace.total_seconds(), self.min_grace_s)
        queued = 0
        for category in RELEASED:
            queued += self._close_category(category, category.value, now_ms - round(grace_s * 1000), now_ms)
            est_grace_ms = round(max(grace_s, self.category_grace_s.get(category, 0.0)) * 1000)
            queued += self._close_category(category, category.value + ESTIMATED, now_ms - est_grace_ms, now_ms)
        return queued

    def _close_category(self, category: Category, stream: str, limit_ms: int, now_ms: int) -> int:
        win_s = self.config.aggregation.window_s(category)
        win_ms = win_s * 1000
        mark = self._watermark.get(stream)
        if mark is None:
            if stream not in self._streams:
                return 0
            first = self.conn.execute(
                "SELECT min(r.ts) FROM raw r JOIN series s ON s.id = r.series WHERE s.category = ?",
                (stream,),
            ).fetchone()[0]
            if first is None:
                return 0
            mark = int(first) // win_ms * win_ms
        end = limit_ms // win_ms * win_ms  # close windows that end at or before the limit
        if end <= mark:
            return 0
        with tx(self.conn):
            self._refresh_consents(now_ms)
            rows = self.conn.execute(
                "SELECT r.ts, r.series, r.value FROM raw r JOIN series s ON s.id = r.series "
                "WHERE r.ts >= ? AND r.ts < ? AND s.category = ? ORDER BY r.series, r.ts, r.rowid",
                (mark, end, stream),
            ).fetchall()
            queued = self._release(category, win_s, rows, now_ms)
            self.conn.execute(
                "INSERT INTO watermark(category, next_start) VALUES(?, ?) "
                "ON CONFLICT(category) DO UPDATE SET next_start = excluded.next_start",
                (stream, end),
            )
        self._watermark[stream] = end
        self.stats.windows_closed += (end - mark) // win_ms
        return queued

    def _release(self, category: Category, win_s: int, rows: list[tuple[int, int, float]], now_ms: int) -> int:
        win_ms = win_s * 1000
        by_id = {sid: key for key, sid in self._series.items()}
        grouped: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)  # (series, start) -> (ts, v)
        for ts, sid, value in rows:
            grouped[(sid, ts // win_ms * win_ms)].append((ts, value))
        counters = {
            int(s): (float(v), None if t is None else int(t))
            for s, v, t in self.conn.execute("SELECT series, value, ts FROM counter_last")
        }
        consents = [c for c in self.active_consents() if category in c.effective_categories(self.catalog)]
        per_consent: dict[str, list[AggregateItem]] = defaultdict(list)
        by_consent = {c.id: c for c in consents}
        counter_updates: dict[int, tuple[float, int]] = {}
        for (sid, start), points in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            key = by_id[sid]
            values = [v for _, v in points]
            prev, prev_ms = counters.get(sid, (None, None))
            item = aggregate_series(
                key, start, win_s, values, prev, times_ms=[t for t, _ in points], prev_ms=prev_ms, held=self.held
            )
            if METRICS[key.metric].aggregation is Aggregation.COUNTER:
                counters[sid] = counter_updates[sid] = (values[-1], points[-1][0])
            self.stats.aggregates += 1
            allowed = [c for c in consents if c.subject == key.subject and c.covers(start, start + win_ms)]
            if not allowed:
                self.stats.denied += 1
                continue
            for c in allowed:
                # the cloud sees per-purpose pseudonyms, never the person, household or device id
                per_consent[c.id].append(
                    item.model_copy(
                        update={
                            "subject": self.keys.pseudonym(c.purpose, key.subject),
                            "device": self.keys.device_pseudonym(c.purpose, key.device),
                        }
                    )
                )
        self.conn.executemany(
            "INSERT INTO counter_last(series, value, ts) VALUES(?, ?, ?) "
            "ON CONFLICT(series) DO UPDATE SET value = excluded.value, ts = excluded.ts",
            [(sid, v, t) for sid, (v, t) in counter_updates.items()],
        )
        queued = 0
        max_items = self.config.aggregation.max_items_per_message
        for cid, items in per_consent.items():
            c = by_consent[cid]
            for i in range(0, len(items), max_items):
                queued += self._enqueue(c, category, items[i : i + max_items], now_ms)
        if queued:
            self._bound_outbox(now_ms)
        return queued

    def _enqueue(self, c: Consent, category: Category, items: list[AggregateItem], now_ms: int) -> int:
        build = self._builder(AggregateBatch, "items", c, category, items)
        window = {"first_window": min(i.start for i in items), "last_window": max(i.start for i in items)}
        self._queue_release(c, category, agg_topic(self.gateway, category), build, len(items), window, now_ms)
        self.stats.aggregates_queued += len(items)
        self.stats.by_category[category.value] += len(items)
        return 1

    def _bound_outbox(self, now_ms: int) -> None:
        """Drop the oldest queued releases beyond ``outbox.max_messages`` (consent records stay), and log which
        ones in the same transaction: the household's log must not say "queued" and leave it at that."""
        limit = self.config.outbox.max_messages
        depth = self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if depth <= limit:
            return
        rows = [
            (int(seq), str(topic), str(cid), int(items))
            for seq, topic, cid, items in self.conn.execute(
                "SELECT seq, topic, consent, items FROM outbox WHERE retain = 0 ORDER BY seq LIMIT ?",
                (depth - limit,),
            )
        ]
        dropped = drop_queued(self.conn, rows, "outbox_full", now_ms)
        meta_add(self.conn, "outbox_dropped", dropped)
        self.stats.outbox_dropped += dropped
        log.warning("outbox full (%d messages): dropped the %d oldest aggregate messages", limit, dropped)

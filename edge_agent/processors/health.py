"""``[[processors]] kind = "health"``: guideline rules and the AF rhythm model on the gateway's health Readings.

The models take plain samples (:meth:`models.rules.engine.RulesEngine.push`, :meth:`models.af.runtime.AfMonitor.push`)
and return :class:`~models.rules.alert.Alert` objects; :func:`feed_rules` and :func:`feed_af` are the adapters
from Readings, :func:`alert_event` the one to Events.

Each alert update (opened, escalated, closed) becomes an :class:`kyojo.contract.vocab.Event` of kind ``alert.<kind>``,
category ``health``: it is kept on the gateway (``kyojo alerts list``) and leaves only under the person's
preventive-care consent, as a summary (kind, severity, times, the evidence's count/min/max/mean, the rule's
source, the model version; for an AF episode also its start estimate, end estimate and AF burden). Raw readings
and RR series never leave.

Bad RR input (values outside physiology, time going backwards) never stops the processor: the AF monitor's
artefact filter rejects and counts it (``health()["af_artefacts"]``), and it is logged once per person and then
at most once per :data:`LOG_EVERY_S` of input time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from kyojo.contract.vocab import Category, Event, Reading
from models.rules.alert import Alert, Severity
from models.rules.engine import RulesEngine
from models.rules.profile import INTERNATIONAL, JAPAN

if TYPE_CHECKING:
    from drivers.registry import BuildContext
    from models.af.runtime import AfMonitor

log = logging.getLogger(__name__)

#: Attributes of an AF alert's evidence that travel with its event (start and end estimates, AF burden).
EPISODE_ATTRS = ("episode_start_ms", "episode_end_ms", "burden")
#: at most one log line per person per this much input time about rejected RR values
LOG_EVERY_S = 3600.0

_WIRE_SEVERITY = {
    Severity.INFO: "info",
    Severity.ADVISORY: "info",
    Severity.WARNING: "warning",
    Severity.URGENT: "urgent",
}


#: ``Reading.extra`` key of a glucose sample's meal tag (BLE Glucose Measurement Context); the value
#: :data:`~models.rules.engine.FASTING` marks a fasting sample.
MEAL_KEY = "meal"


def feed_rules(engine: RulesEngine, readings: Iterable[Reading]) -> list[Alert]:
    """Readings, in order, into the guideline rules: each Reading's subject, metric, time, value, device and meal
    tag as one sample. All alerts emitted, in order."""
    out: list[Alert] = []
    for r in readings:
        meal = r.extra.get(MEAL_KEY)
        out += engine.push(r.subject, r.metric, r.ts, r.value, device=r.device, meal=meal)
    return out


def feed_af(monitor: AfMonitor, readings: Iterable[Reading]) -> list[Alert]:
    """The ``rr_interval`` Readings, in order, into the AF monitor (other metrics are not its input). All alerts
    emitted, in order."""
    out: list[Alert] = []
    for r in readings:
        if r.metric == "rr_interval":
            out += monitor.push(r.subject, r.ts, r.value)
    return out


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["health"]
    profile: Literal["japan", "international"] = "japan"
    af: bool = True


def alert_event(alert: Alert) -> Event:
    """One alert update as an Event (a new id per state, so opened/escalated/closed are all kept)."""
    state = "closed" if alert.ended is not None else "open"
    digest = hashlib.sha256(f"{alert.id}|{int(alert.severity)}|{alert.ended}".encode()).hexdigest()[:16]
    ev = alert.evidence
    attrs: dict[str, str | float | int | bool] = {
        # the engine's id names the local person ("p1:bp_crisis:..."): only a hash of it may leave the home
        "alert_id": "a-" + hashlib.sha256(alert.id.encode()).hexdigest()[:16],
        "state": state,
        "level": str(alert.severity),
        "started_ms": int(alert.started * 1000),
        "metric": ev.metric,
        "n": ev.n,
        "min": ev.min,
        "max": ev.max,
        "mean": ev.mean,
        "source": alert.source[:200],
        "message": alert.message[:200],
    }
    if alert.ended is not None:
        attrs["ended_ms"] = int(alert.ended * 1000)
    if alert.model_version:
        attrs["model_version"] = alert.model_version[:200]
    for key in EPISODE_ATTRS:
        value = ev.detail.get(key)
        if isinstance(value, int | float):
            attrs[key] = value
    return Event(
        id=f"al-{digest}",
        kind=f"alert.{alert.kind}",
        category=Category.HEALTH,
        subject=alert.person,
        device="af-model" if alert.model_version else "health-rules",
        ts=alert.ended if alert.ended is not None else ev.last_ts,
        severity=_WIRE_SEVERITY[alert.severity],
        attrs=attrs,
    )


class HealthProcessor:
    name = "health"
    category: Category | None = None  # Events only, no derived Readings: no window waits for it
    lag_s = 0.0

    def __init__(self, config: Config) -> None:
        self.engine = RulesEngine(JAPAN if config.profile == "japan" else INTERNATIONAL)
        self.af: AfMonitor | None = None
        if config.af:
            from models.af.runtime import AfMonitor

            self.af = AfMonitor()
        self.alerts = 0
        self._rejected_logged: dict[str, tuple[int, float]] = {}

    def _log_rejected(self, readings: Sequence[Reading]) -> None:
        """Log rejected RR values once per person, then at most once per LOG_EVERY_S of input time."""
        if self.af is None:
            return
        for person, count in self.af.rejected_by_person().items():
            seen, at = self._rejected_logged.get(person, (0, float("-inf")))
            now = max((r.ts for r in readings if r.subject == person), default=at)
            if count > seen and now - at >= LOG_EVERY_S:
                log.warning("af: %d RR values of %s rejected as artefacts so far", count, person)
                self._rejected_logged[person] = (count, now)

    def feed(self, readings: Sequence[Reading]) -> list[Event]:
        out: list[Event] = []
        for r in sorted((r for r in readings if r.category is Category.HEALTH), key=lambda r: r.ts):
            alerts = feed_rules(self.engine, [r])
            if self.af is not None:
                alerts += feed_af(self.af, [r])
            out.extend(alert_event(a) for a in alerts)
        self.alerts += len(out)
        self._log_rejected(readings)
        return out

    def health(self) -> Mapping[str, object]:
        out: dict[str, object] = {"alert_updates": self.alerts, "open": len(self.engine.open_alerts())}
        if self.af is not None:
            out["af_windows"] = self.af.windows
            out["af_artefacts"] = self.af.artefacts.as_dict()
        return out


def build(config: Config, ctx: BuildContext) -> HealthProcessor:
    return HealthProcessor(config)

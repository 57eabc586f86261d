"""Guideline rules over a person's measurements: blood pressure, SpO2, heart rate, fever, fasting glucose.

Pure: no I/O, no clock; time comes from the samples. A sample is plain values (person, metric, time, value,
device, meal tag), in the units of the contract's metric table; :mod:`edge_agent.processors.health` turns the
gateway's Readings into samples. Feed samples in time order per person and device (older or repeated samples of
the same person, metric and device are ignored and counted); the engine returns the alerts each sample opens,
escalates or closes (see :mod:`models.rules.alert` for the episode semantics).

Rules, each citing its source in :mod:`models.rules.profile` and in the alert:

- ``bp_category``: category of the *average* of the readings of the last ``window_days`` once they cover at least
  ``min_days`` separate local days (ACC/AHA 2017 categories, or JSH 2019 home categories with hypertension at
  >= 135/85); one alert per episode at or above ``alert_from``, escalated in place, closed with hysteresis.
- ``bp_crisis``: a single reading with systolic > 180 and/or diastolic > 120 mmHg (urgent).
- ``spo2_low``: SpO2 < 90 % sustained 5 min; ``tachycardia``: heart rate > 100 bpm sustained 10 min during
  the rest window; ``bradycardia``: < 50 bpm sustained 10 min during awake hours.
- ``fever``: body temperature >= 37.5 degC (Japan) / 38.0 degC (elsewhere).
- ``fasting_glucose``: mean fasting glucose 100-125 mg/dL (prediabetes range) or >= 126 (diabetes range) on
  separate days: a screening alert that advises a laboratory test, never a diagnosis.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from models.rules.alert import Alert, EpisodeTracker, Persistence, Severity, State
from models.rules.profile import JAPAN, RulesProfile

DAY_S = 86_400.0
HOUR_S = 3_600.0
#: The meal tag of a fasting glucose sample (BLE Glucose Measurement Context, meal = 3).
FASTING = "fasting"


def in_window(hour: float, window: tuple[float, float]) -> bool:
    """Whether a local hour of day falls in ``[start, end)``; windows may wrap midnight (22, 6)."""
    a, b = window
    return a <= hour < b if a <= b else (hour >= a or hour < b)


@dataclass(frozen=True, slots=True)
class _Sample:
    person: str
    metric: str
    ts: float
    value: float
    device: str
    meal: str | None


@dataclass
class _PersonState:
    trackers: dict[str, EpisodeTracker] = field(default_factory=dict)
    bp: deque[tuple[float, int, float, float]] = field(default_factory=deque)
    bp_pending: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    glucose: deque[tuple[float, int, float]] = field(default_factory=deque)
    last_ts: dict[tuple[str, str], float] = field(default_factory=dict)


class RulesEngine:
    """All guideline rules for any number of persons, configured by one :class:`RulesProfile`."""

    def __init__(self, profile: RulesProfile = JAPAN) -> None:
        self.profile = profile
        self._persons: dict[str, _PersonState] = {}
        #: samples not used, by reason (``stale``, ``unpaired``, ``not_fasting``, ``other_metric``)
        self.ignored: Counter[str] = Counter()

    # ---- public ---------------------------------------------------------------------------------------------
    def push(
        self, person: str, metric: str, ts: float, value: float, *, device: str = "", meal: str | None = None
    ) -> list[Alert]:
        """Evaluate one sample; returns the alerts it opened, escalated or closed.

        ``metric`` is one of ``systolic``, ``diastolic`` (the two halves of one measurement: same device and
        ``ts``), ``spo2``, ``heart_rate``, ``body_temperature``, ``glucose`` (others are ignored and counted), in
        the contract's units (mmHg, %, bpm, degC, mg/dL); ``ts`` is UTC seconds; ``meal`` tags a glucose sample
        (:data:`FASTING`, or None when the meter did not say).
        """
        r = _Sample(person, metric, ts, value, device, meal)
        st = self._persons.setdefault(person, _PersonState())
        key = (r.metric, r.device)
        last = st.last_ts.get(key)
        if last is not None and r.ts <= last:
            self.ignored["stale"] += 1
            return []
        st.last_ts[key] = r.ts
        match r.metric:
            case "systolic" | "diastolic":
                return self._bp_part(st, r)
            case "spo2":
                return self._spo2(st, r)
            case "heart_rate":
                return self._heart_rate(st, r)
            case "body_temperature":
                return self._fever(st, r)
            case "glucose":
                return self._glucose(st, r)
            case _:
                self.ignored["other_metric"] += 1
                return []

    def open_alerts(self, person: str | None = None) -> list[Alert]:
        """Alerts whose episode is still open (of one person, or everyone)."""
        states = [self._persons[person]] if person in self._persons else [] if person else self._persons.values()
        return [t.current for st in states for t in st.trackers.values() if t.current is not None]

    # ---- helpers --------------------------------------------------------------------------------------------
    def _local(self, ts: float) -> tuple[int, float]:
        t = ts + self.profile.tz_offset_h * HOUR_S
        return int(t // DAY_S), (t % DAY_S) / HOUR_S

    def _tracker(
        self, st: _PersonState, person: str, kind: str, metric: str, unit: str, source: str, p: Persistence
    ) -> EpisodeTracker:
        tr = st.trackers.get(kind)
        if tr is None:
            tr = EpisodeTracker(person, kind, metric=metric, unit=unit, source=source, persistence=p)
            st.trackers[kind] = tr
        return tr

    # ---- blood pressure -------------------------------------------------------------------------------------
    def _bp_part(self, st: _PersonState, r: _Sample) -> list[Alert]:
        # systolic and diastolic of one measurement arrive as two readings with the same device and ts
        for k in [k for k in st.bp_pending if k[1] < r.ts - 60.0]:
            del st.bp_pending[k]
            self.ignored["unpaired"] += 1
        part = st.bp_pending.setdefault((r.device, r.ts), {})
        part[r.metric] = r.value
        if len(part) < 2:
            return []
        del st.bp_pending[(r.device, r.ts)]
        return self._bp(st, r.person, r.ts, part["systolic"], part["diastolic"])

    def _bp(self, st: _PersonState, person: str, ts: float, sbp: float, dbp: float) -> list[Alert]:
        rules = self.profile.blood_pressure
        out: list[Alert] = []
        crisis = self._tracker(
            st,
            person,
            "bp_crisis",
            "systolic",
            "mmHg",
            rules.crisis_source,
            Persistence(cooldown_s=rules.crisis_cooldown_s),
        )
        is_crisis = sbp > rules.crisis_systolic or dbp > rules.crisis_diastolic
        out += crisis.step(
            ts,
            "on" if is_crisis else "clear",
            sbp,
            severity=Severity.URGENT,
            detail={"systolic": sbp, "diastolic": dbp},
            message=(
                f"Blood pressure {sbp:.0f}/{dbp:.0f} mmHg is in the hypertensive crisis range "
                f"(>{rules.crisis_systolic:.0f} and/or >{rules.crisis_diastolic:.0f}). Re-measure after resting; "
                "with chest pain, breathlessness, weakness or confusion call emergency services."
            ),
        )

        day, _ = self._local(ts)
        st.bp.append((ts, day, sbp, dbp))
        while st.bp and st.bp[0][0] <= ts - rules.window_days * DAY_S:
            st.bp.popleft()
        days = {d for _, d, _, _ in st.bp}
        if len(st.bp) < rules.min_readings or len(days) < rules.min_days:
            return out
        n = len(st.bp)
        ms = sum(x[2] for x in st.bp) / n
        md = sum(x[3] for x in st.bp) / n
        idx = rules.classify(ms, md)
        alert_idx = rules.alert_index
        state: State
        if idx >= alert_idx:
            state = "on"
        elif rules.classify(ms + rules.hysteresis_mmhg, md + rules.hysteresis_mmhg) < alert_idx:
            state = "clear"
        else:
            state = "between"
        cat = rules.category_name(idx)
        sev = rules.categories[idx].severity if idx >= 0 else None
        tracker = self._tracker(
            st,
            person,
            "bp_category",
            "systolic",
            "mmHg",
            rules.source,
            Persistence(cooldown_s=rules.window_days * DAY_S),
        )
        out += tracker.step(
            ts,
            state,
            ms,
            severity=sev or Severity.INFO,
            detail={
                "profile": rules.name,
                "category": cat,
                "mean_systolic": round(ms, 1),
                "mean_diastolic": round(md, 1),
                "readings": n,
                "days": len(days),
            },
            message=(
                f"Average home blood pressure {ms:.0f}/{md:.0f} mmHg over {len(days)} days ({n} readings) is in "
                f"the '{cat}' category ({rules.name}). Discuss it with your doctor."
            ),
        )
        return out

    # ---- SpO2 -----------------------------------------------------------------------------------------------
    def _spo2(self, st: _PersonState, r: _Sample) -> list[Alert]:
        c = self.profile.spo2
        p = Persistence(c.min_duration_s, c.min_count, c.clear_duration_s, c.min_count, c.max_gap_s, c.cooldown_s)
        tracker = self._tracker(st, r.person, "spo2_low", "spo2", "%", c.source, p)
        v = r.value
        state: State = "on" if v < c.below else "clear" if v >= c.clear_at else "between"
        return tracker.step(
            r.ts,
            state,
            v,
            severity=Severity.URGENT if v < c.urgent_below else Severity.WARNING,
            detail={"threshold": c.below},
            message=f"Blood oxygen saturation below {c.below:.0f} % for {c.min_duration_s / 60:.0f} minutes or more.",
        )

    # ---- heart rate -----------------------------------------------------------------------------------------
    def _heart_rate(self, st: _PersonState, r: _Sample) -> list[Alert]:
        c = self.profile.heart_rate
        p = Persistence(c.min_duration_s, c.min_count, c.clear_duration_s, c.min_count, c.max_gap_s, c.cooldown_s)
        tachy = self._tracker(st, r.person, "tachycardia", "heart_rate", "bpm", c.tachy_source, p)
        brady = self._tracker(st, r.person, "bradycardia", "heart_rate", "bpm", c.brady_source, p)
        _, hour = self._local(r.ts)
        v = r.value
        out: list[Alert] = []
        if in_window(hour, c.rest_hours):
            state: State = "on" if v > c.tachy_above else "clear" if v <= c.tachy_clear_at else "between"
            out += tachy.step(
                r.ts,
                state,
                v,
                severity=Severity.WARNING,
                detail={"threshold": c.tachy_above, "window": "rest"},
                message=f"Heart rate above {c.tachy_above:.0f} bpm at rest for {c.min_duration_s / 60:.0f} min.",
            )
        else:
            out += tachy.interrupt()
        if in_window(hour, c.awake_hours):
            state = "on" if v < c.brady_below else "clear" if v >= c.brady_clear_at else "between"
            out += brady.step(
                r.ts,
                state,
                v,
                severity=Severity.ADVISORY,
                detail={"threshold": c.brady_below, "window": "awake"},
                message=f"Heart rate below {c.brady_below:.0f} bpm while awake for {c.min_duration_s / 60:.0f} min.",
            )
        else:
            out += brady.interrupt()
        return out

    # ---- fever ----------------------------------------------------------------------------------------------
    def _fever(self, st: _PersonState, r: _Sample) -> list[Alert]:
        c = self.profile.fever
        p = Persistence(clear_count=c.clear_count, max_gap_s=c.max_gap_s, cooldown_s=c.cooldown_s)
        tracker = self._tracker(st, r.person, "fever", "body_temperature", "degC", c.source, p)
        v = r.value
        state: State = "on" if v >= c.threshold_c else "clear" if v < c.threshold_c - c.clear_margin_c else "between"
        return tracker.step(
            r.ts,
            state,
            v,
            severity=Severity.WARNING,
            detail={"threshold": c.threshold_c},
            message=f"Body temperature {v:.1f} degC (fever threshold {c.threshold_c:.1f} degC).",
        )

    # ---- fasting glucose ------------------------------------------------------------------------------------
    def _glucose(self, st: _PersonState, r: _Sample) -> list[Alert]:
        c = self.profile.glucose
        day, hour = self._local(r.ts)
        meal = r.meal
        fasting = meal == FASTING or (
            meal is None and c.untagged_fasting_hours is not None and in_window(hour, c.untagged_fasting_hours)
        )
        if not fasting:
            self.ignored["not_fasting"] += 1
            return []
        st.glucose.append((r.ts, day, r.value))
        while st.glucose and st.glucose[0][0] <= r.ts - c.window_days * DAY_S:
            st.glucose.popleft()
        days = {d for _, d, _ in st.glucose}
        if len(st.glucose) < c.min_readings or len(days) < c.min_days:
            return []
        n = len(st.glucose)
        mean = sum(x[2] for x in st.glucose) / n
        diabetes = mean >= c.diabetes_from
        state: State = (
            "on"
            if mean >= c.prediabetes_from
            else "clear"
            if mean + c.hysteresis_mgdl < c.prediabetes_from
            else "between"
        )
        rng = "diabetes_range" if diabetes else "prediabetes_range" if state == "on" else "normal"
        tracker = self._tracker(
            st, r.person, "fasting_glucose", "glucose", "mg/dL", c.source, Persistence(cooldown_s=30 * DAY_S)
        )
        return tracker.step(
            r.ts,
            state,
            mean,
            severity=Severity.WARNING if diabetes else Severity.ADVISORY,
            detail={"range": rng, "mean": round(mean, 1), "readings": n, "days": len(days)},
            message=(
                f"Average fasting glucose {mean:.0f} mg/dL over {len(days)} days is in the "
                f"{rng.replace('_', ' ')} (screening with a home meter, not a diagnosis). "
                "Ask your doctor for a laboratory fasting plasma glucose or HbA1c test."
            ),
        )

"""Guideline rules: a table of reading sequences and exactly the alerts they must produce (near misses included)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from edge_agent.processors.health import feed_rules
from kyojo.contract.vocab import Reading
from models.rules import INTERNATIONAL, JAPAN, Alert, RulesEngine, RulesProfile, Severity

#: 2024-01-01 00:00 local time in Japan (UTC+9); INTERNATIONAL uses UTC, so add 9 h there for the same clock.
JST_MIDNIGHT = 1_704_034_800.0
UTC_MIDNIGHT = 1_704_067_200.0
H = 3600.0
DAY = 86_400.0


def rd(metric: str, value: float, ts: float, *, person: str = "p1", device: str = "d1", **extra: str) -> Reading:
    units = {
        "spo2": "%",
        "heart_rate": "bpm",
        "body_temperature": "degC",
        "glucose": "mg/dL",
        "systolic": "mmHg",
        "diastolic": "mmHg",
    }
    return Reading(device, person, metric, float(value), units[metric], ts, dict(extra))


def series(metric: str, values: Sequence[float], t0: float, step: float) -> list[Reading]:
    return [rd(metric, v, t0 + i * step) for i, v in enumerate(values)]


def bp(sbp: float, dbp: float, ts: float) -> list[Reading]:
    return [rd("systolic", sbp, ts), rd("diastolic", dbp, ts)]


def bp_days(sbp: float, dbp: float, days: int, t0: float, per_day: int = 2) -> list[Reading]:
    out: list[Reading] = []
    for d in range(days):
        for k in range(per_day):
            out += bp(sbp, dbp, t0 + d * DAY + 7 * H + k * 14 * H)
    return out


def glucose_days(values: list[float], t0: float, hour: float = 7.0, **extra: str) -> list[Reading]:
    return [rd("glucose", v, t0 + i * DAY + hour * H, **extra) for i, v in enumerate(values)]


def hr(value: float, seconds: int, t0: float) -> list[Reading]:
    return series("heart_rate", [value] * seconds, t0, 1.0)


T = JST_MIDNIGHT + 2 * H  # 02:00 local: asleep
NOON = JST_MIDNIGHT + 12 * H

# (id, profile, readings, expected [(kind, severity, open?)], check on the alerts or None)
Case = tuple[str, RulesProfile, list[Reading], list[tuple[str, Severity, bool]]]
CASES: list[Case] = [
    # ---- SpO2 < 90 % sustained 5 min (readings every 60 s) ----
    ("spo2_5min_fires", JAPAN, series("spo2", [89] * 6, T, 60), [("spo2_low", Severity.WARNING, True)]),
    ("spo2_4min_near_miss", JAPAN, series("spo2", [89] * 5 + [91], T, 60), []),
    ("spo2_exactly_90_no", JAPAN, series("spo2", [90] * 20, T, 60), []),
    ("spo2_interrupted_near_miss", JAPAN, series("spo2", [89, 89, 89, 95, 89, 89, 89], T, 60), []),
    (
        "spo2_gap_breaks_persistence",
        JAPAN,
        series("spo2", [89, 89, 89], T, 60) + series("spo2", [89, 89, 89], T + 1200, 60),
        [],
    ),
    (
        "spo2_open_then_close",
        JAPAN,
        series("spo2", [88] * 6 + [93] * 6, T, 60),
        [("spo2_low", Severity.WARNING, True), ("spo2_low", Severity.WARNING, False)],
    ),
    (
        "spo2_hysteresis_band_keeps_open",
        JAPAN,
        series("spo2", [88] * 6 + [91] * 10, T, 60),
        [("spo2_low", Severity.WARNING, True)],
    ),
    (
        "spo2_flapping_is_one_episode",
        JAPAN,
        series("spo2", [88] * 6 + [91, 88] * 10, T, 60),
        [("spo2_low", Severity.WARNING, True)],
    ),
    (
        "spo2_escalates_in_place",
        JAPAN,
        series("spo2", [88] * 6 + [84], T, 60),
        [("spo2_low", Severity.WARNING, True), ("spo2_low", Severity.URGENT, True)],
    ),
    # ---- heart rate (1 Hz) ----
    ("tachy_10min_at_rest_fires", JAPAN, hr(101, 601, T), [("tachycardia", Severity.WARNING, True)]),
    ("tachy_exactly_100_no", JAPAN, hr(100, 900, T), []),
    ("tachy_9min_near_miss", JAPAN, hr(101, 540, T) + hr(90, 120, T + 540), []),
    ("tachy_daytime_exercise_no", JAPAN, hr(130, 1800, NOON), []),
    ("brady_awake_fires", JAPAN, hr(48, 601, NOON), [("bradycardia", Severity.ADVISORY, True)]),
    ("brady_exactly_50_no", JAPAN, hr(50, 900, NOON), []),
    ("brady_asleep_no", JAPAN, hr(45, 1800, T), []),
    # ---- fever ----
    ("fever_jp_37_5_fires", JAPAN, series("body_temperature", [37.5], NOON, 1), [("fever", Severity.WARNING, True)]),
    ("fever_jp_37_4_no", JAPAN, series("body_temperature", [37.4, 37.4, 37.3], NOON, 6 * H), []),
    ("fever_intl_37_9_no", INTERNATIONAL, series("body_temperature", [37.9, 37.9], UTC_MIDNIGHT, 6 * H), []),
    (
        "fever_intl_38_fires",
        INTERNATIONAL,
        series("body_temperature", [38.0], UTC_MIDNIGHT, 1),
        [("fever", Severity.WARNING, True)],
    ),
    (
        "fever_three_days_one_episode",
        JAPAN,
        series("body_temperature", [37.8, 37.2, 38.4, 37.0, 36.9, 36.8], NOON, 12 * H),
        [("fever", Severity.WARNING, True), ("fever", Severity.WARNING, False)],
    ),
    # ---- blood pressure: JSH 2019 home (>= 135/85 on >= 5 days) ----
    ("bp_jsh_5_days_fires", JAPAN, bp_days(140, 80, 5, JST_MIDNIGHT), [("bp_category", Severity.ADVISORY, True)]),
    ("bp_jsh_4_days_near_miss", JAPAN, bp_days(140, 80, 4, JST_MIDNIGHT), []),
    ("bp_jsh_134_84_near_miss", JAPAN, bp_days(134, 84, 7, JST_MIDNIGHT), []),
    ("bp_jsh_diastolic_85_fires", JAPAN, bp_days(120, 85, 5, JST_MIDNIGHT), [("bp_category", Severity.ADVISORY, True)]),
    # ---- blood pressure: ACC/AHA 2017 (>= 2 readings on >= 2 days) ----
    (
        "bp_acc_stage1_fires",
        INTERNATIONAL,
        bp_days(131, 79, 2, UTC_MIDNIGHT, 1),
        [("bp_category", Severity.ADVISORY, True)],
    ),
    (
        "bp_acc_one_day_near_miss",
        INTERNATIONAL,
        bp(150, 95, UTC_MIDNIGHT + 7 * H) + bp(150, 95, UTC_MIDNIGHT + 8 * H) + bp(150, 95, UTC_MIDNIGHT + 9 * H),
        [],
    ),
    ("bp_acc_elevated_no_alert", INTERNATIONAL, bp_days(125, 79, 7, UTC_MIDNIGHT), []),
    ("bp_acc_129_79_near_miss", INTERNATIONAL, bp_days(129, 79, 7, UTC_MIDNIGHT), []),
    (
        "bp_acc_escalates_same_alert",
        INTERNATIONAL,
        bp_days(132, 82, 2, UTC_MIDNIGHT, 1) + bp_days(160, 100, 2, UTC_MIDNIGHT + 2 * DAY, 1),
        [("bp_category", Severity.ADVISORY, True), ("bp_category", Severity.WARNING, True)],
    ),
    # ---- hypertensive crisis: one reading > 180 and/or > 120 ----
    ("crisis_181_fires", JAPAN, bp(181, 100, NOON), [("bp_crisis", Severity.URGENT, True)]),
    ("crisis_diastolic_121_fires", JAPAN, bp(150, 121, NOON), [("bp_crisis", Severity.URGENT, True)]),
    ("crisis_180_120_no", JAPAN, bp(180, 120, NOON), []),
    (
        "crisis_repeat_is_one_alert",
        JAPAN,
        bp(185, 100, NOON) + bp(190, 105, NOON + 300),
        [("bp_crisis", Severity.URGENT, True)],
    ),
    (
        "crisis_clear_and_recur_within_cooldown_same_alert",
        JAPAN,
        bp(185, 100, NOON) + bp(150, 90, NOON + 600) + bp(186, 100, NOON + 1200),
        [
            ("bp_crisis", Severity.URGENT, True),
            ("bp_crisis", Severity.URGENT, False),
            ("bp_crisis", Severity.URGENT, True),
        ],
    ),
    # ---- fasting glucose screening (mean of fasting readings on >= 2 days) ----
    (
        "glucose_prediabetes_range",
        JAPAN,
        glucose_days([110, 112], JST_MIDNIGHT, meal="fasting"),
        [("fasting_glucose", Severity.ADVISORY, True)],
    ),
    ("glucose_99_no", JAPAN, glucose_days([99, 99, 99], JST_MIDNIGHT, meal="fasting"), []),
    (
        "glucose_diabetes_range",
        JAPAN,
        glucose_days([130, 128], JST_MIDNIGHT, meal="fasting"),
        [("fasting_glucose", Severity.WARNING, True)],
    ),
    ("glucose_one_day_near_miss", JAPAN, glucose_days([140], JST_MIDNIGHT, meal="fasting"), []),
    ("glucose_postprandial_ignored", JAPAN, glucose_days([200, 210], JST_MIDNIGHT, meal="postprandial"), []),
    (
        "glucose_untagged_morning_counts",
        JAPAN,
        glucose_days([130, 128], JST_MIDNIGHT, hour=7.0),
        [("fasting_glucose", Severity.WARNING, True)],
    ),
    ("glucose_untagged_afternoon_ignored", JAPAN, glucose_days([180, 190], JST_MIDNIGHT, hour=15.0), []),
]


@pytest.mark.parametrize(("profile", "readings", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_table(profile: RulesProfile, readings: list[Reading], expected: list[tuple[str, Severity, bool]]) -> None:
    alerts = feed_rules(RulesEngine(profile), readings)
    assert [(a.kind, a.severity, a.is_open) for a in alerts] == expected
    # one episode is one alert: every emission of a case's kind shares the id
    for kind in {a.kind for a in alerts}:
        assert len({a.id for a in alerts if a.kind == kind}) == 1


def _only(alerts: list[Alert]) -> Alert:
    assert len(alerts) == 1
    return alerts[0]


def test_spo2_alert_fields() -> None:
    a = _only(feed_rules(RulesEngine(JAPAN), series("spo2", [89, 88, 87, 89, 88, 89], T, 60)))
    assert a.person == "p1" and a.kind == "spo2_low"
    assert a.started == T and a.ended is None
    assert a.evidence.n == 6 and a.evidence.min == 87 and a.evidence.max == 89 and a.evidence.first_ts == T
    assert a.evidence.unit == "%" and "WHO" in a.source
    assert a.model_version is None
    assert a.as_dict()["severity"] == "warning"


def test_closed_alert_ends_at_first_clear_reading() -> None:
    alerts = feed_rules(RulesEngine(JAPAN), series("spo2", [88] * 6 + [93] * 6, T, 60))
    assert alerts[1].ended == T + 6 * 60 and alerts[1].id == alerts[0].id


def test_bp_evidence_is_the_average_and_cites_jsh() -> None:
    readings = bp_days(140, 80, 4, JST_MIDNIGHT) + bp_days(150, 90, 1, JST_MIDNIGHT + 4 * DAY)
    a = _only(feed_rules(RulesEngine(JAPAN), readings))
    # fires on day 5's first reading: (8 x 140 + 150) / 9
    assert a.evidence.detail["mean_systolic"] == 141.1 and a.evidence.detail["days"] == 5
    assert a.evidence.detail["readings"] == 9
    assert a.evidence.detail["category"] == "grade_I_hypertension" and "JSH 2019" in a.source


def test_glucose_alert_is_screening_not_diagnosis() -> None:
    a = _only(feed_rules(RulesEngine(JAPAN), glucose_days([130, 128], JST_MIDNIGHT, meal="fasting")))
    assert "not a diagnosis" in a.message and "laboratory" in a.message and "Diabetes Care" in a.source


def test_persons_are_independent_and_duplicates_ignored() -> None:
    eng = RulesEngine(JAPAN)
    p1 = series("spo2", [89] * 3, T, 60)
    p2 = [rd("spo2", 89, T + 180 + i * 60, person="p2") for i in range(3)]
    dup = [rd("spo2", 89, T + 120)]  # same ts as p1's third reading: ignored
    assert feed_rules(eng, p1 + p2 + dup) == []
    assert eng.ignored["stale"] == 1
    more = [rd("spo2", 89, T + 180 + i * 60) for i in range(3)]
    a = _only(feed_rules(eng, more))
    assert a.person == "p1" and len(eng.open_alerts("p1")) == 1 and eng.open_alerts("p2") == []


@pytest.mark.parametrize(
    ("factory", "kind"),
    [
        (lambda: series("spo2", [88] * 6 + [95] * 6 + [88] * 6, T, 60), "spo2_low"),
        (lambda: series("body_temperature", [38.0, 36.5, 36.5, 38.2], NOON, 3 * H), "fever"),
    ],
)
def test_recurrence_within_cooldown_reopens_same_alert(factory: Callable[[], list[Reading]], kind: str) -> None:
    alerts = feed_rules(RulesEngine(JAPAN), factory())
    assert [a.is_open for a in alerts] == [True, False, True]
    assert {a.id for a in alerts} == {alerts[0].id} and alerts[2].started == alerts[0].started


def test_profile_is_validated() -> None:
    with pytest.raises(ValueError, match="alert_from"):
        JAPAN.blood_pressure.model_copy(update={"alert_from": "nope"}).model_validate(
            {**JAPAN.blood_pressure.model_dump(), "alert_from": "nope"}
        )


def test_simulated_healthy_household_day_gives_no_alert() -> None:
    from drivers.sim import BloodPressureCuff, HeartRateStrap, PulseOximeter, Thermometer

    devices = [
        HeartRateStrap("h-p1-hr", "p1", 3),
        BloodPressureCuff("h-p1-bp", "p1", 3),
        PulseOximeter("h-p1-spo2", "p1", 3),
        Thermometer("h-p1-temp", "p1", 3),
    ]
    readings = sorted(
        (r for d in devices for r in d.readings_between(JST_MIDNIGHT, JST_MIDNIGHT + DAY)), key=lambda r: r.ts
    )
    eng = RulesEngine(JAPAN)
    assert feed_rules(eng, readings) == []
    # a week of the hypertensive cuff profile (mean 150/95 at home) does raise the JSH home-BP alert, once
    cuff = BloodPressureCuff("h-p2-bp", "p2", 3, profile="hypertensive")
    alerts = feed_rules(RulesEngine(JAPAN), cuff.readings_between(JST_MIDNIGHT, JST_MIDNIGHT + 7 * DAY))
    assert {a.kind for a in alerts} == {"bp_category"} and len({a.id for a in alerts}) == 1

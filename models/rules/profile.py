"""Thresholds of the guideline rules, as validated configuration, with the source of every number.

Two ready profiles: :data:`JAPAN` (JSH 2019 home blood pressure, fever >= 37.5 degC, JST) and
:data:`INTERNATIONAL` (ACC/AHA 2017 blood pressure categories, fever >= 38.0 degC, UTC). Any field can be
overridden (``JAPAN.model_copy(update=...)`` or a config file validated with :meth:`RulesProfile.model_validate`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.rules.alert import Severity

# ---- sources, cited by the alerts they produce -------------------------------------------------------------
ACC_AHA_2017 = (
    "Whelton PK et al. 2017 ACC/AHA/AAPA/ABC/ACPM/AGS/APhA/ASH/ASPC/NMA/PCNA Guideline for the Prevention, "
    "Detection, Evaluation, and Management of High Blood Pressure in Adults. Hypertension 2018;71:e13-e115 "
    "(sec. 3.2 BP categories on the average of >=2 readings on >=2 occasions; sec. 11.2 hypertensive crises "
    ">180 and/or >120 mmHg)"
)
JSH_2019 = (
    "Umemura S et al. The Japanese Society of Hypertension Guidelines for the Management of Hypertension "
    "(JSH 2019). Hypertens Res 2019;42:1235-1481 (home BP classification; hypertension >=135/85 mmHg at home, "
    "average of morning and evening readings over >=5 days)"
)
WHO_SPO2 = (
    "WHO Pulse Oximetry Training Manual (2011): SpO2 below 90 % is hypoxaemia; see also O'Driscoll BR et al., "
    "BTS guideline for oxygen use in adults, Thorax 2017;72:i1-i90"
)
SVT_2015 = (
    "Page RL et al. 2015 ACC/AHA/HRS Guideline for the Management of Adult Patients With Supraventricular "
    "Tachycardia. Circulation 2016;133:e506-e574 (sinus tachycardia: rate >100 bpm)"
)
BRADY_2018 = (
    "Kusumoto FM et al. 2018 ACC/AHA/HRS Guideline on the Evaluation and Management of Patients With "
    "Bradycardia and Cardiac Conduction Delay. Circulation 2019;140:e382-e482 (sinus bradycardia: rate <50 bpm; "
    "lower rates during sleep can be normal, hence awake hours only)"
)
FEVER_JP = (
    "MHLW notification criteria under the Infectious Diseases Control Law (感染症法に基づく医師の届出基準): "
    "fever = body temperature >=37.5 degC (high fever >=38.0 degC)"
)
FEVER_INTL = (
    "CDC, Definitions of Symptoms for Reportable Illnesses: fever = measured temperature >=100.4 degF (38.0 degC)"
)
ADA_2024 = (
    "American Diabetes Association. 2. Diagnosis and Classification of Diabetes: Standards of Care in "
    "Diabetes-2024. Diabetes Care 2024;47(Suppl 1):S20-S42 (FPG 100-125 mg/dL prediabetes, >=126 mg/dL "
    "diabetes; a diagnosis needs laboratory confirmation). Screening only, never a diagnosis."
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Category(_Model):
    """One category: reached when systolic >= ``systolic`` or (if set) diastolic >= ``diastolic``."""

    name: str
    systolic: float
    diastolic: float | None = None
    severity: Severity | None = None  # None: no alert for this category


class BloodPressureRules(_Model):
    """Category thresholds on the average of readings on separate days, and the crisis rule on single readings."""

    name: str
    source: str
    #: ascending categories above "normal"
    categories: tuple[Category, ...]
    #: first category that opens an alert
    alert_from: str
    window_days: float = Field(7.0, gt=0)
    min_days: int = Field(2, ge=1)
    min_readings: int = Field(2, ge=1)
    #: an episode closes when (mean + margin) is below ``alert_from``
    hysteresis_mmhg: float = Field(5.0, ge=0)
    crisis_systolic: float = 180.0
    crisis_diastolic: float = 120.0
    crisis_source: str = ACC_AHA_2017
    #: a crisis reading within this time of the last one's clearing belongs to the same episode
    crisis_cooldown_s: float = 6 * 3600.0

    @model_validator(mode="after")
    def _check(self) -> BloodPressureRules:
        names = [c.name for c in self.categories]
        if self.alert_from not in names:
            raise ValueError(f"alert_from {self.alert_from!r} is not one of {names}")
        sys_th = [c.systolic for c in self.categories]
        if sys_th != sorted(sys_th):
            raise ValueError("categories must be in ascending order")
        return self

    def classify(self, systolic: float, diastolic: float) -> int:
        """Index of the highest category reached (-1: normal)."""
        idx = -1
        for i, c in enumerate(self.categories):
            if systolic >= c.systolic or (c.diastolic is not None and diastolic >= c.diastolic):
                idx = i
        return idx

    def category_name(self, idx: int) -> str:
        return "normal" if idx < 0 else self.categories[idx].name

    @property
    def alert_index(self) -> int:
        return [c.name for c in self.categories].index(self.alert_from)


ACC_AHA_BP = BloodPressureRules(
    name="acc_aha_2017",
    source=ACC_AHA_2017,
    categories=(
        Category(name="elevated", systolic=120, severity=Severity.INFO),  # 120-129 and <80
        Category(name="stage_1", systolic=130, diastolic=80, severity=Severity.ADVISORY),
        Category(name="stage_2", systolic=140, diastolic=90, severity=Severity.WARNING),
    ),
    alert_from="stage_1",
)

JSH_HOME_BP = BloodPressureRules(
    name="jsh_2019_home",
    source=JSH_2019,
    categories=(
        Category(name="high_normal", systolic=115, severity=Severity.INFO),  # 115-124 and <75
        Category(name="elevated", systolic=125, diastolic=75, severity=Severity.INFO),
        Category(name="grade_I_hypertension", systolic=135, diastolic=85, severity=Severity.ADVISORY),
        Category(name="grade_II_hypertension", systolic=145, diastolic=90, severity=Severity.WARNING),
        Category(name="grade_III_hypertension", systolic=160, diastolic=100, severity=Severity.WARNING),
    ),
    alert_from="grade_I_hypertension",
    min_days=5,
)


class Spo2Rules(_Model):
    """SpO2 below ``below`` % sustained; clears at >= ``clear_at``."""

    below: float = 90.0
    clear_at: float = 92.0
    urgent_below: float = 85.0
    min_duration_s: float = 300.0
    min_count: int = 3
    clear_duration_s: float = 300.0
    max_gap_s: float = 600.0
    cooldown_s: float = 1800.0
    source: str = WHO_SPO2


class HeartRateRules(_Model):
    """Resting tachycardia / bradycardia on ``heart_rate`` (bpm), sustained, within a local-time window.

    Without a motion sensor "resting" is approximated by time of day: tachycardia only in ``rest_hours``
    (asleep, so exercise is excluded), bradycardia only in ``awake_hours`` (nocturnal rates below 50 bpm are
    common in healthy adults).
    """

    tachy_above: float = 100.0
    tachy_clear_at: float = 95.0
    brady_below: float = 50.0
    brady_clear_at: float = 55.0
    rest_hours: tuple[float, float] = (0.0, 5.0)
    awake_hours: tuple[float, float] = (9.0, 21.0)
    min_duration_s: float = 600.0
    min_count: int = 60
    clear_duration_s: float = 300.0
    max_gap_s: float = 60.0
    cooldown_s: float = 1800.0
    tachy_source: str = SVT_2015
    brady_source: str = BRADY_2018


class FeverRules(_Model):
    """Body temperature >= ``threshold_c``; clears after ``clear_count`` readings below threshold - margin."""

    threshold_c: float
    clear_margin_c: float = 0.3
    clear_count: int = 2
    max_gap_s: float = 48 * 3600.0
    cooldown_s: float = 24 * 3600.0
    source: str


class GlucoseRules(_Model):
    """Fasting glucose screening on the mean of fasting readings on separate days (mg/dL)."""

    prediabetes_from: float = 100.0
    diabetes_from: float = 126.0
    window_days: float = 14.0
    min_days: int = 2
    min_readings: int = 2
    hysteresis_mgdl: float = 5.0
    #: untagged readings taken in this local-time window count as fasting (None: only tagged ones count)
    untagged_fasting_hours: tuple[float, float] | None = (4.0, 9.0)
    source: str = ADA_2024


class RulesProfile(_Model):
    """Every rule's configuration; ``tz_offset_h`` defines local days and hours."""

    name: str
    tz_offset_h: float = 9.0
    blood_pressure: BloodPressureRules
    spo2: Spo2Rules = Spo2Rules()
    heart_rate: HeartRateRules = HeartRateRules()
    fever: FeverRules
    glucose: GlucoseRules = GlucoseRules()


JAPAN = RulesProfile(
    name="jp",
    tz_offset_h=9.0,
    blood_pressure=JSH_HOME_BP,
    fever=FeverRules(threshold_c=37.5, source=FEVER_JP),
)
INTERNATIONAL = RulesProfile(
    name="international",
    tz_offset_h=0.0,
    blood_pressure=ACC_AHA_BP,
    fever=FeverRules(threshold_c=38.0, source=FEVER_INTL),
)
PROFILES: dict[str, RulesProfile] = {p.name: p for p in (JAPAN, INTERNATIONAL)}

ProfileName = Literal["jp", "international"]

"""Watch-over (issue 17 section 1): the rhythm model on a synthetic person living alone and on a real household."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from models.watchover.evaluate import evaluate, evaluate_house, households
from models.watchover.rhythm import ActivityDetector, Finding, Params, Watch
from tests.kit import DATA

JST = ZoneInfo("Asia/Tokyo")
#: Monday 2024-06-03 00:00 JST
START = datetime(2024, 6, 3, tzinfo=JST).timestamp()
FAST = Params(learn_days=7, calibrate_days=7)


def person_alone(
    days: int, *, absent_day: int | None = None, cut_min: int = 8 * 60, seed: int = 7
) -> Iterator[tuple[float, float]]:
    """(minute start, mean W) of a home where one person is in all day: a fridge that cycles below the step,
    breakfast with the kettle, something done now and then through the morning and afternoon, lunch in the
    microwave, TV in the evening. On ``absent_day`` nothing but the fridge from ``cut_min`` to midnight."""
    rng = random.Random(seed)
    for d in range(days):
        extra = [0.0] * 1440

        def on(start: int, minutes: int, watts: float, extra: list[float] = extra) -> None:
            for m in range(start, min(start + minutes, 1440)):
                extra[m] += watts

        on(rng.randint(6 * 60 + 30, 7 * 60 + 15), 3, 2000)  # kettle
        for hour in (9, 10, 11, 14, 15, 16):
            if rng.random() < 0.8:
                on(hour * 60 + rng.randint(0, 50), rng.randint(5, 20), 600)  # hob, iron, vacuum, heater
        on(12 * 60 + rng.randint(0, 30), 2, 1000)  # microwave
        on(18 * 60 + rng.randint(0, 30), 40, 1200)  # cooking
        tv = 19 * 60 + rng.randint(0, 30)
        on(tv, 22 * 60 - tv, 300)
        for m in range(1440):
            if d == absent_day and m >= cut_min:
                extra[m] = 0.0
            fridge = 90.0 if (m // 20) % 2 else 0.0
            yield START + d * 86400 + m * 60, 150.0 + fridge + extra[m] + rng.uniform(-5, 5)


def run_watch(watch: Watch, minutes: Iterator[tuple[float, float]]) -> list[Finding]:
    det = ActivityDetector(watch.params.step_w)
    found: list[Finding] = []
    for t, w in minutes:
        found += watch.push(t, measured=True, active=det.minute(w), signal="meter")
    return found


def day_of(ts: float) -> int:
    return int((ts - START) // 86400)


def test_a_quiet_morning_is_flagged_and_normal_days_are_not() -> None:
    found = run_watch(Watch(JST, FAST), person_alone(24, absent_day=21))
    absences = [f for f in found if f.kind == "absence"]
    assert [day_of(f.at) for f in absences] == [21]  # the armed days 14-20 and 22-23 raise nothing
    f = absences[0]
    cut = START + 21 * 86400 + 8 * 3600
    assert cut <= f.at <= cut + 4 * 3600  # before lunch, in a home busy all morning
    assert f.since <= cut and f.score >= f.threshold > 0
    assert 9 in f.usual or 10 in f.usual  # the evidence names the usual hours that passed in silence
    assert f.signal == "meter"
    # the next sign of life (the kettle the morning after) closes it
    resumed = [g for g in found if g.kind == "resumed"]
    assert len(resumed) == 1 and day_of(resumed[0].at) == 22 and resumed[0].since == f.since


def test_nothing_is_raised_while_learning_or_away() -> None:
    learning = run_watch(Watch(JST, FAST), person_alone(14, absent_day=10))
    assert learning == []  # 7 days of profile and 7 of calibration: nothing is said before
    away = Watch(JST, FAST)
    minutes = list(person_alone(24, absent_day=21))
    found = run_watch(away, iter(minutes[: 21 * 1440]))
    away.away_until = START + 22 * 86400 + 5 * 3600  # "out until 05:00 tomorrow", told on the morning of day 21
    found += run_watch(away, iter(minutes[21 * 1440 :]))
    assert [f.kind for f in found] == []


def test_gaps_are_no_evidence_and_the_state_survives_a_restart(tmp_path: Path) -> None:
    minutes = list(person_alone(24, absent_day=21))
    whole = run_watch(Watch(JST, FAST), iter(minutes))

    first = Watch(JST, FAST)
    det = ActivityDetector(FAST.step_w)
    split = 21 * 1440 + 9 * 60  # restarted at 09:00 on the quiet day, an hour into the silence
    found = [f for t, w in minutes[:split] for f in first.push(t, measured=True, active=det.minute(w))]
    path = tmp_path / "state.json"
    path.write_text(json.dumps(first.to_json()), encoding="utf-8")
    second = Watch.from_json(json.loads(path.read_text(encoding="utf-8")), JST, FAST)
    found += [f for t, w in minutes[split:] for f in second.push(t, measured=True, active=det.minute(w))]
    assert [(f.kind, f.at, f.since) for f in found] == [(f.kind, f.at, f.since) for f in whole]

    # an unmeasured stretch (meter offline) neither adds to the score nor counts as activity
    gap = Watch.from_json(json.loads(path.read_text(encoding="utf-8")), JST, FAST)
    score, last = gap.score, gap.last_activity
    for t, _ in minutes[split : split + 180]:
        assert gap.push(t, measured=False, active=False) == []
    assert (gap.score, gap.last_activity) == (score, last)


def test_a_damaged_state_is_refused_with_a_clear_error() -> None:
    doc = Watch(JST, FAST).to_json()
    with pytest.raises((KeyError, TypeError)):
        Watch.from_json({"v": 1}, JST)
    bad = dict(doc, days={"738000": {"weekend": False, "slots": "00", "measured": 1, "max_e": 0, "scored": False}})
    with pytest.raises(ValueError, match="slots"):
        Watch.from_json(bad, JST)


def test_the_protocol_on_a_real_household_month() -> None:
    """REFIT House 2, June 2014 (a working family, out most weekdays): with 7 + 7 days to learn, both cut absences
    are flagged; the figures come out of the same code as the model card's."""
    (house,) = households([DATA / "nilm" / "refit_house2_2014-06_1min.csv.gz"])
    assert house.name == "refit_house2" and len(house.ts) == 28 * 1440
    r = evaluate_house(house, ZoneInfo("Europe/London"), FAST)
    for key in ("cut_0000", "cut_0800"):
        cut = r[key]
        assert isinstance(cut, dict) and cut["absences"] == cut["detected"] == 1, (key, cut)
    assert r["normal_days"] == 13 and isinstance(r["false_per_30_days"], float)


def test_models_eval_watchover_prints_the_protocol(tmp_path: Path) -> None:
    from kyojo.cli import app

    out = CliRunner().invoke(
        app,
        ["models", "eval", "watchover", "--data", str(DATA / "nilm"), "--learn-days", "7", "--calibrate-days", "7"],
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["protocol"] == "watchover-v1" and doc["tz"] == "Europe/London"
    assert [h["house"] for h in doc["houses"]] == ["refit_house2", "ukdale_house2"]  # a month each
    assert doc["skipped"] == ["ideal_house65"]  # one day is not enough to learn a rhythm
    assert evaluate([tmp_path]) == {
        "protocol": "watchover-v1",
        "tz": "Europe/London",
        "params": json.loads(json.dumps(doc["params"])) | {"learn_days": 14, "calibrate_days": 14},
        "houses": [],
        "skipped": [],
    }

"""NILM honesty (issue 19): the confidence gate, plug calibration in the runtime and before/after on an unseen house,
and ``kyojo models eval nilm`` on files with missing and extra channels.

The before/after test uses models trained *without* UK-DALE House 2 (``tests/data/nilm/without_ukdale_h2``, made by
``python -m models.nilm.train --leave-out ukdale_h2``, the protocol's fold for that house) and UK-DALE House 2's
June 2013 file: the first 14 days play the plug, the remaining days are scored. Never trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.processors.nilm import Config, NilmProcessor, feed_nilm, to_readings
from kyojo.contract.vocab import Reading, reading
from models.nilm.data import ON_THRESHOLD_W, Series, load_csv
from models.nilm.gate import (
    Calibration,
    PlugCalibrator,
    activations,
    fit_calibration,
    p_on_of,
    shown,
)
from models.nilm.metrics import SHOW_CONFIDENCE, appliance_metrics, gated_metrics
from models.nilm.model import NilmModels
from models.nilm.runtime import MODEL_SOURCE, PLUG_SOURCE, NilmRuntime
from tests import kit
from tests.models.test_nilm import _app

DATA = kit.DATA / "nilm"
IDEAL = DATA / "ideal_house65_2018-04-03_1min.csv.gz"  # shower_w extra; no kettle or microwave column
UKDALE_MONTH = DATA / "ukdale_house2_2013-06_1min.csv.gz"
WITHOUT_UKDALE = DATA / "without_ukdale_h2"
ADAPT_DAYS = 14


# -- the gate, by hand -------------------------------------------------------------------------------------------


def test_gated_metrics_by_hand() -> None:
    pred = np.array([0.0, 100.0, 50.0, np.nan])
    true = np.array([0.0, 80.0, 0.0, 10.0])
    g = gated_metrics(pred, true, np.array([True, True, False, False]))
    assert g == {"shown_fraction": 0.5, "mae_w_shown": 10.0, "always_off_mae_w_shown": 40.0}
    assert gated_metrics(pred, true, np.zeros(4, dtype=bool))["mae_w_shown"] is None


def test_release_rule() -> None:
    assert not shown(1.0, None, confidence_release=False)  # this appliance may not be shown on confidence alone
    assert shown(SHOW_CONFIDENCE, None)
    assert not shown(SHOW_CONFIDENCE - 0.01, None)
    good = Calibration("kettle", 5, 100, 0.5, 1.0, 1.0, 10.0, beats_always_off=True)
    bad = Calibration("kettle", 5, 100, 0.5, 1.0, 9.0, 10.0, beats_always_off=False)
    assert shown(0.5, good)  # this home's plug showed it works: shown whatever the confidence
    assert not shown(1.0, bad)  # this home's plug showed it does not: withheld however confident


def test_p_on_and_activations() -> None:
    assert p_on_of(np.array([0.0, 500.0]), np.array([0.9, 0.8])).tolist() == pytest.approx([0.1, 0.8])
    assert activations(np.array([2000.0, 2000.0, 0.0, 2000.0, 0.0]), 1000.0) == 2
    assert activations(np.array([]), 1000.0) == 0


def test_calibration_raises_threshold_and_rescales() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    plug = np.zeros(n)
    for s in range(100, n, 200):  # 10 boils of 3 min at 2,000 W
        plug[s : s + 3] = 2000.0
    # the model sees every boil at half power with p_on 0.97, and false alarms at p_on 0.7
    power = np.where(plug > 0, 1000.0, 0.0)
    p_on = np.where(plug > 0, 0.97, 0.05)
    false = rng.choice(np.flatnonzero(plug == 0), 100, replace=False)
    power[false], p_on[false] = 1500.0, 0.7
    cal = fit_calibration("kettle", power, p_on, plug)
    assert cal.activations == 10
    assert cal.p_on_threshold > 0.7
    assert cal.scale == pytest.approx(2.0)
    assert cal.mae_w == pytest.approx(0.0)
    assert cal.beats_always_off
    out = cal.apply(power, p_on)
    assert np.allclose(out, plug)
    # a model that finds nothing cannot beat always-off
    assert not fit_calibration("kettle", np.zeros(n), np.full(n, 0.1), plug).beats_always_off


def test_calibrator_fits_after_n_activations() -> None:
    c = PlugCalibrator("microwave", min_activations=2)
    seq = [0.0, 800.0, 800.0, 0.0, 0.0, 900.0, 0.0]
    fitted = [c.add(v * 0.9, 0.95 if v else 0.05, v) for v in seq]
    assert [f is not None for f in fitted] == [False, False, False, False, False, True, False]
    cal = fitted[5]
    assert cal is not None
    assert cal.activations == 2
    assert cal.minutes == 6
    assert cal.beats_always_off


# -- evaluation on any file of the shared format ------------------------------------------------------------------


def test_cli_skips_missing_channels_and_ignores_extra_ones() -> None:
    series = load_csv(IDEAL)
    assert set(series.appliances) == {"dishwasher", "washing_machine"}  # shower_w is not ours
    res = CliRunner().invoke(_app(), ["nilm", "--data", str(IDEAL)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["skipped"] == ["kettle", "microwave"]
    assert "kettle, microwave" in res.stderr
    assert set(out["appliances"]) == {"dishwasher", "washing_machine"}
    for base in out["baselines"].values():
        assert set(base) == {"dishwasher", "washing_machine"}
    mask = series.scored()
    for a, m in out["appliances"].items():
        assert {"mae_w", "sae", "nde", "f1_on", "shown_fraction", "mae_w_shown"} <= set(m)
        assert 0.0 <= m["shown_fraction"] <= 1.0
        assert out["baselines"]["always_off"][a]["mae_w"] == pytest.approx(
            np.mean(series.appliances[a][mask]), abs=1e-2
        )
        if m["mae_w_shown"] is None:
            assert m["shown_fraction"] == 0.0
    # a plug the file cannot play is an error, not a silent skip
    res = CliRunner().invoke(_app(), ["nilm", "--data", str(IDEAL), "--plugs", "kettle"])
    assert res.exit_code == 2


# -- the runtime: withheld estimates, calibration after N activations ---------------------------------------------


@pytest.fixture(scope="module")
def month() -> Series:
    return load_csv(UKDALE_MONTH)


@pytest.fixture(scope="module")
def fold_models() -> NilmModels:
    return NilmModels(WITHOUT_UKDALE)


def _stream(part: Series, plugged: bool) -> list[Reading]:
    rs: list[Reading] = []
    for i, t in enumerate(part.ts):
        if plugged:
            rs.append(reading("plug-k", "h", "power", float(part.appliances["kettle"][i]), float(t + 30)))
        if np.isfinite(part.mains[i]):
            rs.append(reading("m", "h", "power", float(part.mains[i]), float(t + 60)))
    return rs


def test_runtime_calibrates_from_the_plug_then_applies_it(fold_models: NilmModels, month: Series) -> None:
    day = 1440
    rt = NilmRuntime(fold_models, meter="m", plugs={"plug-k": "kettle"}, min_activations=3)
    est = []
    for r in _stream(month.slice(0, 3 * day), plugged=True):
        est += feed_nilm(rt, [r])
    kettle = [e for e in est if e.appliance == "kettle"]
    assert {e.source for e in kettle} == {PLUG_SOURCE}
    assert all(e.shown for e in kettle)
    boils = activations(month.appliances["kettle"][: 3 * day], ON_THRESHOLD_W["kettle"])
    assert boils >= 3
    cal = rt.calibrations["kettle"]
    assert cal.activations >= 3
    assert 0.5 <= cal.scale <= 2.0
    # the plug is gone: the kettle comes from the model again, calibrated and gated by this home's verdict
    after = []
    for r in _stream(month.slice(3 * day, 4 * day), plugged=False):
        after += feed_nilm(rt, [r])
    after += rt.flush()
    model_k = [e for e in after if e.appliance == "kettle" and e.source == MODEL_SOURCE]
    assert model_k
    assert all(e.shown == cal.beats_always_off for e in model_k)
    # withheld estimates never become Readings; shown ones carry their confidence
    rd = to_readings(after, "m", "h")
    n_shown = sum(e.shown for e in after)
    assert len(rd) == 2 * n_shown
    assert all("confidence" in r.extra for r in rd)
    total = sum(rt.shown_counts.values()) + sum(rt.withheld_counts.values())
    assert total == len(est) + len(after)
    energy = sum(e.power_w for e in est + after if e.appliance == "dishwasher" and e.shown) / 60.0
    assert rt.energy_wh["dishwasher"] == pytest.approx(energy)


# -- before/after on an unseen house ------------------------------------------------------------------------------


def before_after(models: NilmModels, month: Series) -> dict[str, dict[str, float | None]]:
    """Per appliance on the days after ``ADAPT_DAYS``: the model as trained (and its confidence gate) against the
    model calibrated on the first ``ADAPT_DAYS`` days' plug (and the release the calibration decides)."""
    cut = ADAPT_DAYS * 1440
    both = models.predict_series_with_confidence(month.mains)
    mask = month.scored()
    out: dict[str, dict[str, float | None]] = {}
    for a, (power, conf) in both.items():
        truth = month.appliances[a]
        p_on = p_on_of(np.nan_to_num(power), np.nan_to_num(conf))
        adapt = mask.copy()
        adapt[cut:] = False
        test = mask.copy()
        test[:cut] = False
        cal = fit_calibration(a, np.nan_to_num(power[adapt]), p_on[adapt], truth[adapt])
        thr = ON_THRESHOLD_W[a]
        before = appliance_metrics(power[test], truth[test], thr)
        gate_before = gated_metrics(power[test], truth[test], np.nan_to_num(conf[test]) >= SHOW_CONFIDENCE)
        calibrated = np.where(np.isfinite(power), cal.apply(np.nan_to_num(power), p_on), np.nan)
        after = appliance_metrics(calibrated[test], truth[test], thr)
        released = np.isfinite(power[test]) & cal.beats_always_off
        gate_after = gated_metrics(calibrated[test], truth[test], released)
        out[a] = {
            "always_off_mae_w": float(np.mean(truth[test])),
            "mae_before": before["mae_w"],
            "mae_after": after["mae_w"],
            "f1_before": before["f1_on"],
            "f1_after": after["f1_on"],
            "shown_before": gate_before["shown_fraction"],
            "mae_shown_before": gate_before["mae_w_shown"],
            "off_shown_before": gate_before["always_off_mae_w_shown"],
            "shown_after": gate_after["shown_fraction"],
            "mae_shown_after": gate_after["mae_w_shown"],
            "off_shown_after": gate_after["always_off_mae_w_shown"],
            "p_on_threshold": cal.p_on_threshold,
            "scale": cal.scale,
        }
    return out


def test_plug_calibration_before_after_on_an_unseen_house(fold_models: NilmModels, month: Series) -> None:
    manifest = fold_models.manifest
    assert "ukdale_h2" not in manifest["houses"]
    assert not any(name.startswith("ukdale_house2") for name in manifest["trained_on"])
    res = before_after(fold_models, month)
    print(json.dumps(res, indent=1))  # the figures in the model card come from this print (pytest -s)
    for a, r in res.items():
        assert r["mae_after"] is not None
        assert r["mae_before"] is not None
        # calibration never makes the estimate worse on the unseen days than the model as trained (10 % slack:
        # it was fitted on other days)
        assert r["mae_after"] <= 1.1 * r["mae_before"], a
        # what the calibrated gate releases is at most 70 % of always-off over the same minutes (the target)
        if r["mae_shown_after"] is not None:
            assert r["off_shown_after"] is not None
            assert r["mae_shown_after"] <= 0.7 * r["off_shown_after"], a
    gains = [1 - r["mae_after"] / r["mae_before"] for r in res.values() if r["mae_before"]]  # type: ignore[operator]
    assert np.mean(gains) > 0.0


def test_calibration_survives_a_restart_of_the_processor(tmp_path: Path) -> None:
    state = tmp_path / "nilm.json"
    cal = Calibration("kettle", 6, 20160, 0.9, 1.15, 3.4, 14.2, beats_always_off=True)
    state.write_text(json.dumps({"energy_wh": {"kettle": 12.5}, "calibrations": {"kettle": cal.as_dict()}}))
    proc = NilmProcessor(Config(kind="nilm", meter="m", subject="h", plugs={"plug-k": "kettle"}), state)
    assert proc.runtime.calibrations == {"kettle": cal}
    assert proc.runtime.energy_wh["kettle"] == 12.5
    assert proc.health()["calibrations"] == {"kettle": cal.as_dict()}
    # the state file of the format before issue 19 (appliance -> Wh) still loads
    state.write_text(json.dumps({"kettle": 3.0}))
    old = NilmProcessor(Config(kind="nilm", meter="m", subject="h"), state)
    assert old.runtime.energy_wh["kettle"] == 3.0
    assert old.runtime.calibrations == {}

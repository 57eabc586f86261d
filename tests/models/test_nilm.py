"""NILM: data format, gap rule, metrics and baselines, the committed ONNX models, the streaming runtime, the CLI.

Uses the committed models and the small real excerpt in tests/data/nilm (see its README); never trains.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from drivers.sim import Meter, Plug
from edge_agent.processors.nilm import feed_nilm, to_readings
from kyojo.contract.vocab import Reading, reading
from models.nilm.cli import register
from models.nilm.data import APPLIANCES, NilmDataError, Series, load_csv, write_csv
from models.nilm.metrics import appliance_metrics, co_predict, evaluate, f1_on, fit_baselines
from models.nilm.model import MODEL_DIR, NilmModels, residual_mains
from models.nilm.runtime import MODEL_SOURCE, PLUG_SOURCE, NilmRuntime, minute_of
from models.nilm.windows import MAX_MISSING_FRACTION, fill_windows, series_windows
from tests import kit

DATA = kit.DATA / "nilm"
REFIT = DATA / "refit_house2_2014-06-14_1min.csv.gz"  # has an 11-minute gap
UKDALE = DATA / "ukdale_house2_2013-06-29_1min.csv.gz"  # all four appliances active


@pytest.fixture(scope="module")
def models() -> NilmModels:
    return NilmModels()


@pytest.fixture(scope="module")
def refit() -> Series:
    return load_csv(REFIT)


@pytest.fixture(scope="module")
def ukdale() -> Series:
    return load_csv(UKDALE)


# -- data ------------------------------------------------------------------------------------------------------


def test_excerpt_loads_as_regular_grid_with_gaps(refit: Series) -> None:
    assert len(refit) == 1440
    assert np.all(np.diff(refit.ts) == 60)
    assert set(refit.appliances) == set(APPLIANCES)
    gap = ~np.isfinite(refit.mains)
    assert gap.sum() == 11
    assert not refit.scored()[gap].any()


def test_missing_timestamps_become_gaps_and_round_trip(tmp_path: Path, ukdale: Series) -> None:
    part = ukdale.slice(0, 10)
    path = tmp_path / "x.csv"
    write_csv(part, path)
    lines = path.read_text().splitlines()
    del lines[4]  # drop one minute from the grid
    path.write_text("\n".join(lines) + "\n")
    back = load_csv(path)
    assert len(back) == 10
    assert math.isnan(back.mains[3])
    assert np.allclose(back.mains[4:], part.mains[4:])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("time,mains_w\n", "header"),
        ("timestamp,mains_w\n120,1\n60,1\n", "60 s grid"),
        ("timestamp,mains_w\n60,x\n", "x"),
    ],
)
def test_bad_files_raise_one_error_type(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(NilmDataError, match=match):
        load_csv(path)


# -- gap rule --------------------------------------------------------------------------------------------------


def test_fill_windows_holds_last_value_and_applies_missing_limit() -> None:
    nan = np.nan
    w = np.array(
        [
            [nan, 1.0, nan, 3.0, nan],  # centre missing -> no estimate; leading hole back-filled
            [1.0, 2.0, 5.0, nan, nan],  # 2 of 5 missing -> ok
            [nan, nan, 5.0, nan, 7.0],  # 3 of 5 missing -> too many
        ]
    )
    filled, ok = fill_windows(w)
    assert filled.tolist() == [[1, 1, 1, 3, 3], [1, 2, 5, 5, 5], [5, 5, 5, 5, 7]]
    assert ok.tolist() == [False, True, False]
    assert MAX_MISSING_FRACTION == 0.5


def test_series_windows_are_centred_and_padded() -> None:
    v = series_windows(np.arange(4.0), 3)
    assert v.shape == (4, 3)
    assert np.isnan(v[0, 0]) and v[0, 1] == 0 and v[1].tolist() == [0, 1, 2]


# -- metrics and baselines -------------------------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    true = np.array([0.0, 2000.0, 2000.0, 0.0])
    pred = np.array([0.0, 1500.0, 0.0, 1200.0])
    m = appliance_metrics(pred, true, 1000.0)
    assert m["mae_w"] == pytest.approx((500 + 2000 + 1200) / 4)
    assert m["sae"] == pytest.approx(abs(2700 - 4000) / 4000)
    assert m["nde"] == pytest.approx((500**2 + 2000**2 + 1200**2) / (2 * 2000**2), abs=1e-4)
    assert m["f1_on"] == pytest.approx(2 * 1 / (2 + 2))
    assert f1_on(np.zeros(3), np.zeros(3), 1.0) is None
    assert appliance_metrics(np.zeros(2), np.zeros(2), 1.0)["sae"] is None


def test_co_picks_the_closest_state_sum() -> None:
    states = {"a": [0.0, 2000.0], "b": [0.0, 100.0]}
    got = co_predict(np.array([0.0, 90.0, 2050.0, 2110.0, np.nan]), states)
    assert got["a"].tolist() == [0, 0, 2000, 2000, 0]
    assert got["b"].tolist() == [0, 100, 0, 100, 0]


def test_fit_baselines_has_off_state_and_training_mean(ukdale: Series) -> None:
    b = fit_baselines([ukdale])
    for a in APPLIANCES:
        assert b["co"][a][0] == 0.0 and len(b["co"][a]) == 3
        assert b["mean"][a] == pytest.approx(np.nanmean(ukdale.appliances[a]), abs=1e-3)


# -- committed models ------------------------------------------------------------------------------------------


def test_model_files_within_budget_and_match_manifest(models: NilmModels) -> None:
    sizes = [(MODEL_DIR / e["file"]).stat().st_size for e in models.manifest["appliances"].values()]
    assert len(sizes) == len(APPLIANCES)
    assert max(sizes) <= 2 * 1024 * 1024
    assert sum(sizes) <= 8 * 1024 * 1024
    assert models.appliances == APPLIANCES  # NilmModels verified every sha256 when it loaded


def test_predictions_non_negative_bounded_and_absent_in_gaps(models: NilmModels, refit: Series) -> None:
    pred = models.predict_series(refit.mains)
    gap = ~np.isfinite(refit.mains)
    for a, p in pred.items():
        assert np.isnan(p[gap]).all()
        ok = np.isfinite(p)
        assert ok.sum() >= len(p) - gap.sum() - 2
        assert (p[ok] >= 0).all()
        assert (p[ok] <= refit.mains[ok] + 1e-3).all()
        assert (p[ok] <= models.models[a].max_w).all()


def test_kettle_is_found_on_the_excerpt(models: NilmModels, ukdale: Series) -> None:
    pred = models.predict_series(ukdale.mains, ["kettle"])["kettle"]
    f1 = f1_on(np.nan_to_num(pred), ukdale.appliances["kettle"], 1000.0)
    assert f1 is not None and f1 > 0.7


# -- runtime ---------------------------------------------------------------------------------------------------


def _meter_readings(s: Series, device: str = "m") -> list[Reading]:
    return [
        reading(device, "h", "power", float(v), float(t + 60))
        for t, v in zip(s.ts, s.mains, strict=True)
        if np.isfinite(v)
    ]


def _by_appliance(estimates: list) -> dict[str, dict[float, float]]:  # type: ignore[type-arg]
    out: dict[str, dict[float, float]] = {a: {} for a in APPLIANCES}
    for e in estimates:
        out[e.appliance][e.ts] = e.power_w
    return out


def test_runtime_matches_batch_evaluation_and_skips_gaps(models: NilmModels, refit: Series) -> None:
    part = refit.slice(1100, 1400)  # 300 minutes around the gap (rows 1213-1223)
    rt = NilmRuntime(models, meter="m")
    est = []
    for r in _meter_readings(part):
        est += feed_nilm(rt, [r])
    est += rt.flush()
    got = _by_appliance(est)
    batch = models.predict_series(part.mains)
    for a in APPLIANCES:
        want = {float(t + 60): float(v) for t, v in zip(part.ts, batch[a], strict=True) if np.isfinite(v)}
        assert got[a].keys() == want.keys()
        assert all(got[a][k] == pytest.approx(want[k], abs=1e-3) for k in want)
        gap_ends = {float(t + 60) for t in part.ts[~np.isfinite(part.mains)]}
        assert not gap_ends & got[a].keys()
    # one ONNX run per appliance per estimated minute; energy counters = sum of the *shown* power x 1 min
    assert rt.stats["inferences"] == len(est)
    for a in APPLIANCES:
        assert rt.energy_wh[a] == pytest.approx(sum(e.power_w for e in est if e.appliance == a and e.shown) / 60.0)
        assert rt.shown_counts[a] + rt.withheld_counts[a] == len(got[a])
        last = [e for e in est if e.appliance == a][-1]
        assert last.energy_wh == pytest.approx(rt.energy_wh[a])
    assert {e.source for e in est} == {MODEL_SOURCE}


def test_runtime_plug_assist_uses_plug_truth_and_residual(models: NilmModels, ukdale: Series) -> None:
    part = ukdale.slice(300, 700)
    rt = NilmRuntime(models, meter="m", plugs={"plug-k": "kettle", "plug-tv": "tv"})
    tv = np.full(len(part), 40.0)
    rs: list[Reading] = []
    for i, t in enumerate(part.ts):
        rs.append(reading("plug-k", "h", "power", float(part.appliances["kettle"][i]), float(t + 30)))
        rs.append(reading("plug-tv", "h", "power", float(tv[i]), float(t + 59)))
        rs.append(reading("m", "h", "power", float(part.mains[i] + tv[i]), float(t + 60)))
    est = []
    for r in rs:
        est += feed_nilm(rt, [r])
    est += rt.flush()
    kettle = [e for e in est if e.appliance == "kettle"]
    assert {e.source for e in kettle} == {PLUG_SOURCE}
    assert len(kettle) == len(part)
    truth = dict(zip((part.ts + 60).astype(float).tolist(), part.appliances["kettle"].tolist(), strict=True))
    assert all(e.power_w == pytest.approx(truth[e.ts]) for e in kettle)
    resid = residual_mains(part.mains, [part.appliances["kettle"]])
    batch = models.predict_series(resid, ["dishwasher"])["dishwasher"]
    dw = {e.ts: e.power_w for e in est if e.appliance == "dishwasher"}
    want = {float(t + 60): float(v) for t, v in zip(part.ts, batch, strict=True) if np.isfinite(v)}
    assert dw.keys() == want.keys()
    assert all(dw[k] == pytest.approx(want[k], abs=1e-2) for k in want)


def test_runtime_on_simulated_meter_with_an_outage(models: NilmModels) -> None:
    t0 = 1_700_000_000.0 - (1_700_000_000 % 86400) - 9 * 3600  # local (JST) midnight
    plugs = [Plug(f"h-{a}", "h", 7, appliance=a, grid_id="h") for a in ("fridge", "kettle", "washing_machine", "tv")]
    meter = Meter("h-meter", "h", 7, plugs)
    readings = meter.readings_between(t0, t0 + 14 * 3600)
    power = [r for r in readings if r.metric == "power"]
    outage = (t0 + 9 * 3600, t0 + 9 * 3600 + 20 * 60)  # 20 minutes without meter readings
    rt = NilmRuntime(models, meter="h-meter")
    est = []
    for r in readings:
        if not outage[0] < r.ts <= outage[1]:
            est += feed_nilm(rt, [r])
    est += rt.flush()
    assert est
    minute_power: dict[int, list[float]] = {}
    for r in power:
        minute_power.setdefault(minute_of(r.ts), []).append(r.value)
    for e in est:
        assert e.source == MODEL_SOURCE
        assert 0.0 <= e.power_w <= models.models[e.appliance].max_w
        m = int(e.ts) - 60
        assert e.power_w <= np.mean(minute_power[m]) + 1e-3
        assert not outage[0] <= m < outage[1]
    for a in APPLIANCES:
        assert rt.energy_wh[a] == pytest.approx(sum(e.power_w for e in est if e.appliance == a and e.shown) / 60.0)
    # every closed minute outside the outage and the stream's edges got one estimate per appliance
    n_minutes = len({minute_of(r.ts) for r in power if not outage[0] < r.ts <= outage[1]})
    for a, m in models.models.items():
        edge_and_outage = 2 * (m.window // 2) + 20 + 2 * (m.window // 2)
        assert n_minutes - edge_and_outage <= sum(e.appliance == a for e in est) <= n_minutes
    assert rt.stats["late"] == 0
    rs = to_readings([replace(e, shown=True) for e in est[:2]], "h-meter", "h")
    assert [r.metric for r in rs] == ["power", "energy", "power", "energy"]
    assert rs[0].extra["estimated"] == "true" and rs[0].device == f"h-meter.nilm.{est[0].appliance}"


def test_runtime_drops_late_readings_and_ignores_other_devices(models: NilmModels) -> None:
    rt = NilmRuntime(models, meter="m")
    feed_nilm(rt, [reading("m", "h", "power", 300.0, 1_000_020.0)])
    feed_nilm(rt, [reading("m", "h", "power", 300.0, 1_000_200.0)])
    feed_nilm(rt, [reading("m", "h", "power", 300.0, 1_000_030.0)])  # its minute is closed already
    feed_nilm(rt, [reading("other", "h", "power", 300.0, 1_000_210.0)])
    feed_nilm(rt, [reading("m", "h", "energy", 5.0, 1_000_210.0)])
    assert rt.stats["late"] == 1 and rt.stats["ignored"] == 1


# -- CLI -------------------------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """A root so that ``nilm`` stays a subcommand, as when mounted under ``kyojo models eval``."""

    return app


def test_cli_prints_metrics_and_three_baselines(ukdale: Series) -> None:
    res = CliRunner().invoke(_app(), ["nilm", "--data", str(UKDALE)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"appliances", "baselines", "skipped"}
    assert out["skipped"] == []
    assert set(out["baselines"]) == {"always_off", "mean", "co"}
    gated = {"shown_fraction", "mae_w_shown", "always_off_mae_w_shown"}
    for block in [out["appliances"], *out["baselines"].values()]:
        assert set(block) == set(APPLIANCES)
        for m in block.values():
            assert set(m) - gated == {"mae_w", "sae", "nde", "f1_on"}
    assert all(set(m) >= gated for m in out["appliances"].values())
    off = out["baselines"]["always_off"]
    for a in APPLIANCES:
        assert off[a]["mae_w"] == pytest.approx(np.mean(ukdale.appliances[a]), abs=1e-2)
        assert off[a]["nde"] == pytest.approx(1.0)
    assert out["appliances"]["kettle"]["mae_w"] < off["kettle"]["mae_w"]


def test_cli_plug_assist_and_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(_app(), ["nilm", "--data", str(REFIT), "--plugs", "kettle,microwave"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["plug_assisted"]) == {"dishwasher", "washing_machine"}
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,mains_w\n60,100\n")
    res = CliRunner().invoke(_app(), ["nilm", "--data", str(bad)])
    assert res.exit_code == 2
    res = CliRunner().invoke(_app(), ["nilm", "--data", str(REFIT), "--plugs", "toaster"])
    assert res.exit_code != 0


def test_evaluate_counts_missing_estimates_as_zero(ukdale: Series) -> None:
    pred = {"kettle": np.full(len(ukdale), np.nan)}
    b = {"mean": {"kettle": 1.0}, "co": {"kettle": [0.0, 2000.0]}}
    out = evaluate(ukdale, pred, b)
    assert out["appliances"]["kettle"] == out["baselines"]["always_off"]["kettle"]

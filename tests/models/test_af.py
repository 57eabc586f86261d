"""AF rhythm model: features, protocol windows, metrics, the committed ONNX model, the eval CLI and the runtime.

Uses only the committed ``models/af/af_rr.onnx`` and the small excerpts in ``tests/data/rr`` (no training here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from drivers.sim import HeartRateStrap
from edge_agent.processors.health import feed_af
from kyojo.contract.errors import KyojoError
from kyojo.contract.vocab import Reading, reading
from models.af import AfModel, AfMonitor, evaluate, load_dir, load_record, make_windows, window_features
from models.af.cli import register
from models.af.data import RecordFormatError, Windows
from models.af.features import FEATURE_NAMES, keep_mask, sample_entropy
from models.af.metrics import Metrics, auroc
from models.af.model import DEFAULT_MODEL_PATH
from tests import kit

DATA = kit.DATA / "rr"
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def model() -> AfModel:
    return AfModel()


def as_readings(rr_ms: np.ndarray, t_s: np.ndarray, person: str = "x") -> list[Reading]:
    return [reading("strap", person, "rr_interval", float(v), T0 + float(t)) for v, t in zip(rr_ms, t_s, strict=True)]


# ---- features ---------------------------------------------------------------------------------------------------
def test_regular_rhythm_features() -> None:
    f = window_features(np.full(60, 800.0))
    assert f is not None and f.shape == (len(FEATURE_NAMES),)
    named = dict(zip(FEATURE_NAMES, f.tolist(), strict=True))
    assert named["cv"] == 0 and named["nrmssd"] == 0 and named["pnn50"] == 0 and named["frac_removed"] == 0
    assert named["dominant"] == 1.0 and named["frac_flat"] == 1.0


def test_artefacts_and_ectopic_beats_are_filtered() -> None:
    rr = np.full(60, 800.0)
    rr[10] = 100.0  # extra detection: below 250 ms
    rr[20] = 3000.0  # missed beats: above 2500 ms
    rr[30], rr[31] = 480.0, 1120.0  # premature beat and compensatory pause (> 30 % from the running median)
    keep = keep_mask(rr)
    assert keep.sum() == 56 and not keep[[10, 20, 30, 31]].any()
    f = window_features(rr)
    assert f is not None
    named = dict(zip(FEATURE_NAMES, f.tolist(), strict=True))
    assert named["nrmssd"] == 0 and named["frac_removed"] == pytest.approx(4 / 60)
    assert named["raw_nrmssd"] > 0.1  # the unfiltered view still sees the ectopic beat


def test_too_many_artefacts_gives_no_decision() -> None:
    rr = np.full(60, 800.0)
    rr[::2] = 100.0
    rr[1::4] = 3000.0
    assert window_features(rr) is None


def test_sample_entropy_regular_vs_random() -> None:
    rng = np.random.default_rng(0)
    assert sample_entropy(np.full(60, 800.0)) == 0.0
    assert sample_entropy(rng.uniform(400, 1200, 60)) > 1.5


# ---- protocol ---------------------------------------------------------------------------------------------------
def _write(path: Path, rhythm: list[str]) -> None:
    lines = ["beat_sample,t_s,rr_ms,rhythm"]
    for i, r in enumerate(rhythm):
        lines.append(f"{(i + 1) * 200},{(i + 1) * 0.8:.3f},800,{r}")
    path.write_text("\n".join(lines) + "\n")


def test_window_label_rule(tmp_path: Path) -> None:
    # 120 beats -> windows at 0, 30, 60; AF when >= 30 of 60 beats are AFIB; AFL counts as non-AF
    rhythm = ["N"] * 30 + ["AFIB"] * 30 + ["AFL"] * 31 + ["AFIB"] * 29
    _write(tmp_path / "afdb_t.csv", rhythm)
    w = make_windows([load_record(tmp_path / "afdb_t.csv")])
    assert isinstance(w, Windows) and len(w) == 3
    # window 0: 30 AFIB of 60 (exactly half: AF); 1: 30 AFIB + 30 AFL (AF); 2: 31 AFL + 29 AFIB (non-AF)
    assert w.is_af.tolist() == [True, True, False]


def test_bad_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "afdb_bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(RecordFormatError, match="header"):
        load_record(tmp_path / "afdb_bad.csv")
    _write(tmp_path / "afdb_x.csv", ["N", "VT"])
    with pytest.raises(RecordFormatError, match="rhythm"):
        load_record(tmp_path / "afdb_x.csv")
    with pytest.raises(FileNotFoundError):
        load_dir(tmp_path / "empty")


# ---- metrics ----------------------------------------------------------------------------------------------------
def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + y * 0.5, 1).astype(np.float64)  # ties on purpose
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert auroc(y, s) == pytest.approx(pairwise)
    assert math.isnan(auroc(np.ones(3, dtype=bool), np.ones(3)))


def test_metrics_counts() -> None:
    m = Metrics.compute(np.array([True, True, False, False]), np.array([0.9, 0.2, 0.8, 0.1]), 0.5)
    assert (m.tp, m.fn, m.fp, m.tn) == (1, 1, 1, 1)
    assert m.as_dict() == {
        "sensitivity": 0.5,
        "specificity": 0.5,
        "ppv": 0.5,
        "f1": 0.5,
        "auroc": 0.75,
        "windows": 4,
        "af_windows": 2,
    }


# ---- the committed model -----------------------------------------------------------------------------------------
def test_committed_model_is_small_and_self_describing(model: AfModel) -> None:
    assert DEFAULT_MODEL_PATH.stat().st_size < 1_000_000
    assert model.version.startswith("af_rr-1.0+") and 0.0 < model.threshold < 1.0
    assert model.info.features == FEATURE_NAMES
    sess_opts = model.session.get_session_options()
    assert sess_opts.intra_op_num_threads == 1


def test_model_separates_regular_from_irregular(model: AfModel) -> None:
    rng = np.random.default_rng(2)
    sinus = 850 + 25 * np.sin(np.arange(60) / 2.0) + rng.normal(0, 8, 60)
    af = rng.uniform(450, 1100, 60)
    fs, fa = window_features(sinus), window_features(af)
    assert fs is not None and fa is not None
    p = model.scores(np.stack([fs, fa]))
    assert p[0] < 0.2 < 0.8 < p[1]


# ---- evaluation CLI ----------------------------------------------------------------------------------------------
def test_eval_cli_prints_one_json_object(model: AfModel) -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps Typer from collapsing the app into its only command
    def _noop() -> None: ...

    result = CliRunner().invoke(app, ["af", "--data", str(DATA)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    for key in ("sensitivity", "specificity", "ppv", "f1", "auroc", "windows", "af_windows"):
        assert key in out
    expected = evaluate(load_dir(DATA), model).as_dict()
    assert out == expected
    # 1716 + 737 + 652 beats -> 56 + 23 + 20 windows of 60 beats every 30
    assert out["windows"] == 99 and out["af_windows"] == 40
    assert out["sensitivity"] >= 0.9 and out["specificity"] >= 0.8 and out["auroc"] >= 0.9


def test_eval_cli_rejects_a_directory_without_records(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None: ...

    result = CliRunner().invoke(app, ["af", "--data", str(tmp_path)])
    assert result.exit_code == 2


def test_a_corrupt_model_file_is_a_kyojo_error_and_one_line_from_the_cli(tmp_path: Path) -> None:
    corrupt = tmp_path / "af_rr.onnx"
    corrupt.write_bytes(DEFAULT_MODEL_PATH.read_bytes()[:200])  # truncated by a power cut or a bad copy
    with pytest.raises(KyojoError, match="not a model onnxruntime can load"):
        AfModel(corrupt)
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None: ...

    result = CliRunner().invoke(app, ["af", "--data", str(DATA), "--model", str(corrupt)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # not the loader's exception
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a model onnxruntime can load" in lines[0]


# ---- runtime -----------------------------------------------------------------------------------------------------
def test_sinus_rhythm_of_the_simulated_strap_gives_no_af_alert(model: AfModel) -> None:
    mon = AfMonitor(model)
    for seed in range(3):
        strap = HeartRateStrap(f"home-p{seed}-hr", f"p{seed}", seed)
        # 03:00-07:00 UTC = 12:00-16:00 JST: waking hours, with activity bouts
        assert feed_af(mon, strap.readings_between(T0, T0 + 4 * 3600)) == []
    assert mon.windows > 1500 and mon.open_alerts() == []


def test_af_excerpt_gives_one_alert_per_episode(model: AfModel) -> None:
    rec = load_record(DATA / "afdb_08219.csv")
    alerts = feed_af(AfMonitor(model), as_readings(rec.rr_ms, rec.t_s))
    assert alerts, "no AF alert on an AF excerpt"
    first = alerts[0]
    assert first.kind == "atrial_fibrillation" and first.is_open and first.model_version == model.version
    # the first AF episode of the excerpt starts at t = 12311.7 s; the alert's start estimate is the start of the
    # first AF window (at least half its 60 beats AF, so it may begin up to ~30 beats before the onset)
    assert 12311 - 60 <= first.started - T0 <= 12311 + 120
    assert len({a.id for a in alerts}) == 1  # the short sinus gaps are one episode (cooldown)
    assert "not a diagnosis" in first.message


def test_monitor_takes_arrays_as_the_agent_feeds_readings(model: AfModel) -> None:
    """The model's own input is arrays (beat times, RR ms); the agent's adapter (Readings) gives the same alerts."""
    rec = load_record(DATA / "afdb_08219.csv")
    from_arrays = AfMonitor(model).push_series("x", T0 + rec.t_s, rec.rr_ms)
    assert from_arrays and from_arrays == feed_af(AfMonitor(model), as_readings(rec.rr_ms, rec.t_s))
    with pytest.raises(ValueError, match="one length"):
        AfMonitor(model).push_series("x", rec.t_s[:3], rec.rr_ms[:2])


def test_af_excerpt_survives_ble_quantisation(model: AfModel) -> None:
    rec = load_record(DATA / "afdb_08219.csv")
    rr = np.round(rec.rr_ms * 1.024) / 1.024  # 1/1024 s, as the BLE Heart Rate Measurement carries RR
    assert feed_af(AfMonitor(model), as_readings(rr, rec.t_s))


def test_sinus_excerpt_and_gaps_give_no_alert(model: AfModel) -> None:
    rec = load_record(DATA / "afdb_04015.csv")
    mon = AfMonitor(model)
    assert feed_af(mon, as_readings(rec.rr_ms, rec.t_s)) == []
    # a gap in the beat stream empties the window: 59 beats, a gap, 59 beats -> no decision at all
    af = load_record(DATA / "afdb_08219.csv")
    idx = np.flatnonzero(af.is_af)[:118]
    t = np.concatenate([np.arange(59) * 0.7, 100 + np.arange(59) * 0.7])
    mon2 = AfMonitor(model)
    assert feed_af(mon2, as_readings(af.rr_ms[idx], t, "y")) == [] and mon2.windows == 0

"""Train the per-appliance NILM CNNs on the shared developer data and export them to ONNX (reproducible, seeded).

    .venv/bin/python -m models.nilm.train                 # the committed models -> models/nilm/*.onnx + manifest
    .venv/bin/python -m models.nilm.train --check         # retrain into a temp dir, compare with the committed files
    .venv/bin/python -m models.nilm.train --protocol-only --report models/nilm/protocol_report.json  # evaluation

Needs the ``train`` extra (torch CPU, onnx); the run time needs only numpy + onnxruntime. Trains only on
``/work/shared/data/nilm`` (every file there: REFIT House 2, UK-DALE House 2, IDEAL House 65 and 18 one-day REFIT
houses; CC BY 4.0, attribution in MODEL_CARD.md). Each appliance's committed file comes from the recipe named for
it in :data:`RECIPES` (the one that did better on held-out houses, MODEL_CARD.md): :data:`ISSUE19` trains on every
house; :data:`EBE9D1C` (the recipe of commit ebe9d1c) on REFIT House 2 and UK-DALE House 2, June, only.
``--protocol`` retrains the issue-19 recipe with houses left out (:func:`folds`) and scores every house with the
model that never saw it (leave-one-house-out; the one-day houses are left out in two groups, which is harsher, not
easier). Training is deterministic (seeded, one torch thread, deterministic algorithms): ``--check`` retrains every
file into a temporary directory and compares it byte for byte (sha256) with the committed one.

Architecture and loss (both recipes): a centred window of mains power; input normalised inside the graph (window
minimum subtracted, /1000); 4 conv layers + 2 dense layers; two heads, on-probability (BCE on ``y > gate_w``) and
power (MSE on the on-minutes); exported output = power if p(on) > 0.5 else 0, clipped to ``[0, min(max_w, mains)]``
(the issue-19 recipe also exports ``p_on``). Augmentation: each other appliance's true power is subtracted from the
input with p = 0.3 (so the model also sees plug-assisted residuals), and input and target are scaled together by
U(0.85, 1.15) (kettles differ in rating).
Synthetic aggregates (``--synthetic``; off by default, it did not help on held-out houses, see MODEL_CARD.md): with
p = :data:`P_SYNTH` a window's own target load is removed and a real activation of the target from *another* house
is added, amplitude x U(0.8, 1.25) and duration x U(0.8, 1.25). Training windows are drawn house by house (a house
with probability ~ sqrt(its minutes)), so the long REFIT House 2 record does not drown the others (issue-19
recipe; the ebe9d1c recipe draws minutes uniformly, 12 epochs x 20,000 windows).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.nilm.data import APPLIANCES, MAINS_CAP_W, ON_THRESHOLD_W, FloatArray, Series, load_csv
from models.nilm.metrics import evaluate, fit_baselines
from models.nilm.model import MANIFEST, MODEL_DIR, NilmModels
from models.nilm.windows import fill_windows

DATA_DIR = Path("/work/shared/data/nilm")
_FILE = re.compile(r"^(refit|ukdale|ideal)_house(\d+)_.+_1min\.csv(\.gz)?$")
#: The houses that are whole folds of the protocol; the other (one-day) houses are left out in two groups.
LONG_HOUSES = ("refit_h2", "ukdale_h2", "ideal_h65")
SEED = 20240609
SCALE_W = 1000.0


@dataclass(frozen=True)
class Config:
    """Per-appliance recipe: window (minutes, odd), gate threshold for the on-head (W), output bound (W)."""

    window: int
    gate_w: float
    max_w: float


CONFIGS: dict[str, Config] = {
    "kettle": Config(window=31, gate_w=500.0, max_w=3500.0),
    "microwave": Config(window=31, gate_w=200.0, max_w=2000.0),
    "dishwasher": Config(window=121, gate_w=20.0, max_w=3000.0),
    "washing_machine": Config(window=121, gate_w=20.0, max_w=3000.0),
}
EPOCHS = 8
SAMPLES_PER_EPOCH = 12_000
POS_FRACTION = 0.2


@dataclass(frozen=True)
class Recipe:
    """How one appliance's file is trained (architecture, loss and augmentation are shared; see the module doc)."""

    name: str
    #: the shared files it trains on (file names); ``None`` = every house it is given
    files: tuple[str, ...] | None
    epochs: int
    samples_per_epoch: int
    #: draw training windows house by house (:meth:`_Pool.draw`) instead of uniformly over all minutes
    house_balanced: bool
    #: export the on-probability ``p_on`` as a second output
    p_on: bool
    synthetic: bool = False


#: The recipe of issue 19: every house, house-balanced sampling, 8 x 12,000 windows, ``p_on`` output.
ISSUE19 = Recipe("issue 19", None, EPOCHS, SAMPLES_PER_EPOCH, house_balanced=True, p_on=True)
#: The recipe of commit ebe9d1c (issue 9): REFIT House 2 and UK-DALE House 2, June only, uniform sampling over
#: minutes, 12 x 20,000 windows, ``power_w`` only.
EBE9D1C = Recipe(
    "commit ebe9d1c (REFIT House 2 and UK-DALE House 2, June; 12 x 20,000)",
    ("refit_house2_2014-06_1min.csv.gz", "ukdale_house2_2013-06_1min.csv.gz"),
    12,
    20_000,
    house_balanced=False,
    p_on=False,
)
#: Which recipe produced each committed file: the one that did better on held-out houses (MODEL_CARD.md, "Which
#: recipe for which appliance"). ``make train-nilm`` retrains every file with its recipe here.
RECIPES: dict[str, Recipe] = {
    "kettle": EBE9D1C,
    "microwave": EBE9D1C,
    "dishwasher": ISSUE19,
    "washing_machine": EBE9D1C,
}
#: Appliances whose confidence gate (p_on >= SHOW_CONFIDENCE) met the target on most held-out houses in the
#: protocol (MODEL_CARD.md): only these are shown on confidence alone; the others need a plug calibration.
CONFIDENCE_RELEASE = frozenset({"dishwasher"})
#: a house is drawn with probability proportional to (its minutes) ** this: 0 = every house alike, 1 = every
#: minute alike; 0.5 keeps the long records from drowning the one-day houses and vice versa
HOUSE_WEIGHT_POWER = 0.5
BATCH = 128
P_SUBTRACT = 0.3
P_SYNTH = 0.3
JITTER = (0.8, 1.25)

Int64Array = np.ndarray[Any, np.dtype[np.int64]]


def house_files(data_dir: Path = DATA_DIR) -> dict[str, list[Path]]:
    """The shared files grouped by house (``refit_h2``, ``ideal_h65``, ...), months in name order."""
    out: dict[str, list[Path]] = {}
    for p in sorted(data_dir.iterdir()):
        m = _FILE.match(p.name)
        if m:
            out.setdefault(f"{m.group(1)}_h{int(m.group(2))}", []).append(p)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] not in LONG_HOUSES, kv[0])))


def load_houses(data_dir: Path = DATA_DIR) -> dict[str, list[Series]]:
    """Every house of the shared data: its files as series (one per month or day)."""
    return {k: [load_csv(p) for p in files] for k, files in house_files(data_dir).items()}


def folds(houses: Sequence[str]) -> list[list[str]]:
    """The protocol's held-out groups: each long house alone, the one-day houses in two alternating groups."""
    short = [h for h in houses if h not in LONG_HOUSES]
    return [[h] for h in houses if h in LONG_HOUSES] + [g for g in (short[0::2], short[1::2]) if g]


def concat(series: Sequence[Series], sep: int) -> Series:
    """One series from several with ``sep`` NaN minutes between them (so no window spans two; not scored).
    Appliances missing from a part are NaN there; ``ts`` is a synthetic regular grid."""
    apps = [a for a in APPLIANCES if any(a in s.appliances for s in series)]
    pad = np.full(sep, np.nan)
    mains = np.concatenate([x for s in series for x in (s.mains, pad)])
    truth = {
        a: np.concatenate([x for s in series for x in (s.appliances.get(a, np.full(len(s), np.nan)), pad)])
        for a in apps
    }
    ts = 60 * np.arange(len(mains), dtype=np.int64)
    return Series(ts, mains, truth, "+".join(s.name for s in series))


class _Pool:
    """Training series concatenated with NaN separators, so windows never cross series; ``house`` per minute."""

    def __init__(self, series: Sequence[Series], houses: Sequence[int], half: int) -> None:
        pad = np.full(half, np.nan)
        parts_m: list[FloatArray] = []
        parts_h: list[Int64Array] = []
        parts_a: dict[str, list[FloatArray]] = {a: [] for a in APPLIANCES}
        for s, h in zip(series, houses, strict=True):
            parts_m += [pad, s.mains]
            parts_h += [np.full(half, -1, dtype=np.int64), np.full(len(s), h, dtype=np.int64)]
            for a in APPLIANCES:
                parts_a[a] += [pad, s.appliances.get(a, np.full(len(s), np.nan))]
        parts_m.append(pad)
        parts_h.append(np.full(half, -1, dtype=np.int64))
        for a in APPLIANCES:
            parts_a[a].append(pad)
        self.mains = np.concatenate(parts_m)
        self.house = np.concatenate(parts_h)
        self.apps = {a: np.concatenate(v) for a, v in parts_a.items()}
        self.half = half

    def centres(self, target: str) -> Int64Array:
        ok = np.isfinite(self.mains) & (self.mains < MAINS_CAP_W) & np.isfinite(self.apps[target])
        return np.flatnonzero(ok).astype(np.int64)

    def draw(self, pool: Int64Array, n: int, rng: np.random.Generator) -> Int64Array:
        """``n`` indices from ``pool``: a house with probability ~ its size ** HOUSE_WEIGHT_POWER, then uniform."""
        hs = self.house[pool]
        groups = [pool[hs == h] for h in np.unique(hs)]
        w = np.array([len(g) for g in groups], dtype=np.float64) ** HOUSE_WEIGHT_POWER
        which = rng.choice(len(groups), size=n, p=w / w.sum())
        return np.concatenate([rng.choice(g, int(np.sum(which == i))) for i, g in enumerate(groups)])

    def batch(
        self,
        idx: Int64Array,
        target: str,
        rng: np.random.Generator,
        donors: Int64Array | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        offs = np.arange(-self.half, self.half + 1)
        pos = idx[:, None] + offs[None, :]
        x = self.mains[pos]
        y = self.apps[target][idx].copy()
        if donors is not None and len(donors):
            synth = np.flatnonzero(rng.random(len(idx)) < P_SYNTH)
            d = rng.choice(donors, len(synth))
            other = self.house[d] != self.house[idx[synth]]
            synth, d = synth[other], d[other]
            stretch = rng.uniform(*JITTER, size=len(synth))
            amp = rng.uniform(*JITTER, size=len(synth))
            dpos = d[:, None] + np.rint(offs[None, :] / stretch[:, None]).astype(np.int64)
            dpos = np.clip(dpos, 0, len(self.mains) - 1)
            trace = np.nan_to_num(self.apps[target][dpos], nan=0.0) * amp[:, None]
            own = np.nan_to_num(self.apps[target][pos[synth]], nan=0.0)
            x[synth] = x[synth] - own + trace
            y[synth] = trace[:, self.half]
        for a in APPLIANCES:
            if a == target:
                continue
            sub = rng.random(len(idx)) < P_SUBTRACT
            x = np.where(sub[:, None], x - np.nan_to_num(self.apps[a][pos], nan=0.0), x)
        x = np.where(np.isfinite(x), np.maximum(x, 0.0), np.nan)
        filled, _ = fill_windows(x)
        scale = rng.uniform(0.85, 1.15, size=len(idx))
        return filled * scale[:, None], y * scale


def _net(window: int, max_w: float, with_p_on: bool = True) -> Any:
    import torch
    from torch import nn

    class Seq2Point(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv1d(1, 16, 7, padding=3),
                nn.ReLU(),
                nn.Conv1d(16, 32, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool1d(2),
                nn.Conv1d(32, 32, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool1d(2),
                nn.Conv1d(32, 32, 3, padding=1),
                nn.ReLU(),
            )
            self.head = nn.Sequential(nn.Linear(32 * (window // 4), 64), nn.ReLU(), nn.Linear(64, 2))

        def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            base = torch.amin(x, dim=1, keepdim=True)
            z = ((x - base) / SCALE_W).unsqueeze(1)
            o = self.head(self.features(z).flatten(1))
            return o[:, 0], o[:, 1]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
            logit, p = self.raw(x)
            centre = x[:, window // 2]
            power = torch.relu(p) * SCALE_W * (logit > 0).to(x.dtype)
            power = torch.clamp(power, max=max_w)
            if not with_p_on:  # the ebe9d1c recipe's graph: power_w only
                return torch.minimum(power, torch.relu(centre))
            return torch.minimum(power, torch.relu(centre)), torch.sigmoid(logit)

    return Seq2Point()


def train_one(
    series: Sequence[Series],
    houses: Sequence[int],
    target: str,
    out_path: Path,
    *,
    recipe: Recipe = ISSUE19,
    seed: int = SEED,
    epochs: int | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Train one appliance's model on ``series`` with ``recipe`` (``epochs`` overrides the recipe's) and export it
    to ``out_path``; returns its manifest entry."""
    import onnx
    import torch

    cfg = CONFIGS[target]
    epochs = recipe.epochs if epochs is None else epochs
    torch.set_num_threads(1)  # part of the recipe: the committed files were trained on one thread
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng([seed, APPLIANCES.index(target)])
    pool = _Pool(series, houses, cfg.window // 2)
    centres = pool.centres(target)
    positives = centres[pool.apps[target][centres] > cfg.gate_w]
    donors = positives if recipe.synthetic else None
    net = _net(cfg.window, cfg.max_w, recipe.p_on)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    bce = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    n_epoch = recipe.samples_per_epoch

    def draw(from_: Int64Array, n: int) -> Int64Array:
        return pool.draw(from_, n, rng) if recipe.house_balanced else rng.choice(from_, n)

    for epoch in range(epochs):
        n_pos = int(n_epoch * POS_FRACTION) if len(positives) else 0
        idx = (
            np.concatenate([draw(positives, n_pos), draw(centres, n_epoch - n_pos)])
            if n_pos
            else draw(centres, n_epoch)
        )
        rng.shuffle(idx)
        net.train()
        total = 0.0
        for s in range(0, len(idx), BATCH):
            xb, yb = pool.batch(idx[s : s + BATCH], target, rng, donors)
            x = torch.from_numpy(xb.astype(np.float32))
            y = torch.from_numpy(yb.astype(np.float32)) / SCALE_W
            on = (y * SCALE_W > cfg.gate_w).to(torch.float32)
            logit, p = net.raw(x)
            loss = bce(logit, on)
            if on.sum() > 0:
                loss = loss + (((p - y) ** 2) * on).sum() / on.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        sched.step()
        if log:
            print(f"  {target} epoch {epoch + 1}/{epochs} loss {total / len(idx):.4f}", file=sys.stderr)
    net.eval()
    outputs = ["power_w", "p_on"] if recipe.p_on else ["power_w"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, cfg.window),),
            str(out_path),
            input_names=["mains_w"],
            output_names=outputs,
            dynamic_axes={"mains_w": {0: "n"}, **{o: {0: "n"} for o in outputs}},
            opset_version=17,
            dynamo=False,
        )
    m = onnx.load(str(out_path))
    meta = {"appliance": target, "window": str(cfg.window), "unit": "W", "kyojo": "models.nilm"}
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    m.doc_string = f"Kyojo NILM seq2point ({target}); see models/nilm/MODEL_CARD.md"
    onnx.save(m, str(out_path))
    blob = out_path.read_bytes()
    n_params = sum(int(p.numel()) for p in net.parameters())
    return {
        "file": out_path.name,
        "window": cfg.window,
        "gate_w": cfg.gate_w,
        "max_w": cfg.max_w,
        "params": n_params,
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "recipe": recipe.name,
        "trained_on": sorted(Path(s.name).name for s in series),
        "epochs": epochs,
        "synthetic": recipe.synthetic,
    }


def recipe_data(houses: dict[str, list[Series]], recipe: Recipe) -> tuple[list[Series], list[int]]:
    """The series ``recipe`` trains on out of ``houses`` (in house order) and each one's house index; a recipe with
    named files needs every one of them (a left-out house cannot be left out of a fixed recipe)."""
    keys = list(houses)
    pairs = [
        (s, i)
        for i, k in enumerate(keys)
        for s in houses[k]
        if recipe.files is None or Path(s.name).name in recipe.files
    ]
    if recipe.files is not None:
        missing = sorted(set(recipe.files) - {Path(s.name).name for s, _ in pairs})
        if missing:
            raise ValueError(f"recipe {recipe.name!r} trains on {missing}, which are not in the data given")
    return [s for s, _ in pairs], [i for _, i in pairs]


def train_all(
    houses: dict[str, list[Series]],
    out_dir: Path,
    *,
    recipes: Mapping[str, Recipe] = RECIPES,
    epochs: int | None = None,
    appliances: Sequence[str] = APPLIANCES,
) -> dict[str, Any]:
    """Train each appliance with its recipe on (its part of) ``houses`` into ``out_dir`` and write the manifest
    (incl. the baseline parameters, fitted on all of ``houses``); returns the manifest."""
    import torch

    torch.set_num_threads(1)  # one core: the box is shared, and 2 threads under contention ran 4x slower
    data = {a: recipe_data(houses, recipes[a]) for a in appliances}  # every recipe's data first: fail before writing
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for a in appliances:
        series, ids = data[a]
        entries[a] = train_one(series, ids, a, out_dir / f"{a}.onnx", recipe=recipes[a], epochs=epochs)
        entries[a]["confidence_release"] = a in CONFIDENCE_RELEASE
    manifest = {
        "format": 2,
        "input": "mains_w (float32, n x window, W)",
        "output": (
            "power_w (float32, n, W, centre minute); p_on (float32, n, on-probability; files of recipe 'issue 19')"
        ),
        "appliances": entries,
        "baselines": fit_baselines([s for parts in houses.values() for s in parts], appliances),
        "trained_on": sorted({f for e in entries.values() for f in e["trained_on"]}),
        "houses": list(houses),
        "seed": SEED,
        "torch": torch.__version__,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(
    houses: dict[str, list[Series]], models_dir: Path = MODEL_DIR, appliances: Sequence[str] = APPLIANCES
) -> dict[str, Any]:
    """Retrain ``appliances`` with :data:`RECIPES` into a temporary directory and compare each file byte for byte
    with the one in ``models_dir`` (training is deterministic, so nothing looser is needed); also compares the
    manifest entry (everything but the wall-clock ``train_seconds``) and the baselines."""
    committed = json.loads((models_dir / MANIFEST).read_text())
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        new = train_all(houses, Path(tmp), appliances=appliances)
        for a in appliances:
            blob = (Path(tmp) / f"{a}.onnx").read_bytes()
            old_e = {k: v for k, v in committed["appliances"][a].items() if k != "train_seconds"}
            new_e = {k: v for k, v in new["appliances"][a].items() if k != "train_seconds"}
            out[a] = {
                "recipe": RECIPES[a].name,
                "identical": blob == (models_dir / f"{a}.onnx").read_bytes(),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "committed_sha256": committed["appliances"][a]["sha256"],
                "manifest_entry_equal": old_e == new_e,
                "train_seconds": new["appliances"][a]["train_seconds"],
            }
        if set(appliances) == set(APPLIANCES):
            out["baselines_equal"] = new["baselines"] == committed["baselines"]
    return out


def _files_of(series: Sequence[Series]) -> list[Path]:
    return [Path(s.name) for s in series]


def score_house(models_dir: Path, parts: Sequence[Series]) -> dict[str, Any]:
    """Model (with its gated figures) and baselines on one house (its files joined), appliances it has."""
    models = NilmModels(models_dir)
    test = concat(parts, models.max_window)
    present = [a for a in models.appliances if a in test.appliances]
    both = models.predict_series_with_confidence(test.mains, present)
    res = evaluate(
        test,
        {a: v[0] for a, v in both.items()},
        read_manifest_baselines(models_dir),
        confidence={a: v[1] for a, v in both.items()},
    )
    res["skipped"] = [a for a in APPLIANCES if a not in present]
    res["scored_minutes"] = int(test.scored().sum())
    res["on_minutes"] = on_minutes(parts)
    return res


def read_manifest_baselines(models_dir: Path) -> dict[str, Any]:
    """The baseline parameters stored in a model directory's manifest."""
    data: dict[str, Any] = json.loads((models_dir / MANIFEST).read_text())["baselines"]
    return data


def summary(per_house: dict[str, Any]) -> dict[str, Any]:
    """Per appliance over the held-out houses where it ran (at least one minute above its on-threshold):
    the median of MAE / always-off MAE (model, mean and CO baselines), how many houses reach the target (MAE at most
    70 % of always-off), the mean on-state F1; for the gated output the mean shown fraction, the median of
    MAE-shown / always-off-shown and how many houses' gated output meets the target (or shows nothing)."""
    out: dict[str, Any] = {}
    for a in APPLIANCES:
        rows = [r for r in per_house.values() if a in r["appliances"] and r.get("on_minutes", {}).get(a, 0) > 0]
        ratios: dict[str, list[float]] = {"model": [], "mean": [], "co": []}
        f1: list[float] = []
        shown: list[float] = []
        gated: list[float] = []
        beats = gated_ok = 0
        for r in rows:
            off = r["baselines"]["always_off"][a]["mae_w"]
            m = r["appliances"][a]
            ratios["model"].append(m["mae_w"] / off)
            ratios["mean"].append(r["baselines"]["mean"][a]["mae_w"] / off)
            ratios["co"].append(r["baselines"]["co"][a]["mae_w"] / off)
            beats += int(m["mae_w"] <= 0.7 * off)
            if m["f1_on"] is not None:
                f1.append(m["f1_on"])
            shown.append(m["shown_fraction"])
            if m["mae_w_shown"] is not None and m["always_off_mae_w_shown"]:
                gated.append(m["mae_w_shown"] / m["always_off_mae_w_shown"])
                gated_ok += int(m["mae_w_shown"] <= 0.7 * m["always_off_mae_w_shown"])
            elif m["mae_w_shown"] is None or m["mae_w_shown"] == 0:
                gated_ok += 1
        out[a] = {
            "houses": len(rows),
            "median_mae_vs_always_off": {k: round(float(np.median(v)), 3) if v else None for k, v in ratios.items()},
            "houses_at_target_mae": beats,
            "f1_on_mean": round(float(np.mean(f1)), 3) if f1 else None,
            "shown_fraction_mean": round(float(np.mean(shown)), 3) if shown else None,
            "gated_median_mae_vs_always_off_shown": round(float(np.median(gated)), 3) if gated else None,
            "houses_gated_at_target": gated_ok,
        }
    return out


def on_minutes(parts: Sequence[Series]) -> dict[str, int]:
    """Scored minutes above each appliance's on-threshold in a house."""
    test = concat(parts, 1)
    mask = test.scored()
    return {a: int(np.sum(v[mask] > ON_THRESHOLD_W[a])) for a, v in test.appliances.items()}


def issue19_all(synthetic: bool = False) -> dict[str, Recipe]:
    """The issue-19 recipe for every appliance (the protocol's folds, ``--all``)."""
    return {a: dataclasses.replace(ISSUE19, synthetic=synthetic) for a in APPLIANCES}


def protocol(
    houses: dict[str, list[Series]], epochs: int = EPOCHS, *, synthetic: bool = False, keep: Path | None = None
) -> dict[str, Any]:
    """Leave-one-house-out: for each fold, train on every other house and score the held-out house(s); with
    ``keep``, each fold's models stay in ``keep/without_<house>`` (or ``keep/fold<i>`` for a group)."""
    per_house: dict[str, Any] = {}
    fold_list = folds(list(houses))
    with tempfile.TemporaryDirectory() as tmp:
        for i, held in enumerate(fold_list):
            print(f"protocol fold {i + 1}/{len(fold_list)}: held out {held}", file=sys.stderr)
            base = keep if keep is not None else Path(tmp)
            d = base / (f"without_{held[0]}" if len(held) == 1 else f"fold{i}")
            train_all(
                {k: v for k, v in houses.items() if k not in held}, d, recipes=issue19_all(synthetic), epochs=epochs
            )
            for h in held:
                per_house[h] = {"fold": i, **score_house(d, houses[h])}
    return {
        "folds": fold_list,
        "synthetic": synthetic,
        "epochs": epochs,
        "per_house": per_house,
        "summary": summary(per_house),
    }


def score_committed(houses: dict[str, list[Series]], models_dir: Path = MODEL_DIR) -> dict[str, Any]:
    """The models in ``models_dir`` scored on every house they were not trained on (by the manifest's
    ``trained_on`` file names): the figure a retrained set must beat to be committed."""
    seen = set(json.loads((models_dir / MANIFEST).read_text())["trained_on"])
    per_house = {
        k: score_house(models_dir, parts)
        for k, parts in houses.items()
        if not any(Path(s.name).name in seen for s in parts)
    }
    return {"per_house": per_house, "summary": summary(per_house)}


def _fmt(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


#: The ``compare`` run of the report that scored the ebe9d1c files (mean and CO fitted on their two training files)
#: on the 19 houses none of their training files came from.
COMMITTED_BEFORE = "committed models before issue 19 (19 unseen houses)"


def shipped_rows(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(house, appliance, per-house result) for the files that ship: each appliance's held-out figures from the run
    of its recipe in :data:`RECIPES` (issue 19: the LOHO folds; ebe9d1c: :data:`COMMITTED_BEFORE`)."""
    runs = {ISSUE19.name: report["loho"]["per_house"], EBE9D1C.name: report["compare"][COMMITTED_BEFORE]["per_house"]}
    return [
        (h, a, r)
        for a in APPLIANCES
        for h, r in runs[RECIPES[a].name].items()
        if a in r["appliances"] and r.get("on_minutes", {}).get(a, 0) > 0
    ]


def render_shipped(report: dict[str, Any]) -> str:
    """Per held-out house where the appliance ran, the shipped file of each appliance against always-off, mean and
    CO (the model card's "Shipped files, per held-out house")."""
    lines = [
        "| appliance | recipe | house | on-min | model MAE W | always-off | mean | CO | model/off | mean/off | CO/off "
        "| F1 model | F1 CO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h, a, r in shipped_rows(report):
        m, b = r["appliances"][a], r["baselines"]
        off, mean, co = b["always_off"][a]["mae_w"], b["mean"][a]["mae_w"], b["co"][a]["mae_w"]
        lines.append(
            f"| {a} | {'issue 19' if RECIPES[a] is ISSUE19 else 'ebe9d1c'} | {h} | {r['on_minutes'][a]} "
            f"| {_fmt(m['mae_w'])} | {_fmt(off)} | {_fmt(mean)} | {_fmt(co)} | {_fmt(m['mae_w'] / off)} "
            f"| {_fmt(mean / off)} | {_fmt(co / off)} | {_fmt(m['f1_on'])} | {_fmt(b['co'][a]['f1_on'])} |"
        )
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    """The model card's tables from a protocol report (``--render``)."""
    lines: list[str] = []
    loho = report["loho"]
    lines += [
        "| house | appliance | on-min | model MAE W | always-off | mean | CO | model/off | F1 model | F1 CO "
        "| shown | MAE shown | off, shown minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h, r in loho["per_house"].items():
        for a, m in r["appliances"].items():
            b = r["baselines"]
            off = b["always_off"][a]["mae_w"]
            ratio = m["mae_w"] / off if off else None
            lines.append(
                f"| {h} | {a} | {r['on_minutes'].get(a, 0)} | {_fmt(m['mae_w'])} | {_fmt(off)} "
                f"| {_fmt(b['mean'][a]['mae_w'])} | {_fmt(b['co'][a]['mae_w'])} | {_fmt(ratio)} "
                f"| {_fmt(m['f1_on'])} | {_fmt(b['co'][a]['f1_on'])} | {_fmt(m['shown_fraction'])} "
                f"| {_fmt(m['mae_w_shown'])} | {_fmt(m['always_off_mae_w_shown'])} |"
            )
    lines += ["", "Summary (houses where the appliance ran):", ""]
    lines += [
        "| appliance | run | houses | median model/off | median mean/off | median CO/off | at target | mean F1 "
        "| mean shown | gated median MAE-shown/off | gated at target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = {"this recipe (LOHO)": loho["summary"]}
    for k, v in report.get("compare", {}).items():
        runs[k] = v["summary"]
    for a in APPLIANCES:
        for name, summ in runs.items():
            x = summ.get(a)
            if not x:
                continue
            med = x["median_mae_vs_always_off"]
            lines.append(
                f"| {a} | {name} | {x['houses']} | {_fmt(med['model'])} | {_fmt(med['mean'])} | {_fmt(med['co'])} "
                f"| {x['houses_at_target_mae']} | {_fmt(x['f1_on_mean'])} | {_fmt(x['shown_fraction_mean'])} "
                f"| {_fmt(x['gated_median_mae_vs_always_off_shown'])} | {x['houses_gated_at_target']} |"
            )
    if COMMITTED_BEFORE in report.get("compare", {}):
        lines += ["", "Shipped files, per held-out house (houses where the appliance ran):", ""]
        lines.append(render_shipped(report))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train the committed models, optionally run the evaluation protocol."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (protocol: 8)")
    ap.add_argument("--synthetic", action="store_true", help="with the synthetic-aggregate augmentation")
    ap.add_argument(
        "--all", action="store_true", help="train all four with the issue-19 recipe into --out (not RECIPES)"
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="retrain with RECIPES into a temporary directory and compare byte for byte with the files in --out",
    )
    ap.add_argument("--appliances", default="", help="with --check: only these (comma-separated)")
    ap.add_argument("--protocol", action="store_true", help="also run the leave-one-house-out evaluation")
    ap.add_argument("--protocol-only", action="store_true", help="run only the evaluation protocol")
    ap.add_argument("--keep-folds", type=Path, default=None, help="keep each fold's models under this directory")
    ap.add_argument("--ablation", action="store_true", help="protocol also with the synthetic augmentation flipped")
    ap.add_argument("--score-committed", action="store_true", help="score the models in --out on unseen houses")
    ap.add_argument("--report", type=Path, default=None, help="write the protocol JSON here")
    ap.add_argument("--render", type=Path, default=None, help="print the model card's tables of a report JSON")
    ap.add_argument("--leave-out", default="", help="comma-separated houses not to train on (e.g. ukdale_h2)")
    args = ap.parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    houses = load_houses(args.data_dir)
    left_out = {h.strip() for h in args.leave_out.split(",") if h.strip()}
    unknown = left_out - set(houses)
    if unknown:
        ap.error(f"unknown house(s) {sorted(unknown)}; have {list(houses)}")
    houses = {k: v for k, v in houses.items() if k not in left_out}
    synthetic = args.synthetic
    if args.score_committed:
        print(json.dumps(score_committed(houses, args.out), indent=1))
        return 0
    t0 = time.perf_counter()
    if args.check:
        apps = [a.strip() for a in args.appliances.split(",") if a.strip()] or list(APPLIANCES)
        if set(apps) - set(APPLIANCES):
            ap.error(f"unknown appliance(s) {sorted(set(apps) - set(APPLIANCES))}; have {list(APPLIANCES)}")
        res = check(houses, args.out, apps)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(res, indent=1))
        ok = all(res[a]["identical"] and res[a]["manifest_entry_equal"] for a in apps)
        ok = ok and res.get("baselines_equal", True)
        print("reproduced: every file byte for byte" if ok else "NOT reproduced (see above)", file=sys.stderr)
        return 0 if ok else 1
    if not args.protocol_only:
        recipes = issue19_all(synthetic) if args.all else RECIPES
        if synthetic and not args.all:
            ap.error("--synthetic changes the issue-19 recipe: use it with --all or --protocol-only")
        try:
            train_all(houses, args.out, recipes=recipes, epochs=args.epochs)
        except ValueError as e:  # a fixed recipe's file was left out
            ap.error(str(e))
        print(f"trained in {time.perf_counter() - t0:.0f} s -> {args.out}", file=sys.stderr)
    if args.protocol or args.protocol_only:
        epochs = EPOCHS if args.epochs is None else args.epochs
        rep: dict[str, Any] = {"loho": protocol(houses, epochs, synthetic=synthetic, keep=args.keep_folds)}
        if args.ablation:
            name = "LOHO with synthetic aggregates" if not synthetic else "LOHO without synthetic aggregates"
            rep["compare"] = {name: protocol(houses, epochs, synthetic=not synthetic)}
        text = json.dumps(rep, indent=1)
        if args.report:
            args.report.write_text(text + "\n")
        print(render_markdown(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

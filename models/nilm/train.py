"""Train the per-appliance NILM CNNs on the shared developer data and export them to ONNX (reproducible, seeded).

    .venv/bin/python -m models.nilm.train                 # the committed models -> models/nilm/*.onnx + manifest
    .venv/bin/python -m models.nilm.train --protocol-only --report models/nilm/protocol_report.json  # evaluation

Needs the ``train`` extra (torch CPU, onnx); the run time needs only numpy + onnxruntime. Trains only on
``/work/shared/data/nilm`` (REFIT House 2 June 2014, UK-DALE House 2 June 2013; CC BY 4.0, attribution in
MODEL_CARD.md). The shipped models are trained on both houses, all 28 days; ``--protocol`` retrains the same recipe
on (a) the first 21 days of both houses, scored on the last 7, and (b) one house, scored on the other.

Recipe (per appliance): a centred window of mains power; input normalised inside the graph (window minimum
subtracted, /1000); 4 conv layers + 2 dense layers; two heads, on-probability (BCE on ``y > gate_w``) and power
(MSE on the on-minutes); exported output = power if p(on) > 0.5 else 0, clipped to ``[0, min(max_w, mains)]``.
Augmentation: each other appliance's true power is subtracted from the input with p = 0.3 (so the model also sees
plug-assisted residuals), and input and target are scaled together by U(0.85, 1.15) (kettles differ in rating).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.nilm.data import APPLIANCES, MAINS_CAP_W, FloatArray, Series, load_csv
from models.nilm.metrics import evaluate, fit_baselines
from models.nilm.model import MANIFEST, MODEL_DIR, NilmModels, residual_mains
from models.nilm.windows import fill_windows

DATA_DIR = Path("/work/shared/data/nilm")
HOUSES: dict[str, str] = {
    "refit_h2": "refit_house2_2014-06_1min.csv.gz",
    "ukdale_h2": "ukdale_house2_2013-06_1min.csv.gz",
}
SEED = 20240609
SCALE_W = 1000.0
TIME_SPLIT_DAYS = 21


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
EPOCHS = 12
SAMPLES_PER_EPOCH = 20_000
POS_FRACTION = 0.2
BATCH = 128
P_SUBTRACT = 0.3


def load_houses(data_dir: Path = DATA_DIR) -> dict[str, Series]:
    """The two shared houses, keyed ``refit_h2`` / ``ukdale_h2``."""
    return {k: load_csv(data_dir / f) for k, f in HOUSES.items()}


class _Pool:
    """Training series concatenated with NaN separators, so windows never cross series."""

    def __init__(self, series: Sequence[Series], half: int) -> None:
        pad = np.full(half, np.nan)
        parts_m: list[FloatArray] = []
        parts_a: dict[str, list[FloatArray]] = {a: [] for a in APPLIANCES}
        for s in series:
            parts_m += [pad, s.mains]
            for a in APPLIANCES:
                parts_a[a] += [pad, s.appliances[a]]
        parts_m.append(pad)
        for a in APPLIANCES:
            parts_a[a].append(pad)
        self.mains = np.concatenate(parts_m)
        self.apps = {a: np.concatenate(v) for a, v in parts_a.items()}
        self.half = half

    def centres(self, target: str) -> np.ndarray[Any, np.dtype[np.int64]]:
        ok = np.isfinite(self.mains) & (self.mains < MAINS_CAP_W) & np.isfinite(self.apps[target])
        return np.flatnonzero(ok).astype(np.int64)

    def batch(
        self, idx: np.ndarray[Any, np.dtype[np.int64]], target: str, rng: np.random.Generator
    ) -> tuple[FloatArray, FloatArray]:
        pos = idx[:, None] + np.arange(-self.half, self.half + 1)[None, :]
        x = self.mains[pos]
        for a in APPLIANCES:
            if a == target:
                continue
            sub = rng.random(len(idx)) < P_SUBTRACT
            x = np.where(sub[:, None], x - np.nan_to_num(self.apps[a][pos], nan=0.0), x)
        x = np.where(np.isfinite(x), np.maximum(x, 0.0), np.nan)
        filled, _ = fill_windows(x)
        y = self.apps[target][idx]
        scale = rng.uniform(0.85, 1.15, size=len(idx))
        return filled * scale[:, None], y * scale


def _net(window: int, max_w: float) -> Any:
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

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logit, p = self.raw(x)
            centre = x[:, window // 2]
            power = torch.relu(p) * SCALE_W * (logit > 0).to(x.dtype)
            power = torch.clamp(power, max=max_w)
            return torch.minimum(power, torch.relu(centre))

    return Seq2Point()


def train_one(
    series: Sequence[Series], target: str, out_path: Path, *, seed: int = SEED, epochs: int = EPOCHS, log: bool = True
) -> dict[str, Any]:
    """Train one appliance's model on ``series`` and export it to ``out_path``; returns its manifest entry."""
    import onnx
    import torch

    cfg = CONFIGS[target]
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng([seed, APPLIANCES.index(target)])
    pool = _Pool(series, cfg.window // 2)
    centres = pool.centres(target)
    positives = centres[pool.apps[target][centres] > cfg.gate_w]
    net = _net(cfg.window, cfg.max_w)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    bce = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        n_pos = int(SAMPLES_PER_EPOCH * POS_FRACTION) if len(positives) else 0
        idx = (
            np.concatenate([rng.choice(positives, n_pos), rng.choice(centres, SAMPLES_PER_EPOCH - n_pos)])
            if n_pos
            else rng.choice(centres, SAMPLES_PER_EPOCH)
        )
        rng.shuffle(idx)
        net.train()
        total = 0.0
        for s in range(0, len(idx), BATCH):
            xb, yb = pool.batch(idx[s : s + BATCH], target, rng)
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, cfg.window),),
            str(out_path),
            input_names=["mains_w"],
            output_names=["power_w"],
            dynamic_axes={"mains_w": {0: "n"}, "power_w": {0: "n"}},
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
    }


def train_all(series: Sequence[Series], out_dir: Path, *, sources: Sequence[str], epochs: int = EPOCHS) -> None:
    """Train every appliance on ``series`` into ``out_dir`` with a manifest (incl. baseline parameters)."""
    import torch

    torch.set_num_threads(1)  # one core: the box is shared, and 2 threads under contention ran 4x slower
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {a: train_one(series, a, out_dir / f"{a}.onnx", epochs=epochs) for a in APPLIANCES}
    manifest = {
        "format": 1,
        "input": "mains_w (float32, n x window, W)",
        "output": "power_w (float32, n, W, centre minute)",
        "appliances": entries,
        "baselines": fit_baselines(series),
        "trained_on": list(sources),
        "seed": SEED,
        "epochs": epochs,
        "torch": torch.__version__,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _score(models_dir: Path, train: Sequence[Series], test: Series) -> dict[str, Any]:
    """Model + baselines on ``test``, and the plug-assisted model (the other three appliances plugged)."""
    models = NilmModels(models_dir)
    res = evaluate(test, models.predict_series(test.mains), read_manifest_baselines(models_dir))
    assisted: dict[str, FloatArray] = {}
    for a in APPLIANCES:
        resid = residual_mains(test.mains, [test.appliances[o] for o in APPLIANCES if o != a])
        assisted[a] = models.predict_series(resid, [a])[a]
    res["plug_assisted_others"] = evaluate(test, assisted, read_manifest_baselines(models_dir))["appliances"]
    km = {"kettle", "microwave"}
    resid_km = residual_mains(test.mains, [test.appliances[o] for o in km])
    big = models.predict_series(resid_km, ["dishwasher", "washing_machine"])
    res["plug_assisted_kettle_microwave"] = evaluate(test, big, read_manifest_baselines(models_dir))["appliances"]
    res["scored_minutes"] = int(test.scored().sum())
    return res


def read_manifest_baselines(models_dir: Path) -> dict[str, Any]:
    """The baseline parameters stored in a model directory's manifest."""
    data: dict[str, Any] = json.loads((models_dir / MANIFEST).read_text())["baselines"]
    return data


def protocol(houses: dict[str, Series], epochs: int = EPOCHS) -> dict[str, Any]:
    """Held-out time (first 21 days -> last 7, both houses) and held-out house (one house -> the other)."""
    report: dict[str, Any] = {}
    cut = TIME_SPLIT_DAYS * 24 * 60
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "time"
        train = [s.slice(0, cut) for s in houses.values()]
        print("protocol: held-out time", file=sys.stderr)
        train_all(train, d, sources=[f"{k}[:21d]" for k in houses], epochs=epochs)
        report["time"] = {k: _score(d, train, s.slice(cut, len(s))) for k, s in houses.items()}
        report["house"] = {}
        for test_key in houses:
            (train_key,) = [k for k in houses if k != test_key]
            print(f"protocol: train {train_key} -> test {test_key}", file=sys.stderr)
            d = Path(tmp) / f"house_{test_key}"
            train_all([houses[train_key]], d, sources=[train_key], epochs=epochs)
            report["house"][f"{train_key}->{test_key}"] = _score(d, [houses[train_key]], houses[test_key])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train the committed models, optionally run the evaluation protocol."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--protocol", action="store_true", help="also run held-out time/house evaluation")
    ap.add_argument("--protocol-only", action="store_true", help="run only the evaluation protocol")
    ap.add_argument("--report", type=Path, default=None, help="write the protocol JSON here")
    args = ap.parse_args(argv)
    houses = load_houses(args.data_dir)
    t0 = time.perf_counter()
    if not args.protocol_only:
        train_all(list(houses.values()), args.out, sources=list(HOUSES.values()), epochs=args.epochs)
        print(f"trained in {time.perf_counter() - t0:.0f} s -> {args.out}", file=sys.stderr)
    if args.protocol or args.protocol_only:
        rep = protocol(houses, args.epochs)
        text = json.dumps(rep, indent=1)
        if args.report:
            args.report.write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

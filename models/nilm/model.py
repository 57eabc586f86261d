"""Load the NILM ONNX files and run them: in batches over a series (evaluation) or one window (run time).

Each ``<appliance>.onnx`` takes ``mains_w`` (float32, shape ``(n, window)``, W, no NaN) and returns ``power_w``
(float32, ``(n,)``): the appliance's mean power in the window's centre minute, already gated (exactly 0 when the
model says "off"), non-negative and at most ``min(max_w, centre mains)``. ``manifest.json`` beside them gives each
file's window, bound and sha256, the training provenance and the baseline parameters fitted on the same data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from kyojo.contract.errors import KyojoError
from models.nilm.data import APPLIANCES, FloatArray
from models.nilm.windows import fill_windows, series_windows

#: Where the committed models live.
MODEL_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
_BATCH = 4096


class NilmModelError(KyojoError, RuntimeError):
    """Missing, corrupt or inconsistent model files."""


@dataclass(frozen=True)
class ApplianceModel:
    """One appliance's ONNX session and its window (minutes, odd; the estimate is for the centre minute)."""

    name: str
    window: int
    max_w: float
    path: Path
    session: ort.InferenceSession
    confidence_release: bool = False  # the card's protocol showed its confidence gate holds on unseen houses

    @property
    def delay_min(self) -> int:
        """Minutes of future context the estimate for a minute needs (the run-time delay)."""
        return self.window // 2

    @cached_property
    def has_confidence(self) -> bool:
        """Whether the file also outputs ``p_on`` (the on-probability; models before issue 19 do not)."""
        return any(o.name == "p_on" for o in self.session.get_outputs())

    def run(self, windows: FloatArray) -> FloatArray:
        """Power (W) for already-filled windows, shape ``(n, window)`` -> ``(n,)``."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        out = self.session.run(["power_w"], {"mains_w": x})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def run_with_confidence(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Power (W) and confidence in [0.5, 1] (``max(p_on, 1 - p_on)``, the probability of the state the power
        reflects) for already-filled windows; a model without ``p_on`` gets confidence 0 (never shown on
        confidence alone: default deny)."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if not self.has_confidence:
            power = self.run(windows)
            return power, np.zeros_like(power)
        power, p_on = self.session.run(["power_w", "p_on"], {"mains_w": x})
        p = np.asarray(p_on, dtype=np.float64).reshape(-1)
        return np.asarray(power, dtype=np.float64).reshape(-1), np.maximum(p, 1.0 - p)


def session_options(threads: int = 1) -> ort.SessionOptions:
    """onnxruntime options for the gateway: ``threads`` intra-op threads, one inter-op thread, no spinning."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def read_manifest(model_dir: Path = MODEL_DIR) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a model directory."""
    path = Path(model_dir) / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise NilmModelError(f"cannot read {path}: {err}") from err
    return data


class NilmModels:
    """The per-appliance ONNX sessions, created once (1 intra-op thread by default)."""

    def __init__(
        self,
        model_dir: str | Path = MODEL_DIR,
        appliances: Iterable[str] | None = None,
        *,
        threads: int = 1,
        verify: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        entries: Mapping[str, Any] = self.manifest["appliances"]
        names = list(appliances) if appliances is not None else [a for a in APPLIANCES if a in entries]
        opts = session_options(threads)
        self.models: dict[str, ApplianceModel] = {}
        for name in names:
            if name not in entries:
                raise NilmModelError(f"no model for {name!r} in {self.model_dir}")
            e = entries[name]
            path = self.model_dir / e["file"]
            blob = path.read_bytes() if path.exists() else b""
            if not blob:
                raise NilmModelError(f"missing model file {path}")
            if verify and hashlib.sha256(blob).hexdigest() != e["sha256"]:
                raise NilmModelError(f"{path}: sha256 does not match {MANIFEST}")
            try:
                sess = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime's own types derive from Exception only
                raise NilmModelError(f"{path}: not a model onnxruntime can load ({err})") from err
            self.models[name] = ApplianceModel(
                name, int(e["window"]), float(e["max_w"]), path, sess, bool(e.get("confidence_release", False))
            )

    @property
    def appliances(self) -> tuple[str, ...]:
        """Names of the loaded appliances, in output order."""
        return tuple(self.models)

    @property
    def max_window(self) -> int:
        """The longest window of the loaded models (minutes)."""
        return max(m.window for m in self.models.values())

    def predict_series(self, mains: FloatArray, appliances: Iterable[str] | None = None) -> dict[str, FloatArray]:
        """Per-minute estimates (W) over a whole regular 1-minute series; NaN where the gap rule gives none."""
        return {k: v[0] for k, v in self.predict_series_with_confidence(mains, appliances).items()}

    def predict_series_with_confidence(
        self, mains: FloatArray, appliances: Iterable[str] | None = None
    ) -> dict[str, tuple[FloatArray, FloatArray]]:
        """Per-minute ``(estimate W, confidence)`` over a regular series; NaN (both) where the gap rule gives none."""
        out: dict[str, tuple[FloatArray, FloatArray]] = {}
        for name in appliances if appliances is not None else self.models:
            m = self.models[name]
            views = series_windows(mains, m.window)
            pred = np.full(views.shape[0], np.nan)
            conf = np.full(views.shape[0], np.nan)
            for s in range(0, views.shape[0], _BATCH):
                filled, ok = fill_windows(views[s : s + _BATCH])
                if ok.any():
                    p, c = m.run_with_confidence(filled[ok])
                    pred[s : s + _BATCH][ok] = p
                    conf[s : s + _BATCH][ok] = c
            out[name] = (pred, conf)
        return out


def residual_mains(mains: FloatArray, plug_loads: Iterable[FloatArray]) -> FloatArray:
    """Mains minus the known plug loads, per minute, floored at 0 (plug-assisted input).

    A minute where a plug has no reading subtracts nothing for that plug (its load stays in the residual); a
    minute where the mains has no reading stays a gap.
    """
    out = np.asarray(mains, dtype=np.float64).copy()
    for p in plug_loads:
        out = out - np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0)
    return np.where(np.isfinite(out), np.maximum(out, 0.0), np.nan)

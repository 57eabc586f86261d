"""The committed RR-interval AF classifier, run with onnxruntime (one thread), and its metadata.

The ONNX file carries its own decision threshold, feature list and version in ``metadata_props`` (written by
``models/af/train.py``), so the runtime never needs scikit-learn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from kyojo.contract.errors import KyojoError
from models.af.alerting import AlertRule
from models.af.features import FEATURE_NAMES

#: The committed model, next to this file.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "af_rr.onnx"


class ModelError(KyojoError, ValueError):
    """The ONNX file is not an AF model this code can run (wrong features, missing metadata)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the file says about itself; ``version`` ends with the first 12 hex digits of its SHA-256."""

    version: str
    threshold: float
    features: tuple[str, ...]
    sha256: str
    alert_rule: AlertRule = field(default_factory=AlertRule)


class AfModel:
    """An ONNX session created once; :meth:`scores` gives P(AF) per feature row."""

    def __init__(self, path: Path | str = DEFAULT_MODEL_PATH) -> None:
        raw = Path(path).read_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(raw, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own types (InvalidProtobuf, Fail, ...) derive from Exception only
            raise ModelError(f"{path}: not a model onnxruntime can load ({err})") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            features = tuple(meta["features"].split(","))
            threshold = float(meta["threshold"])
            base_version = meta["version"]
            rule = AlertRule.from_json(meta["alert_rule"]) if "alert_rule" in meta else AlertRule()
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"{path}: missing or bad metadata ({err})") from err
        if features != FEATURE_NAMES:
            raise ModelError(f"{path}: model features {features} differ from this code's {FEATURE_NAMES}")
        sha = hashlib.sha256(raw).hexdigest()
        self.info = ModelInfo(f"{base_version}+{sha[:12]}", threshold, features, sha, rule)
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self._prob_output = "probabilities" if "probabilities" in outputs else outputs[-1]

    @property
    def threshold(self) -> float:
        """Decision threshold on P(AF), chosen by training-time cross-validation."""
        return self.info.threshold

    @property
    def alert_rule(self) -> AlertRule:
        """The alert rule chosen with the model (``alert_rule`` metadata; the defaults for an older file)."""
        return self.info.alert_rule

    @property
    def version(self) -> str:
        return self.info.version

    def scores(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """P(AF) for each row of a ``(n, len(FEATURE_NAMES))`` feature matrix."""
        x = np.ascontiguousarray(np.asarray(features, dtype=np.float32).reshape(-1, len(FEATURE_NAMES)))
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        (prob,) = self.session.run([self._prob_output], {self._input: x})
        return np.asarray(prob, dtype=np.float64)[:, 1]

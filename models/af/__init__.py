"""RR-interval atrial-fibrillation screening: features, the ONNX classifier, evaluation protocol, runtime.

See MODEL_CARD.md. Runtime needs only numpy and onnxruntime; ``train.py`` needs the ``train`` extra.
"""

from models.af.data import STEP_BEATS, WINDOW_BEATS, Record, load_dir, load_record, make_windows
from models.af.evaluate import Evaluation, evaluate
from models.af.features import FEATURE_NAMES, window_features
from models.af.model import DEFAULT_MODEL_PATH, AfModel
from models.af.runtime import AfMonitor

__all__ = [
    "DEFAULT_MODEL_PATH",
    "FEATURE_NAMES",
    "STEP_BEATS",
    "WINDOW_BEATS",
    "AfModel",
    "AfMonitor",
    "Evaluation",
    "Record",
    "evaluate",
    "load_dir",
    "load_record",
    "make_windows",
    "window_features",
]

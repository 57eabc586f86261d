"""Appliance disaggregation (NILM) from the whole-home meter's 1-minute power.

Per-appliance seq2point-style CNNs (kettle, microwave, dishwasher, washing machine) exported to ONNX, trained on
the REFIT / UK-DALE developer subset in ``/work/shared/data/nilm`` (CC BY 4.0, see ``MODEL_CARD.md``).

- :mod:`models.nilm.data` loads the shared CSV format and defines the scored minutes and on/off thresholds.
- :mod:`models.nilm.windows` turns a 1-minute series into model windows (the gap rule lives there, once).
- :mod:`models.nilm.model` loads the ONNX files and runs them (batch for evaluation, one window at run time).
- :mod:`models.nilm.metrics` computes the metrics and the three baselines (always-off, mean, CO).
- :mod:`models.nilm.runtime` the streaming wrapper over meter (and plug) power samples.
- :mod:`models.nilm.cli` the ``kyojo models eval nilm`` command; :mod:`models.nilm.train` reproduces the files.

Run time needs only numpy and onnxruntime.
"""

from __future__ import annotations

from models.nilm.data import APPLIANCES, ON_THRESHOLD_W

__all__ = ["APPLIANCES", "ON_THRESHOLD_W"]

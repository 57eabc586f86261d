"""NILM training reproduces the committed files (issue 19: ``make train-nilm`` reproduces the committed models).

Every committed ``.onnx`` names its recipe in ``models.nilm.train.RECIPES`` and in the manifest. Training is
deterministic (fixed seeds, one torch thread, deterministic algorithms), so the check is **byte for byte**. The
test retrains one small appliance, the kettle (its recipe trains on two shared months; ~10 s on one free core, up
to ~30 s on the shared 2-core box); ``make check-nilm`` retrains all four (~1 min) the same way.

The retraining test needs the ``train`` extra (torch, onnx; ``make train-nilm`` installs it) and is skipped, with
that reason, where it is missing. It trains on the shared data (``/work/shared/data/nilm``), or where that is
absent on the byte-identical copies of the same two files in tests/data/nilm (see its README).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from models.nilm.data import APPLIANCES, load_csv
from models.nilm.model import MANIFEST, MODEL_DIR
from models.nilm.train import DATA_DIR, EBE9D1C, ISSUE19, RECIPES, train_one
from tests import kit


def _manifest() -> dict[str, object]:
    m: dict[str, object] = json.loads((MODEL_DIR / MANIFEST).read_text())
    return m


def test_every_committed_file_names_its_recipe() -> None:
    entries = _manifest()["appliances"]
    assert isinstance(entries, dict)
    assert set(RECIPES) == set(APPLIANCES) == set(entries)
    for a, recipe in RECIPES.items():
        e = entries[a]
        assert e["recipe"] == recipe.name
        assert e["epochs"] == recipe.epochs
        assert e["synthetic"] == recipe.synthetic
        if recipe.files is not None:
            assert e["trained_on"] == sorted(recipe.files)
        blob = (MODEL_DIR / e["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == e["sha256"]
        # a file of a recipe without p_on has one output, and must not be released on confidence alone
        assert recipe.p_on or not e["confidence_release"]
    assert {RECIPES[a] for a in APPLIANCES} <= {ISSUE19, EBE9D1C}


@pytest.mark.slow
def test_retraining_the_kettle_reproduces_the_committed_file_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the train extra (make train-nilm installs it)")
    pytest.importorskip("onnx", reason="needs the train extra (make train-nilm installs it)")
    recipe = RECIPES["kettle"]
    assert recipe.files is not None
    src = DATA_DIR if all((DATA_DIR / f).is_file() for f in recipe.files) else kit.DATA / "nilm"
    series = [load_csv(src / f) for f in recipe.files]
    out = tmp_path / "kettle.onnx"
    entry = train_one(series, list(range(len(series))), "kettle", out, recipe=recipe, log=False)
    committed = _manifest()["appliances"]
    assert isinstance(committed, dict)
    assert entry["sha256"] == committed["kettle"]["sha256"]
    assert out.read_bytes() == (MODEL_DIR / "kettle.onnx").read_bytes()
    assert entry["trained_on"] == committed["kettle"]["trained_on"]

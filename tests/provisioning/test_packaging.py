"""What a gateway installs is what the repository holds: the wheel carries every file of the packages (templates,
vendored scripts, catalogs, models, simulator data), not only the Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.kit import ROOT

PACKAGES = ("kyojo", "edge_agent", "drivers", "models", "cloud_ingest", "provisioning", "firmware_tests")


@pytest.mark.slow
def test_the_wheel_carries_every_file_of_the_packages(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("kyojo-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    if not tracked:  # not a git checkout (an sdist): list the files instead
        tracked = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*") if p.is_file()]
        tracked = [t for t in tracked if "__pycache__" not in t]
    missing = [f for f in tracked if f not in inside]
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    for must in (
        "edge_agent/web/templates/base.html",
        "edge_agent/web/static/vendor/htmx.min.js",
        "kyojo/style/static/kyojo.css",
        "cloud_ingest/navi/templates/navi.html",
        "kyojo/i18n/locale/ja/LC_MESSAGES/kyojo.po",
        "models/af/af_rr.onnx",
    ):
        assert must in inside

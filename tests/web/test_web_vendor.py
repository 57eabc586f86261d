"""The vendored JavaScript is exactly what PROVENANCE.md says was taken from npm (no hand edits, no drift)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIRS = [ROOT / "edge_agent" / "web" / "static" / "vendor", ROOT / "tests" / "web" / "vendor"]
ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \| (\S+)@(\S+) \|", re.MULTILINE)


def _rows(folder: Path) -> list[tuple[str, str, str, str]]:
    return ROW.findall((folder / "PROVENANCE.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("folder", DIRS, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_vendored_file_matches_its_recorded_sha256(folder: Path) -> None:
    rows = _rows(folder)
    assert rows, f"{folder}/PROVENANCE.md lists no files"
    for name, digest, _pkg, _version in rows:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    listed = {name for name, *_ in rows}
    present = {p.name for p in folder.iterdir() if p.name not in {"PROVENANCE.md", "update.sh"}}
    assert present == listed, "every vendored file is listed, and only those"


def test_each_package_ships_its_licence_and_htmx_is_the_2x_line() -> None:
    rows = [r for folder in DIRS for r in _rows(folder)]
    packages = {(pkg, version) for _, _, pkg, version in rows}
    for pkg, version in packages:
        assert any(name.endswith(".LICENSE") and (p, v) == (pkg, version) for name, _, p, v in rows), pkg
    assert dict(packages)["htmx.org"].startswith("2."), "see PROVENANCE.md: why htmx 2"
    assert {p for p, _ in packages} == {"htmx.org", "htmx-ext-sse", "uplot", "axe-core"}

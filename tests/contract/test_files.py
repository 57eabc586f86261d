"""kyojo.runtime.files.atomic_write: old content or new, whole; the mode asked for; file and directory fsynced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kyojo.runtime.files import atomic_write, atomic_write_text


def test_a_failure_mid_write_leaves_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "paired.json"
    atomic_write(path, b"old, whole")

    def power_cut(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write(path, b"new content that never lands")
    assert path.read_bytes() == b"old, whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paired.json"]


def test_a_failed_write_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_the_file_gets_the_mode_asked_for(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "f"
        path.write_bytes(b"before")
        path.chmod(0o666)  # the old file's mode does not carry over
        atomic_write(path, b"x", mode=mode)
        assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        os.umask(old)


def test_the_umask_masks_the_mode_unless_exact(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the agent's unit: UMask=0077
    try:
        atomic_write(tmp_path / "state", b"x", mode=0o644)
        atomic_write(tmp_path / "ca.pem", b"x", mode=0o644, exact=True)
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_the_file_and_then_its_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    sub = tmp_path / "new" / "dir"  # created on the way
    atomic_write_text(sub / "status.json", "{}")
    assert len(synced) == 2
    (tmp_name, tmp_is_dir), (dir_name, dir_is_dir) = synced
    assert not tmp_is_dir and Path(tmp_name).parent == sub and Path(tmp_name).name.endswith(".tmp")
    assert dir_is_dir and Path(dir_name) == sub
    assert (sub / "status.json").read_text() == "{}"

    synced.clear()
    atomic_write(sub / "status.json", b"{}", fsync=False)
    assert synced == []

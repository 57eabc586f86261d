"""Durable file replacement: after a crash or power cut a file holds its old content or the new, whole."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path``, which makes a rename inside it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o600, fsync: bool = True, exact: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically.

    A temporary file in the same directory is created exclusively (``O_EXCL``) with ``mode`` (so a private file is
    never readable by others, not even for an instant), written, flushed and fsynced, renamed over ``path``
    (rename(2) replaces atomically), and the directory is fsynced so the rename itself survives a power cut.
    On failure the temporary file is removed and ``path`` is untouched. ``fsync=False`` skips both fsyncs
    (still atomic, not durable). The parent directory is created if missing.

    As with open(2), the process umask masks ``mode`` (the agent's unit runs with ``UMask=0077``, so its state
    files stay owner-only); ``exact=True`` sets ``mode`` on the temporary file whatever the umask (public
    certificates and broker files that other users must read: 0644).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if exact:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(
    path: Path | str, text: str, *, mode: int = 0o600, fsync: bool = True, exact: bool = False
) -> None:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    atomic_write(path, text.encode("utf-8"), mode=mode, fsync=fsync, exact=exact)

"""Versioned releases of the gateway agent: install, atomic switch, health gate, rollback, prune.

Layout (``root`` is ``/opt/kyojo`` on a gateway; see docs/RELEASES.md)::

    /opt/kyojo/
      releases/<version>/venv/          the venv with kyojo installed (built in place: venvs are not relocatable)
      releases/<version>/models.lock    every .onnx in the release -> SHA-256 and model version
      releases/<version>/release.json   version, source, install time
      current  -> releases/<version>    switched atomically (symlink to a temp name, then rename(2))
      previous -> releases/<version>    what ``current`` pointed to before the last activation
      .venv    -> current/venv          fixed link, so the unit's ExecStart=/opt/kyojo/.venv/bin/kyojo follows `current`
      activation.json                   the last switch: version, previous, wall-clock time (the health gate's "since")

A release is accepted only if, within a timeout after the switch, systemd reports the unit active (for a
``Type=notify`` unit that means the new process sent READY=1) *and* the agent's ``status.json`` was written by a
process started after the switch and shows a first successful publish (``messages_sent > 0``: an outbox row was
PUBACKed). Otherwise :func:`verify` switches back to ``previous`` and says why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kyojo.contract.errors import KyojoError
from kyojo.runtime.files import atomic_write_text, fsync_dir

__all__ = [
    "GateResult",
    "ModelLockError",
    "ReleaseError",
    "ReleaseInfo",
    "ServiceState",
    "activate",
    "check_models_lock",
    "current_version",
    "install",
    "list_releases",
    "models_lock",
    "previous_version",
    "prune",
    "rollback",
    "systemd_checker",
    "systemd_restarter",
    "verify",
]

RELEASES = "releases"
CURRENT = "current"
PREVIOUS = "previous"
VENV_LINK = ".venv"
VENV = "venv"
LOCK_FILE = "models.lock"
INFO_FILE = "release.json"
INCOMPLETE = ".incomplete"
FAILED = "FAILED"
ACTIVATION = "activation.json"
LOCK_FORMAT = 1
DEFAULT_UNIT = "kyojo-agent.service"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
#: status.json's ``uptime_s`` is rounded to 0.1 s; allow that much when asking "started after the switch?"
_START_SLACK_S = 0.2


class ReleaseError(KyojoError, RuntimeError):
    """A release operation was refused (bad version, missing release, nothing to roll back to, ...)."""


class ModelLockError(ReleaseError):
    """A model file does not match the release's models.lock (tampered, truncated, missing or unlisted)."""


# ---------------------------------------------------------------------------------------------------- helpers


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version) or version in {".", ".."}:
        raise ReleaseError(f"bad version {version!r}: use letters, digits and . _ + - (at most 64, no '/')")
    return version


def _releases(root: Path) -> Path:
    return root / RELEASES


def release_dir(root: Path, version: str) -> Path:
    return _releases(root) / _check_version(version)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file + fsync + rename + directory fsync)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)


def _switch_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: at every instant ``link`` resolves to the old or the new target.

    A symlink made under a temporary name is renamed over the link (rename(2) replaces atomically); removing the
    old link first would leave a window in which systemd (or a rollback after a power cut) finds nothing.
    """
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _link_version(root: Path, name: str) -> str | None:
    try:
        target = os.readlink(root / name)
    except (FileNotFoundError, OSError):
        return None
    return Path(target).name


def current_version(root: Path) -> str | None:
    """The version ``current`` points to (None before the first activation)."""
    return _link_version(root, CURRENT)


def previous_version(root: Path) -> str | None:
    """The version ``previous`` points to (what a rollback switches to)."""
    return _link_version(root, PREVIOUS)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One release operation at a time (an operator and a timer must not switch concurrently)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".release.lock").open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ReleaseError(f"another release operation holds {root / '.release.lock'}") from err
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------- models.lock


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_metadata(raw: bytes) -> dict[str, str]:
    """``metadata_props`` of an ONNX model, as onnxruntime reads them (``get_modelmeta().custom_metadata_map``,
    as :class:`models.af.model.AfModel` does). A file onnxruntime cannot load gives {}.

    onnxruntime is imported here, not at module level, so the release commands that hash no model do not pay for it.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's own types (InvalidProtobuf, Fail, ...) derive from Exception only
        return {}
    return dict(session.get_modelmeta().custom_metadata_map)


def _model_version(path: Path, sha: str) -> str:
    """``<version in the file's metadata, else the file's stem>+<first 12 hex of its SHA-256>`` (as AfModel does)."""
    meta = onnx_metadata(path.read_bytes())
    return f"{meta.get('version') or path.stem}+{sha[:12]}"


def _manifest_sha(path: Path) -> str | None:
    """The SHA-256 a sibling manifest.json (models/nilm) records for ``path``, if any."""
    manifest = path.with_name("manifest.json")
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in (data.get("appliances") or {}).values() if isinstance(data, dict) else ():
        if isinstance(entry, dict) and entry.get("file") == path.name and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
    return None


def _onnx_files(rel: Path) -> list[Path]:
    return sorted(p for p in rel.rglob("*.onnx") if p.is_file() and not p.is_symlink())


def models_lock(rel: Path) -> dict[str, Any]:
    """Hash every .onnx under the release directory ``rel``: ``{"format", "models": {relpath: {sha256, version}}}``.

    A model whose models/nilm/manifest.json records a different SHA-256 is refused here, at install time.
    """
    models: dict[str, dict[str, Any]] = {}
    for path in _onnx_files(rel):
        sha = _sha256(path)
        pinned = _manifest_sha(path)
        if pinned is not None and pinned != sha:
            raise ModelLockError(f"{path}: SHA-256 {sha} differs from its manifest.json ({pinned})")
        models[path.relative_to(rel).as_posix()] = {
            "sha256": sha,
            "version": _model_version(path, sha),
            "bytes": path.stat().st_size,
        }
    return {"format": LOCK_FORMAT, "models": models}


def check_models_lock(rel: Path) -> dict[str, Any]:
    """Check every model under ``rel`` against its models.lock; raise :class:`ModelLockError` naming each problem."""
    lock_path = rel / LOCK_FILE
    try:
        lock: dict[str, Any] = json.loads(lock_path.read_text(encoding="utf-8"))
        pinned: dict[str, Any] = lock["models"]
        if lock.get("format") != LOCK_FORMAT or not isinstance(pinned, dict):
            raise ValueError(f"unsupported format {lock.get('format')!r}")
    except FileNotFoundError as err:
        raise ModelLockError(f"{lock_path} is missing: reinstall the release") from err
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLockError(f"{lock_path} is unreadable ({err})") from err
    problems: list[str] = []
    for name, entry in sorted(pinned.items()):
        path = rel / name
        if not path.is_file():
            problems.append(f"{name}: missing (pinned {entry.get('version')})")
            continue
        sha = _sha256(path)
        if sha != entry.get("sha256"):
            problems.append(f"{name}: SHA-256 {sha} != pinned {entry.get('sha256')} ({entry.get('version')})")
    for path in _onnx_files(rel):
        name = path.relative_to(rel).as_posix()
        if name not in pinned:
            problems.append(f"{name}: not in {LOCK_FILE}")
    if problems:
        raise ModelLockError(f"release {rel.name}: models do not match {LOCK_FILE}:\n  " + "\n  ".join(problems))
    return lock


# ---------------------------------------------------------------------------------------------------- install


Runner = Callable[[Sequence[str]], None]


def _run(cmd: Sequence[str]) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReleaseError(f"{' '.join(cmd)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")


def install(
    source: Path,
    root: Path,
    version: str,
    *,
    python: str = sys.executable,
    find_links: Path | None = None,
    no_index: bool = False,
    runner: Runner = _run,
) -> Path:
    """Create ``releases/<version>/`` from a wheel (a new venv + ``pip install``) or a prebuilt release directory.

    The directory is built in place (venvs hard-code their path in every script) behind an ``.incomplete``
    marker that is removed last, so a half-built release is never listed or activated. A directory source must
    contain ``venv/bin/kyojo`` and must have been built for this path. Writes models.lock and release.json.
    """
    rel = release_dir(root, version)
    source = Path(source)
    with _locked(root):
        if rel.exists():
            if (rel / INCOMPLETE).exists():
                shutil.rmtree(rel)  # a previous attempt died half-way
            else:
                raise ReleaseError(f"release {version} already exists at {rel} (prune it or pick a new version)")
        _releases(root).mkdir(parents=True, exist_ok=True)
        try:
            if source.is_dir():
                shutil.copytree(source, rel, symlinks=True)
                (rel / INCOMPLETE).touch()
                if not os.access(rel / VENV / "bin" / "kyojo", os.X_OK):
                    raise ReleaseError(f"{source} is not a release directory: no executable {VENV}/bin/kyojo")
            elif source.is_file() and source.suffix == ".whl":
                rel.mkdir()
                (rel / INCOMPLETE).touch()
                runner([python, "-m", "venv", str(rel / VENV)])
                pip = [str(rel / VENV / "bin" / "python"), "-m", "pip", "install", "--no-input", "--quiet"]
                if find_links is not None:
                    pip += ["--find-links", str(find_links)]
                if no_index:
                    pip.append("--no-index")
                runner([*pip, str(source.resolve())])
            else:
                raise ReleaseError(f"{source}: expected a .whl file or a release directory")
            lock = models_lock(rel)
            _write_json(rel / LOCK_FILE, lock)
            _write_json(
                rel / INFO_FILE,
                {
                    "version": version,
                    "source": str(source),
                    "installed_at": time.time(),
                    "models": len(lock["models"]),
                },
            )
            (rel / INCOMPLETE).unlink()
            fsync_dir(rel)
        except BaseException:
            shutil.rmtree(rel, ignore_errors=True)
            raise
    return rel


# ---------------------------------------------------------------------------------------------------- switch


def _ensure_venv_link(root: Path) -> None:
    """``/opt/kyojo/.venv -> current/venv``: the unit's ExecStart keeps working and follows ``current``."""
    link = root / VENV_LINK
    target = f"{CURRENT}/{VENV}"
    if link.is_symlink():
        if os.readlink(link) != target:
            _switch_link(link, target)
        return
    if link.exists():
        raise ReleaseError(
            f"{link} is a directory from an install before releases: stop the agent, "
            f"`mv {link} {link}.legacy`, then activate again (see docs/RELEASES.md, Migrating)"
        )
    _switch_link(link, target)


def _usable(root: Path, version: str) -> Path:
    rel = release_dir(root, version)
    if not rel.is_dir():
        raise ReleaseError(f"no release {version} in {_releases(root)} (install it first)")
    if (rel / INCOMPLETE).exists():
        raise ReleaseError(f"release {version} is incomplete (its install did not finish): install it again")
    if not os.access(rel / VENV / "bin" / "kyojo", os.X_OK):
        raise ReleaseError(f"release {version} has no executable {VENV}/bin/kyojo")
    return rel


def _switch(root: Path, version: str, *, remember_previous: bool) -> str | None:
    """Check models.lock, then move ``current`` (and ``previous``); returns the version switched away from."""
    rel = _usable(root, version)
    check_models_lock(rel)
    _ensure_venv_link(root)
    old = current_version(root)
    if remember_previous and old is not None and old != version:
        _switch_link(root / PREVIOUS, f"{RELEASES}/{old}")
    _switch_link(root / CURRENT, f"{RELEASES}/{version}")
    with contextlib.suppress(FileNotFoundError):
        (rel / FAILED).unlink()  # an operator re-activating a failed release means it
    return old


def _record(root: Path, version: str, **extra: Any) -> None:
    """activation.json: what was switched to and when (the health gate's default ``since``)."""
    _write_json(root / ACTIVATION, {"version": version, "at": time.time(), **extra})


def activate(root: Path, version: str) -> str | None:
    """Make ``version`` current (atomically), remembering the old one as ``previous``. Returns the old version.

    Refused with :class:`ModelLockError` if any model differs from the release's models.lock. The caller restarts
    the unit and runs :func:`verify`.
    """
    with _locked(root):
        old = _switch(root, version, remember_previous=True)
        _record(root, version, previous=previous_version(root), switched_from=old)
        return old


def rollback(root: Path, reason: str = "rolled back by the operator") -> str:
    """Switch ``current`` back to ``previous``; mark the abandoned release FAILED with ``reason``. Returns the
    version now current. ``previous`` is dropped, so a second rollback does not flip back to the bad release."""
    with _locked(root):
        target = previous_version(root)
        bad = current_version(root)
        if target is None:
            raise ReleaseError("no previous release to roll back to")
        if target == bad:
            raise ReleaseError(f"previous and current are both {target}: nothing to roll back")
        _switch(root, target, remember_previous=False)
        (root / PREVIOUS).unlink()
        fsync_dir(root)
        _record(root, target, previous=None, rolled_back_from=bad, reason=reason)
        if bad is not None and (_releases(root) / bad).is_dir():
            (_releases(root) / bad / FAILED).write_text(f"{dt.datetime.now(dt.UTC).isoformat()} {reason}\n")
        return target


# ---------------------------------------------------------------------------------------------------- list/prune


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    version: str
    path: Path
    installed_at: float | None
    current: bool
    previous: bool
    incomplete: bool
    failed: str | None
    models: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "installed_at": self.installed_at,
            "current": self.current,
            "previous": self.previous,
            "incomplete": self.incomplete,
            "failed": self.failed,
            "models": self.models,
        }


def list_releases(root: Path) -> list[ReleaseInfo]:
    """Every directory under releases/, oldest install first."""
    cur, prev = current_version(root), previous_version(root)
    out: list[ReleaseInfo] = []
    base = _releases(root)
    if not base.is_dir():
        return out
    for rel in base.iterdir():
        if not rel.is_dir() or rel.name.startswith("."):
            continue
        info: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((rel / INFO_FILE).read_text(encoding="utf-8"))
        failed = None
        with contextlib.suppress(OSError):
            failed = (rel / FAILED).read_text(encoding="utf-8").strip()
        installed = info.get("installed_at")
        out.append(
            ReleaseInfo(
                version=rel.name,
                path=rel,
                installed_at=float(installed) if isinstance(installed, int | float) else None,
                current=rel.name == cur,
                previous=rel.name == prev,
                incomplete=(rel / INCOMPLETE).exists(),
                failed=failed,
                models=int(info.get("models", 0)),
            )
        )
    out.sort(key=lambda r: (r.installed_at if r.installed_at is not None else _mtime(r.path), r.version))
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def prune(root: Path, keep: int = 3) -> list[str]:
    """Delete old releases, keeping the ``keep`` newest installs and, always, ``current`` and ``previous``."""
    if keep < 1:
        raise ReleaseError("keep must be at least 1")
    with _locked(root):
        releases = list_releases(root)
        newest = {r.version for r in releases[-keep:]}
        removed: list[str] = []
        for r in releases:
            if r.current or r.previous or r.version in newest:
                continue
            shutil.rmtree(r.path)
            removed.append(r.version)
        return removed


# ---------------------------------------------------------------------------------------------------- health gate


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What systemd says about the unit. ``since``: wall-clock time it last became active (None if unknown)."""

    active: bool
    since: float | None = None
    failed: bool = False
    detail: str = ""


ServiceChecker = Callable[[], ServiceState]


def systemd_checker(unit: str = DEFAULT_UNIT) -> ServiceChecker:
    """``systemctl show``: ActiveState (``active`` for a Type=notify unit only after READY=1) and when it got there."""

    def check() -> ServiceState:
        done = subprocess.run(
            [
                "systemctl",
                "show",
                unit,
                "--timestamp=unix",
                "--property=ActiveState,SubState,ActiveEnterTimestamp,NRestarts,Result",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return ServiceState(False, detail=f"systemctl show failed: {done.stderr.strip()}")
        props = {k: v for k, _, v in (line.partition("=") for line in done.stdout.splitlines())}
        since = None
        stamp = props.get("ActiveEnterTimestamp", "")
        if stamp.startswith("@"):
            with contextlib.suppress(ValueError):
                since = float(stamp[1:])
        state = props.get("ActiveState", "")
        detail = (
            f"{unit} {state}/{props.get('SubState', '')} result={props.get('Result', '')} "
            f"restarts={props.get('NRestarts', '?')}"
        )
        return ServiceState(state == "active", since, state == "failed", detail)

    return check


def systemd_restarter(unit: str = DEFAULT_UNIT) -> Callable[[], None]:
    """``systemctl restart --no-block``: the gate, not systemctl, waits for READY (and times out)."""

    def restart() -> None:
        _run(["systemctl", "restart", "--no-block", unit])

    return restart


@dataclass(slots=True)
class GateResult:
    """The health gate's verdict. ``rolled_back_to`` is set when a rejected release was replaced."""

    accepted: bool
    version: str | None
    reason: str
    rolled_back_to: str | None = None
    rollback_error: str | None = None
    service: str = ""
    status: dict[str, Any] = field(default_factory=dict)


def _publish_check(status_path: Path, since: float, require_publish: bool) -> tuple[bool, str, dict[str, Any]]:
    try:
        st = json.loads(status_path.read_text(encoding="utf-8"))
        at = float(st["at"])
        uptime = float(st.get("uptime_s", 0.0))
        sent = int(st.get("messages_sent") or 0)
    except FileNotFoundError:
        return False, f"{status_path} not written yet", {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"{status_path} unreadable ({err})", {}
    if at < since:
        return False, f"{status_path} not updated since the switch (last at {at:.0f} < {since:.0f})", st
    started = at - uptime
    if started < since - _START_SLACK_S:
        return False, f"{status_path} was written by the old process (started {since - started:.1f}s before)", st
    if require_publish and sent <= 0:
        return (
            False,
            f"no successful publish yet (messages_sent=0, connected={st.get('connected')}, "
            f"broker_error={st.get('broker_error')!r}, messages_queued={st.get('messages_queued')})",
            st,
        )
    if not require_publish and not st.get("connected"):
        return False, f"not connected to the broker (broker_error={st.get('broker_error')!r})", st
    return True, f"messages_sent={sent} at {at:.0f}", st


def verify(
    root: Path,
    status_path: Path,
    since: float | None = None,
    timeout: float = 300.0,
    *,
    checker: ServiceChecker | None = None,
    restart: Callable[[], None] | None = None,
    require_publish: bool = True,
    poll: float = 2.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> GateResult:
    """The health gate for the release ``current`` points to; on failure roll back (and ``restart``).

    Accepted as soon as both hold: systemd reports the unit active since ``since`` (READY=1 from the new process)
    and ``status_path`` was written by a process started after ``since`` with ``messages_sent > 0``. ``since``
    defaults to the time recorded by the last activation. A unit that enters ``failed`` fails at once.
    """
    checker = checker or systemd_checker()
    version = current_version(root)
    if since is None:
        try:
            since = float(json.loads((root / ACTIVATION).read_text(encoding="utf-8"))["at"])
        except (OSError, ValueError, KeyError) as err:
            raise ReleaseError(f"no activation recorded in {root / ACTIVATION}; pass --since") from err
    deadline = clock() + timeout
    svc_why = pub_why = ""
    state = ServiceState(False)
    status: dict[str, Any] = {}
    while True:
        state = checker()
        svc_ok = state.active and (state.since is None or state.since >= since - _START_SLACK_S)
        if not state.active:
            svc_why = f"systemd: not active ({state.detail or 'no READY=1'})"
        elif not svc_ok:
            svc_why = f"systemd: active since before the switch ({state.detail}); was the unit restarted?"
        pub_ok, pub_why, status = _publish_check(status_path, since, require_publish)
        if svc_ok and pub_ok:
            return GateResult(True, version, f"READY and {pub_why}", service=state.detail, status=status)
        if state.failed or clock() >= deadline:
            break
        sleep(min(poll, max(0.0, deadline - clock())))
    why = "; ".join(w for w, ok in ((svc_why, svc_ok), (pub_why, pub_ok)) if not ok)
    reason = ("unit failed: " if state.failed else f"not healthy within {timeout:.0f}s: ") + why
    result = GateResult(False, version, reason, service=state.detail, status=status)
    try:
        result.rolled_back_to = rollback(root, reason=f"health gate: {reason}")
        if restart is not None:
            restart()
    except ReleaseError as err:
        result.rollback_error = str(err)
    return result

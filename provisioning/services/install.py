"""Finding the service binaries (``mosquitto``, ``influxd``) and installing their Debian packages on request
(:func:`ensure_installed`).
"""

import glob
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable

from provisioning.services.errors import _LOG_TAIL_LINES, ServiceError

log = logging.getLogger(__name__)


#: Debian package name -> (binary name, absolute fallbacks when it is not on PATH, e.g. /usr/sbin for users).
_BINARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mosquitto": ("mosquitto", ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")),
    "influxdb": ("influxd", ("/usr/bin/influxd", "/usr/local/bin/influxd")),
    # the clustered-store path (docs/SCALING.md): tests/ingest/test_victoria.py; not installed by default
    "victoria-metrics": ("victoria-metrics", ("/usr/bin/victoria-metrics",)),
    # the trading ledger's database (cloud_ingest/ledger); Debian keeps the server off PATH, per major version
    "postgresql": ("postgres", ("/usr/lib/postgresql/*/bin/postgres",)),
}


def _find_binary(package: str) -> str | None:
    """Absolute path of the binary that ``package`` provides, or None."""
    name, fallbacks = _BINARIES[package]
    found = shutil.which(name)
    if found:
        return found
    for pattern in fallbacks:
        # newest major version first: /usr/lib/postgresql/16/bin before .../15/bin
        found_all = sorted(glob.glob(pattern), key=lambda p: [int(t) if t.isdigit() else 0 for t in p.split("/")])
        for candidate in reversed(found_all):
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def _require_binary(package: str) -> str:
    path = _find_binary(package)
    if path is None:
        name = _BINARIES[package][0]
        raise ServiceError(
            f"{name!r} not found on PATH (nor in {', '.join(_BINARIES[package][1])}); "
            f"install it with: apt-get install {package}"
        )
    return path


_apt_updated = False
_apt_lock = threading.Lock()


def ensure_installed(packages: Iterable[str] = ("mosquitto", "influxdb"), *, install: bool = False) -> None:
    """Make sure the binaries of the given Debian packages are present.

    Known packages: ``mosquitto`` (binary ``mosquitto``), ``influxdb`` (binary ``influxd``), ``victoria-metrics``
    and ``postgresql`` (binary ``postgres``, found under ``/usr/lib/postgresql/*/bin`` on Debian).
    If some are missing and ``install`` is true, and this process runs as root on a Debian-family system
    (``apt-get`` exists), runs ``apt-get update`` (once per process) and
    ``DEBIAN_FRONTEND=noninteractive apt-get install -y <missing>``. Otherwise raises ServiceError naming
    exactly what to install.
    """
    global _apt_updated
    wanted = list(packages)
    unknown = [p for p in wanted if p not in _BINARIES]
    if unknown:
        raise ValueError(f"unknown package(s) {unknown}; known: {sorted(_BINARIES)}")
    missing = [p for p in wanted if _find_binary(p) is None]
    if not missing:
        return
    hint = f"install it with: apt-get install {' '.join(missing)}"
    if not install:
        raise ServiceError(f"missing binaries for {', '.join(missing)}; {hint}")
    apt = shutil.which("apt-get")
    if apt is None:
        raise ServiceError(f"missing {', '.join(missing)} and apt-get is not available; {hint}")
    if os.geteuid() != 0:
        raise ServiceError(f"missing {', '.join(missing)} and not running as root; {hint} (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _apt_lock:
        commands: list[list[str]] = []
        if not _apt_updated:
            commands.append([apt, "update"])
        commands.append([apt, "install", "-y", *missing])
        for cmd in commands:
            log.info("running %s", " ".join(cmd))
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-_LOG_TAIL_LINES:])
                raise ServiceError(f"{' '.join(cmd)} failed with exit code {done.returncode}:\n{tail}")
            if cmd[1] == "update":
                _apt_updated = True
    still = [p for p in missing if _find_binary(p) is None]
    if still:
        raise ServiceError(f"apt-get install finished but {', '.join(still)} is still missing; {hint}")

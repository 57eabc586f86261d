"""A real PostgreSQL (Debian's ``postgresql``, 15 here) on loopback: :class:`PostgreSQL`, for the trading ledger's
tests and the demo.

``initdb`` makes a cluster under ``workdir/data`` (trust authentication, loopback TCP only, no Unix socket), then
``postgres`` serves it on a free port. Debian does not put the server binaries on PATH: they are found under
``/usr/lib/postgresql/<version>/bin`` (the newest version first).

PostgreSQL refuses to run as root. Run as root (a CI container), the cluster belongs to the ``postgres`` user
(Debian's package creates it; ``nobody`` otherwise) and both programs run as that user through ``setpriv``; the
data directory then lives in a directory of its own under the system's temp dir, since a pytest temp dir (0700,
root's) cannot be entered by another user. ``workdir`` keeps the log either way.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from provisioning.services.errors import ServiceError
from provisioning.services.install import _find_binary
from provisioning.services.process import _port_accepts, _Service, free_port


def _server_bin(name: str) -> str:
    """``initdb``/``pg_ctl`` next to the ``postgres`` binary that :func:`_find_binary` picked."""
    postgres = _find_binary("postgresql")
    if postgres is None:
        raise ServiceError("'postgres' not found (nor under /usr/lib/postgresql/*/bin); apt-get install postgresql")
    real = Path(postgres).resolve().parent / name
    return str(real) if real.exists() else (shutil.which(name) or name)


class PostgreSQL(_Service):
    """``postgres`` with its cluster under ``workdir/data`` (or a private temp dir when run as root), its log in
    ``workdir/postgres.log``. :attr:`dsn` is what psycopg connects with (database ``postgres``, superuser
    ``kyojo``); :meth:`create_database` gives a test a database of its own."""

    name = "postgres"
    package = "postgresql"

    def __init__(self, workdir: Path, port: int | None = None, *, host: str = "127.0.0.1") -> None:
        super().__init__(workdir, host, port if port is not None else free_port(host))
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for candidate in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self._user = pwd.getpwnam(candidate)
                    break
        self._root_data: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The cluster's directory."""
        if self._user is None:
            return self.workdir / "data"
        if self._root_data is None:
            self._root_data = Path(tempfile.mkdtemp(prefix="kyojo-pg-")) / "data"
        return self._root_data

    @property
    def log_path(self) -> Path:
        """stdout/stderr of the server."""
        return self.workdir / "postgres.log"

    def dsn_for(self, dbname: str) -> str:
        """A libpq connection string for ``dbname`` on this server."""
        return f"host={self._host} port={self._port} user=kyojo dbname={dbname}"

    @property
    def dsn(self) -> str:
        """The maintenance database's connection string."""
        return self.dsn_for("postgres")

    def url_for(self, dbname: str) -> str:
        """The same as a URL (``postgresql://...``): what ``kyojo ledger --db`` and Alembic take."""
        return f"postgresql://kyojo@{self._host}:{self._port}/{dbname}"

    def _as_user(self) -> list[str]:
        if self._user is None:
            return []
        return ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups"]

    def _write_config(self) -> None:
        data = self.data_dir
        if (data / "PG_VERSION").exists():
            return
        if self._user is not None:
            data.parent.chmod(0o700)
            os.chown(data.parent, self._user.pw_uid, self._user.pw_gid)
        cmd = [
            *self._as_user(),
            _server_bin("initdb"),
            "-D",
            str(data),
            "-U",
            "kyojo",
            "--auth=trust",  # loopback only, a test's or the demo's own cluster
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        done = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")

    def _command(self, binary: str) -> list[str]:
        return [
            *self._as_user(),
            binary,
            "-D",
            str(self.data_dir),
            "-h",
            self._host,
            "-p",
            str(self._port),
            "-c",
            "unix_socket_directories=",  # TCP on loopback only: a deep workdir would exceed a socket path's 107 bytes
            "-c",
            "fsync=off",  # a test cluster: nothing to keep across a power cut
            "-c",
            "max_connections=50",
        ]

    def _ready(self) -> bool:
        if not _port_accepts(self._host, self._port):
            return False
        isready = _server_bin("pg_isready")
        done = subprocess.run(
            [isready, "-h", self._host, "-p", str(self._port), "-U", "kyojo", "-d", "postgres"],
            capture_output=True,
            check=False,
            timeout=5,
        )
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # names come from the tests ([a-z0-9_]), not from users
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (and close its connections)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _terminate(self, timeout: float) -> None:
        """SIGINT: PostgreSQL's "fast" shutdown (SIGTERM waits for every client to disconnect)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        super()._terminate(timeout)

    def __exit__(self, *exc: object) -> None:
        """Stop the server; a private (root) cluster directory is removed with it (a restart keeps it)."""
        self.stop()
        if self._root_data is not None:
            shutil.rmtree(self._root_data.parent, ignore_errors=True)
            self._root_data = None

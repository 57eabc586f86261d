"""Real Mosquitto and InfluxDB processes on loopback, for tests, ``kyojo demo`` and benchmarks.

Everything here starts the real Debian binaries (``mosquitto`` 2.0.x, ``influxd`` 1.6.x) on free loopback
ports, with their configuration, data and logs under a directory the caller chooses (a pytest tmp dir, or
``.kyojo/`` for the demo). Nothing is mocked.

Typical use::

    with LocalStack(Path(".kyojo")) as stack:
        stack.influxdb.create_database("kyojo")
        ...  # connect MQTT clients to stack.mosquitto.host / stack.mosquitto.port

Child processes are stopped by the context managers; an ``atexit`` hook kills whatever is still running if
the interpreter exits without stopping them (an exception escaping, a forgotten ``stop()``).

Only the standard library is used for HTTP, so the helpers stay fast and dependency-free.
"""

import atexit
import contextlib
import http.client
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "CustomMosquitto",
    "InfluxDB",
    "InfluxDBError",
    "LocalStack",
    "Mosquitto",
    "ServiceError",
    "ensure_installed",
    "free_port",
]

log = logging.getLogger(__name__)

#: Debian package name -> (binary name, absolute fallbacks when it is not on PATH, e.g. /usr/sbin for users).
_BINARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mosquitto": ("mosquitto", ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")),
    "influxdb": ("influxd", ("/usr/bin/influxd", "/usr/local/bin/influxd")),
}

#: Lines of a service log quoted in a ServiceError.
_LOG_TAIL_LINES = 20

#: Mosquitto 2.0.x logs this (level notice) once per "drop episode" of a client: when its queue first
#: overflows. It logs nothing more until the queue has room again, so it counts episodes, not messages.
_MOSQUITTO_DROP_MARKER = "Outgoing messages are being dropped for client"


class ServiceError(RuntimeError):
    """A local service is missing, failed to start, or failed while running."""


class InfluxDBError(ServiceError):
    """InfluxDB answered an HTTP request with an error (bad query, bad line protocol, missing database)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (the kernel picks it; it is not reserved)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int, timeout: float = 0.25) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _find_binary(package: str) -> str | None:
    """Absolute path of the binary that ``package`` provides, or None."""
    name, fallbacks = _BINARIES[package]
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
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

    Known packages: ``mosquitto`` (binary ``mosquitto``) and ``influxdb`` (binary ``influxd``).
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


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


# Children still running, killed at interpreter exit (best effort).
_children: dict[int, "subprocess.Popen[bytes]"] = {}
_children_lock = threading.Lock()


def _register(proc: "subprocess.Popen[bytes]") -> None:
    with _children_lock:
        _children[proc.pid] = proc


def _unregister(proc: "subprocess.Popen[bytes]") -> None:
    with _children_lock:
        _children.pop(proc.pid, None)


@atexit.register
def _kill_children_at_exit() -> None:
    with _children_lock:
        procs = list(_children.values())
        _children.clear()
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()  # lets mosquitto save its persistence file
    deadline = time.monotonic() + 3.0
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)


# --------------------------------------------------------------------------------------------------
# Process base class
# --------------------------------------------------------------------------------------------------


class _Service(ABC):
    """A child process with a log file, a readiness probe and stop/kill/restart."""

    name = "service"
    package = ""

    def __init__(self, workdir: Path, host: str, port: int) -> None:
        self.workdir = Path(workdir).resolve()
        self._host = host
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to be provided by subclasses -----------------------------------------------------------------------
    @property
    @abstractmethod
    def log_path(self) -> Path:
        """The file the service logs to (its stdout and stderr go there too)."""

    @abstractmethod
    def _command(self, binary: str) -> list[str]:
        """The command line that starts the service."""

    @abstractmethod
    def _write_config(self) -> None:
        """Write the service's configuration file."""

    @abstractmethod
    def _ready(self) -> bool:
        """True once the service answers."""

    def _ports(self) -> list[int]:
        return [self._port]

    # -- public ----------------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The loopback address the service listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The (main) TCP port; fixed at construction so restarts keep it."""
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the service and wait until it serves; raise ServiceError (with the log tail) otherwise."""
        if self.running:
            log.debug("%s already running (pid %s)", self.name, self.pid)
            return
        self._reap()
        binary = _require_binary(self.package)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        # If another process already holds one of our ports, its answers must not pass for ours: then we only
        # wait for our child to fail (it will, with "address already in use" in its log).
        busy = [p for p in self._ports() if _port_accepts(self._host, p)]
        cmd = self._command(binary)
        started = time.monotonic()
        with self.log_path.open("ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # a terminal's Ctrl-C goes to us; we stop the child in order
            )
        self._proc = proc
        _register(proc)
        deadline = started + timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._reap()
                raise ServiceError(
                    f"{self.name} exited with code {code} during startup "
                    f"(command: {' '.join(cmd)}); last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if not busy and self._ready():
                break
            if time.monotonic() > deadline:
                self._terminate(2.0)
                self._reap()
                why = f"port(s) {busy} already in use by another process" if busy else "not ready"
                raise ServiceError(
                    f"{self.name} {why} after {timeout:.1f}s (command: {' '.join(cmd)}); "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        log.info("%s started: pid %d on %s:%d in %.2fs", self.name, proc.pid, self._host, self._port, elapsed)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after ``timeout`` seconds). No-op if not running."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._terminate(timeout)
            log.info("%s stopped", self.name)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process (a power cut: nothing is flushed) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.info("%s killed", self.name)
        self._reap()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same port(s) with the same data directory."""
        self.stop(timeout)
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self._host}:{self._port} {state} workdir={self.workdir}>"

    # -- internals -------------------------------------------------------------------------------------------
    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.1fs of SIGTERM; sending SIGKILL", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            _unregister(proc)
            self._proc = None


# --------------------------------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------------------------------


class Mosquitto(_Service):
    """A real Mosquitto broker on a loopback port, configured in ``workdir``.

    Files: ``mosquitto.conf``, ``mosquitto.log`` (broker log, plus its stdout/stderr) and ``data/`` (the
    persistence database, so a stop/start or restart keeps persistent sessions and their queued QoS 1/2
    messages; after ``kill()`` what was saved by the last autosave survives).

    ``max_queued_messages`` and ``max_inflight_messages`` default to 0 = unlimited: Mosquitto's own defaults
    (1000 and 20) silently drop QoS 1 messages to a subscriber that falls behind while the publisher got its
    PUBACK (see DESIGN.md). Pass explicit limits to study that behaviour; ``dropped_messages()`` reads
    the log.
    """

    name = "mosquitto"
    package = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        max_queued_messages: int = 0,
        max_inflight_messages: int = 0,
        persistence: bool = True,
        extra_conf: str = "",
        autosave_interval: int = 1,
    ) -> None:
        """Prepare (do not start) a broker; ``port=None`` picks a free port now, kept across restarts.

        ``autosave_interval`` (seconds, persistence only) bounds what a ``kill()`` loses; 0 saves only on
        a clean stop. ``extra_conf`` is appended verbatim to the generated configuration.
        """
        super().__init__(workdir, host, port if port is not None else free_port(host))
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.extra_conf = extra_conf

    @property
    def conf_path(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker log (``log_dest file``), which also receives the process' stdout/stderr."""
        return self.workdir / "mosquitto.log"

    @property
    def data_dir(self) -> Path:
        """The persistence directory (``persistence_location``)."""
        return self.workdir / "data"

    def render_config(self) -> str:
        """The configuration text written to ``conf_path`` at start."""
        lines = [
            "# Generated by provisioning.local.Mosquitto; rewritten at every start.",
            f"listener {self._port} {self._host}",
            "allow_anonymous true",
            # As root, mosquitto would switch to the 'mosquitto' user and lose access to our files.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "set_tcp_nodelay true",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [
                f"persistence_location {self.data_dir}/",
                "persistence_file mosquitto.db",
                f"autosave_interval {self.autosave_interval}",
            ]
        lines += [
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        text = "\n".join(lines) + "\n"
        if self.extra_conf:
            text += self.extra_conf.rstrip("\n") + "\n"
        return text

    def _write_config(self) -> None:
        if self.persistence:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render_config(), encoding="utf-8")

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        return _port_accepts(self._host, self._port)

    def dropped_messages(self) -> int:
        """Number of drop *episodes* Mosquitto logged since ``log_path`` was created.

        Mosquitto 2.0.11 logs ``Outgoing messages are being dropped for client <id>.`` (notice level) when a
        client's queue first overflows (``max_queued_messages``/``max_queued_bytes``), and stays silent until
        that queue has room again; it never logs per dropped message. So 0 means no drop happened, and a
        positive value counts episodes, not lost messages. (The exact per-message total is only published
        on ``$SYS/broker/publish/messages/dropped``.)
        """
        try:
            with self.log_path.open("r", encoding="utf-8", errors="replace") as fh:
                return sum(1 for line in fh if _MOSQUITTO_DROP_MARKER in line)
        except FileNotFoundError:
            return 0

    def reload(self) -> None:
        """Send SIGHUP: Mosquitto re-reads the reloadable options (ACL, limits, logging) and its certfile/keyfile.

        See mosquitto.conf(5) for which options are "Reloaded on reload signal". Returns at once; the broker
        logs ``Reloading config.`` when it has done so. Raises ServiceError when it is not running.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ServiceError(f"{self.name} is not running")
        proc.send_signal(signal.SIGHUP)


class CustomMosquitto(Mosquitto):
    """A real Mosquitto whose listeners and security come entirely from the caller's ``config`` text.

    The harness only prepends what keeps the process ours (``user``, persistence under ``workdir``, the log
    file); ``config`` must define the listener on ``host``/``port`` (pick the port with :func:`free_port` first,
    pass it here). The readiness probe is a TCP accept on that port, so TLS listeners work too.
    """

    def __init__(
        self, workdir: Path, port: int, config: str, *, host: str = "127.0.0.1", persistence: bool = True
    ) -> None:
        """Prepare (do not start) a broker that serves ``config`` on ``host:port``."""
        super().__init__(workdir, port, host=host, persistence=persistence, autosave_interval=1)
        self.config = config

    def render_config(self) -> str:
        """Harness header + the caller's configuration."""
        lines = [
            "# Generated by provisioning.local.CustomMosquitto; rewritten at every start.",
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [f"persistence_location {self.data_dir}/", "persistence_file mosquitto.db", "autosave_interval 1"]
        lines += [
            f"log_dest file {self.log_path}",
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information", "subscribe")),
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        return "\n".join(lines) + "\n" + self.config.rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------
# InfluxDB 1.x
# --------------------------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxDB(_Service):
    """A real InfluxDB 1.x (``influxd``) on loopback, with its config, data, WAL and log in ``workdir``.

    Files: ``influxdb.conf``, ``influxd.log`` (stdout/stderr; level warn), ``meta/``, ``data/``, ``wal/``.
    Both the HTTP port and the RPC/backup ``bind-address`` port are free ports chosen at construction
    (the default 8088 would collide between instances) and are kept across restarts.

    HTTP helpers speak the v1 API (``/ping``, ``/query``, ``/write``) with ``http.client`` only, one short
    connection per call.
    """

    name = "influxd"
    package = "influxdb"

    def __init__(
        self,
        workdir: Path,
        http_port: int | None = None,
        *,
        host: str = "127.0.0.1",
        data_settings: dict[str, int | str] | None = None,
    ) -> None:
        """Prepare (do not start) an InfluxDB; ``http_port=None`` picks a free port now.

        ``data_settings``: extra keys of the ``[data]`` section, e.g. ``{"max-series-per-database": 50}``.
        """
        super().__init__(workdir, host, http_port if http_port is not None else free_port(host))
        self.data_settings = dict(data_settings or {})
        rpc = free_port(host)
        while rpc == self._port:
            rpc = free_port(host)
        self.rpc_port = rpc

    @property
    def http_port(self) -> int:
        """The HTTP API port (same as ``port``)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:8086``."""
        return f"http://{self._host}:{self._port}"

    @property
    def conf_path(self) -> Path:
        """The generated ``influxdb.conf``."""
        return self.workdir / "influxdb.conf"

    @property
    def log_path(self) -> Path:
        """influxd's stdout/stderr."""
        return self.workdir / "influxd.log"

    def render_config(self) -> str:
        """The TOML configuration written to ``conf_path`` at start (InfluxDB 1.6 keys)."""
        w = self.workdir
        extra_data = "".join(
            f"  {key} = {value if isinstance(value, int) else _toml_str(value)}\n"
            for key, value in self.data_settings.items()
        )
        return f"""# Generated by provisioning.local.InfluxDB; rewritten at every start.
reporting-disabled = true
bind-address = {_toml_str(f"{self._host}:{self.rpc_port}")}

[meta]
  dir = {_toml_str(str(w / "meta"))}
  logging-enabled = false

[data]
  dir = {_toml_str(str(w / "data"))}
  wal-dir = {_toml_str(str(w / "wal"))}
  query-log-enabled = false
  trace-logging-enabled = false
{extra_data}
[retention]
  enabled = true

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = {_toml_str(f"{self._host}:{self._port}")}
  auth-enabled = false
  log-enabled = false
  write-tracing = false
  pprof-enabled = false
  max-body-size = 25000000

[logging]
  format = "logfmt"
  level = "warn"
  suppress-logo = true

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
"""

    def _write_config(self) -> None:
        for sub in ("meta", "data", "wal"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render_config(), encoding="utf-8")

    def _command(self, binary: str) -> list[str]:
        return [binary, "-config", str(self.conf_path)]

    def _ports(self) -> list[int]:
        return [self._port, self.rpc_port]

    def _ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/ping", timeout=0.5)
        except OSError:
            return False
        return status == 204

    def start(self, timeout: float = 30.0) -> None:
        """Spawn influxd and wait until ``GET /ping`` answers 204."""
        super().start(timeout)

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            with conn.getresponse() as resp:
                return resp.status, resp.read()
        finally:
            conn.close()

    def query(self, q: str, db: str | None = None, epoch: str = "ms") -> list[dict[str, Any]]:
        """Run InfluxQL (POST /query) and return the raw ``results`` list.

        Shape: one dict per statement, ``{"statement_id": 0, "series": [{"name": str, "tags": {...}
        (only with GROUP BY), "columns": [...], "values": [[...], ...]}, ...]}``; ``series`` is absent when
        nothing matched. Times are integers in ``epoch`` units (``ns``, ``u``, ``ms``, ``s``...).
        Raises InfluxDBError on an HTTP error or when any statement reports an ``error``.
        """
        params = {"q": q, "epoch": epoch}
        if db is not None:
            params["db"] = db
        status, raw = self._request(
            "POST",
            "/query",
            body=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        text = raw.decode("utf-8", errors="replace")
        if status != 200:
            raise InfluxDBError(f"query {q!r} failed: HTTP {status}: {text.strip()}", status=status, body=text)
        payload = json.loads(text)
        if "error" in payload:
            raise InfluxDBError(f"query {q!r} failed: {payload['error']}", status=status, body=text)
        results: list[dict[str, Any]] = payload.get("results", [])
        for result in results:
            if "error" in result:
                raise InfluxDBError(f"query {q!r} failed: {result['error']}", status=status, body=text)
        return results

    def query_rows(self, q: str, db: str | None = None, epoch: str = "ms") -> list[dict[str, Any]]:
        """Run ``q`` and flatten every series row into a dict: ``{"_measurement": name, **tags, **columns}``.

        Tags appear as keys only for GROUP BY queries (otherwise InfluxDB returns them as columns anyway);
        a column wins over a tag of the same name. Rows of all statements and series are concatenated.
        """
        rows: list[dict[str, Any]] = []
        for result in self.query(q, db=db, epoch=epoch):
            for series in result.get("series", []):
                base: dict[str, Any] = {"_measurement": series.get("name")}
                base.update(series.get("tags") or {})
                columns = series["columns"]
                for values in series.get("values", []):
                    row = dict(base)
                    row.update(zip(columns, values, strict=True))
                    rows.append(row)
        return rows

    def count(self, measurement_or_regex: str, db: str, field: str = "last") -> int:
        """Number of points of ``measurement_or_regex`` that have ``field`` (summed over measurements).

        ``measurement_or_regex`` is a measurement name (quoted for you) or an InfluxQL regex like
        ``/^agg_/``. Points are identified by measurement + tags + timestamp, so an idempotent rewrite
        counts once. Only points carrying ``field`` are counted (``count()`` skips nulls).
        """
        source = measurement_or_regex
        if not (len(source) >= 2 and source.startswith("/") and source.endswith("/")):
            source = _quote_ident(source)
        query = f"SELECT count({_quote_ident(field)}) FROM {source}"  # noqa: S608 identifiers are quoted
        rows = self.query_rows(query, db=db)
        return sum(int(row.get("count") or 0) for row in rows)

    def create_database(self, name: str) -> None:
        """CREATE DATABASE (idempotent)."""
        self.query(f"CREATE DATABASE {_quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        """DROP DATABASE (no error if it does not exist)."""
        self.query(f"DROP DATABASE {_quote_ident(name)}")

    def write_lines(self, lines: str | bytes, db: str, precision: str = "ms") -> None:
        """POST line protocol to ``/write``; raise InfluxDBError unless InfluxDB answers 204."""
        body = lines.encode("utf-8") if isinstance(lines, str) else lines
        path = "/write?" + urllib.parse.urlencode({"db": db, "precision": precision})
        status, raw = self._request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        if status != 204:
            text = raw.decode("utf-8", errors="replace")
            raise InfluxDBError(f"write to {db!r} failed: HTTP {status}: {text.strip()}", status=status, body=text)


# --------------------------------------------------------------------------------------------------
# Both together
# --------------------------------------------------------------------------------------------------


class LocalStack:
    """Mosquitto + InfluxDB under one base directory (``<base>/mosquitto``, ``<base>/influxdb``).

    Used by ``kyojo demo`` (base ``.kyojo/``) and the benchmarks. ``mosquitto_options`` are passed to
    Mosquitto (e.g. ``{"max_queued_messages": 1000}``). Ports are free ports unless given.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        mqtt_port: int | None = None,
        influx_port: int | None = None,
        host: str = "127.0.0.1",
        mosquitto_options: dict[str, Any] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.mosquitto = Mosquitto(self.base_dir / "mosquitto", mqtt_port, host=host, **(mosquitto_options or {}))
        self.influxdb = InfluxDB(self.base_dir / "influxdb", influx_port, host=host)

    @property
    def running(self) -> bool:
        """True while both services run."""
        return self.mosquitto.running and self.influxdb.running

    def start(self, timeout: float = 30.0) -> None:
        """Start both (Mosquitto first); if either fails, stop what was started and re-raise."""
        started: list[_Service] = []
        try:
            for svc in (self.mosquitto, self.influxdb):
                svc.start(timeout)
                started.append(svc)
        except BaseException:
            for done in started:
                with contextlib.suppress(Exception):
                    done.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both (InfluxDB last, so in-flight ingestion can finish writing)."""
        errors: list[BaseException] = []
        for svc in (self.mosquitto, self.influxdb):
            try:
                svc.stop(timeout)
            except Exception as exc:  # stop the other one regardless
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

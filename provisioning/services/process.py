"""The process harness every local service shares: :class:`_Service` (a child process with a log file, a
readiness probe and stop/kill/restart), free loopback ports, log tails, and the ``atexit`` hook that kills
children still running when the interpreter exits.
"""

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

from provisioning.services.errors import _LOG_TAIL_LINES, ServiceError
from provisioning.services.install import _require_binary

log = logging.getLogger(__name__)


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

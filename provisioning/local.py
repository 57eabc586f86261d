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

The parts live in :mod:`provisioning.services`: ``process`` (the harness base, free ports, the ``atexit``
hook), ``install`` (binaries and :func:`ensure_installed`), ``mosquitto``, ``influxdb`` and ``errors``. This
module keeps :class:`LocalStack` and re-exports their public names.
"""

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from provisioning.services.errors import InfluxDBError, ServiceError
from provisioning.services.influxdb import InfluxDB
from provisioning.services.install import _BINARIES as _BINARIES  # patched by tests/provisioning/test_local_services
from provisioning.services.install import ensure_installed
from provisioning.services.mosquitto import CustomMosquitto, Mosquitto
from provisioning.services.postgres import PostgreSQL
from provisioning.services.process import _Service, free_port
from provisioning.services.victoria import VictoriaMetrics

__all__ = [
    "CustomMosquitto",
    "InfluxDB",
    "InfluxDBError",
    "LocalStack",
    "Mosquitto",
    "PostgreSQL",
    "ServiceError",
    "VictoriaMetrics",
    "ensure_installed",
    "free_port",
]


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

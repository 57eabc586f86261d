"""Shared fixtures: real services started by the test suite itself (temp dirs, free loopback ports).

Nothing here skips: if mosquitto or influxd is missing, the fixtures fail with ServiceError, whose message
says what to install. Add new fixtures in the section they belong to.

The layout (one directory per part, see README "Tests"): tests/{contract,drivers,agent,models,ingest,provisioning,
e2e}/; the shared helpers are in tests/kit.py (re-exported here), the kits of a real agent and of a city in
tests/agentkit.py and tests/citykit.py (its ``city`` fixture is registered below), device captures in tests/data/.

Every test that starts a Mosquitto carries ``@pytest.mark.broker``, every test that starts an InfluxDB
``@pytest.mark.influx`` and one that starts a VictoriaMetrics ``@pytest.mark.victoria`` (so ``pytest -m "not broker
and not influx and not victoria"`` runs without any). The section "Service markers" below makes that hold by
itself: a test that asks for a service fixture, or starts a service in this process, without its marker fails,
saying which marker to add.
"""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioning.local import InfluxDB, Mosquitto, PostgreSQL, VictoriaMetrics
from provisioning.services.install import _find_binary
from provisioning.services.process import _Service
from tests.kit import DATA, ROOT, free_port, wait_for, wait_for_async

# pytest reads ``pytest_plugins`` only in the root conftest: every test can ask for ``city``, no module registers it.
pytest_plugins = ["tests.citykit"]

__all__ = ["DATA", "ROOT", "free_port", "wait_for", "wait_for_async"]

# ------------------------------------------------------------------------------------------------------------
# MQTT broker
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One Mosquitto for the whole session (unlimited queues). Use unique client ids and topics."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of its own, for tests that stop, kill or restart it."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


# ------------------------------------------------------------------------------------------------------------
# InfluxDB
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """One InfluxDB 1.x for the whole session; tests get their own database through ``influx_db``."""
    with InfluxDB(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest.fixture
def influx_db(influxdb: InfluxDB) -> Iterator[str]:
    """Name of a fresh, empty database in the shared InfluxDB, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    influxdb.create_database(name)
    yield name
    influxdb.drop_database(name)


# ------------------------------------------------------------------------------------------------------------
# PostgreSQL (the trading ledger)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgreSQL]:
    """One PostgreSQL for the whole session; tests get their own database through ``ledger_db``."""
    with PostgreSQL(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def ledger_db(postgres: PostgreSQL) -> Iterator[str]:
    """URL of a fresh, empty database in the shared PostgreSQL, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


# ------------------------------------------------------------------------------------------------------------
# Service markers: a test that starts a broker or a database says so
# ------------------------------------------------------------------------------------------------------------

#: fixtures that start (or hand out) a real service, and the marker a test using them must carry
SERVICE_FIXTURES = {
    "mosquitto": "broker",
    "fresh_mosquitto": "broker",
    "influxdb": "influx",
    "influx_db": "influx",
    "postgres": "postgres",
    "ledger_db": "postgres",
}
_MISSING = pytest.StashKey[list[str]]()
_running: list[pytest.Item] = []  # the test being run (set for its setup, call and teardown)


def _marker_of(service: _Service) -> str:
    if isinstance(service, Mosquitto):
        return "broker"
    if isinstance(service, InfluxDB):
        return "influx"
    if isinstance(service, PostgreSQL):
        return "postgres"
    return "victoria" if isinstance(service, VictoriaMetrics) else ""


def _advice(item: pytest.Item, marker: str, why: str) -> str:
    return (
        f"{item.nodeid} {why} but is not marked @pytest.mark.{marker}: add the marker to the test "
        f"(or to the module's pytestmark) so that `pytest -m 'not {marker}'` can leave it out"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Note every test that uses a service fixture without its marker (it fails at setup, see below)."""
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        fixtures = getattr(item, "fixturenames", ())
        missing = sorted(
            _advice(item, mark, f"uses the `{name}` fixture")
            for name, mark in SERVICE_FIXTURES.items()
            if name in fixtures and mark not in marks
        )
        if missing:
            item.stash[_MISSING] = missing


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if missing := item.stash.get(_MISSING, []):
        pytest.fail("\n".join(missing), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _checked_start(start: Callable[..., None]) -> Callable[..., None]:
    def start_if_marked(self: _Service, *args: Any, **kwargs: Any) -> None:
        marker = _marker_of(self)
        # a service whose binary is missing does not start (start() says what to install): no marker needed
        if _running and marker and _find_binary(self.package) is not None:
            item = _running[-1]
            if item.get_closest_marker(marker) is None:
                pytest.fail(_advice(item, marker, f"starts {self.name}"), pytrace=False)
        start(self, *args, **kwargs)

    start_if_marked.__wrapped__ = start  # type: ignore[attr-defined]
    return start_if_marked


def pytest_configure(config: pytest.Config) -> None:
    """Services started in this process by any test (directly, through a kit or a fixture) are checked too.
    Services a test starts in a child process (``kyojo demo`` in tests/e2e/test_demo.py) cannot be seen here."""
    _Service.start = _checked_start(_Service.start)  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    _Service.start = getattr(_Service.start, "__wrapped__", _Service.start)  # type: ignore[method-assign]

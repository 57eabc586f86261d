"""Shared fixtures: real services started by the test suite itself (temp dirs, free loopback ports).

Nothing here skips: if mosquitto or influxd is missing, the fixtures fail with ServiceError, whose message
says what to install. Add new fixtures in the section they belong to.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.local import InfluxDB, Mosquitto

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

"""On-site acceptance suite. ``pytest firmware_tests`` runs against simulators; ``--hardware`` enables the tests
marked ``hardware`` (real serial ports, a BLE adapter, the city broker), which are otherwise skipped with a reason.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", action="store_true", default=False, help="run tests that need real hardware")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hardware: needs the real gateway hardware (run with --hardware)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs real hardware: run on the gateway with --hardware")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)

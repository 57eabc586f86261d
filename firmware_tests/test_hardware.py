"""Checks that only mean something on the gateway itself (``pytest firmware_tests --hardware``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firmware_tests import doctor

STATE = Path(os.environ.get("KYOJO_STATE_DIR", "/var/lib/kyojo"))


@pytest.mark.hardware
def test_bluetooth_adapter_present() -> None:
    check = doctor.bluetooth_adapter()
    assert check.ok, check.detail


@pytest.mark.hardware
def test_gateway_certificate_valid() -> None:
    check = doctor.certificate_valid(STATE / "tls" / "identity.crt")
    assert check.ok, check.detail


@pytest.mark.hardware
def test_clock_synchronised() -> None:
    check = doctor.clock_synchronised()
    assert check.ok, check.detail

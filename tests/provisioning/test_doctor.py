"""firmware_tests.doctor: each check on both sides of its verdict, and the mTLS check against a real broker."""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path

import pytest

from firmware_tests import doctor
from tests.citykit import make_city


def test_broker_reachable() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert doctor.broker_reachable("127.0.0.1", port).ok
    assert doctor.broker_reachable("127.0.0.1", port, timeout=0.5).ok is False


def test_clock(tmp_path: Path) -> None:
    flag = tmp_path / "timesync" / "synchronized"
    assert doctor.clock_synchronised(flag).ok is None  # no timesyncd: unknown, said so
    flag.parent.mkdir()
    assert doctor.clock_synchronised(flag).ok is False
    flag.touch()
    assert doctor.clock_synchronised(flag).ok is True
    assert doctor.clock_synchronised(flag, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).ok is False


def test_disk_space(tmp_path: Path) -> None:
    assert doctor.disk_space(tmp_path, min_free_bytes=1).ok
    assert doctor.disk_space(tmp_path, min_free_bytes=1 << 62).ok is False
    assert doctor.disk_space(tmp_path / "missing").ok is False


def test_serial_and_bluetooth(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        tty = Path(os.ttyname(slave))
        assert doctor.serial_device([tty]).ok
        assert doctor.serial_device([tmp_path / "ttyUSB9"]).ok is False
        (tmp_path / "plain").touch()
        assert doctor.serial_device([tmp_path / "plain"]).ok is False
        assert doctor.serial_device([]).ok is None
    finally:
        os.close(master)
        os.close(slave)
    (tmp_path / "bt" / "hci0").mkdir(parents=True)
    assert doctor.bluetooth_adapter(tmp_path / "bt").detail == "hci0"
    assert doctor.bluetooth_adapter(tmp_path / "none").ok is False


@pytest.mark.broker
def test_certificate_and_broker_tls(tmp_path: Path) -> None:
    city = make_city(tmp_path / "city")
    tls = city.tls["gw-a"]
    assert doctor.certificate_valid(tls / "identity.crt").ok
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert doctor.certificate_valid(tls / "identity.crt", later).ok is False
    assert doctor.certificate_valid(tmp_path / "none.crt").ok is False
    with city.broker(tmp_path / "mosquitto") as b:
        check = doctor.broker_tls(b.host, b.port, tls / "ca.crt", tls / "identity.crt", tls / "identity.key")
        assert check.ok, check.detail
        city.ca.revoke("gw-a")
        b.restart()
        check = doctor.broker_tls(b.host, b.port, tls / "ca.crt", tls / "identity.crt", tls / "identity.key")
        assert check.ok is False
    report = doctor.render([check, doctor.Check("x", None, "unknown")])
    assert report.splitlines()[0].startswith("FAIL broker with certificate")

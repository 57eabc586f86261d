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


# -- issue 22 item 12: renewal and CRL timers, and the doctor's checks of them ---------------------------------


def test_renewal_request_is_idempotent_and_the_doctor_shows_it_waiting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from provisioning import pki
    from provisioning.cli import app

    run = CliRunner().invoke
    ca_dir, pi = tmp_path / "ca", tmp_path / "pi"
    assert run(app, ["ca", "init", "--dir", str(ca_dir), "--gateway-days", "60"]).exit_code == 0
    code = run(app, ["enroll", "gw-r", "--ca-dir", str(ca_dir)]).output.strip()
    assert run(app, ["gateway", "gw-r", "--code", code, "--state-dir", str(pi)]).exit_code == 0
    cert = tmp_path / "gw-r.crt"
    csr = pi / "tls" / pki.CSR_NAME
    assert run(app, ["sign", str(csr), "--ca-dir", str(ca_dir), "--expect", "gw-r", "--out", str(cert)]).exit_code == 0
    assert run(app, ["install", str(cert), "--ca", str(ca_dir / "ca.crt"), "--state-dir", str(pi)]).exit_code == 0
    assert doctor.renewal_pending(pi).ok is True

    res = run(app, ["gateway", "--renew", "--force", "--state-dir", str(pi)])  # the id comes from the certificate
    assert res.exit_code == 0 and "CSR written" in res.output, res.output
    next_key = (pi / "tls" / pki.NEXT_KEY_NAME).read_bytes()
    check = doctor.renewal_pending(pi)
    assert check.ok is False and str(csr) in check.detail
    res = run(app, ["gateway", "--renew", "--state-dir", str(pi)])  # the timer's next day: keep what the CA has
    assert "renewal request waiting" in res.output, res.output
    assert (pi / "tls" / pki.NEXT_KEY_NAME).read_bytes() == next_key

    assert run(app, ["sign", str(csr), "--ca-dir", str(ca_dir), "--expect", "gw-r", "--out", str(cert)]).exit_code == 0
    assert run(app, ["install", str(cert), "--state-dir", str(pi)]).exit_code == 0
    assert doctor.renewal_pending(pi).ok is True


def test_timer_enabled_reads_what_systemctl_enable_makes(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    check = doctor.timer_enabled("kyojo-renew.timer", etc=etc, unit_dirs=(etc, lib))
    assert check.ok is False and "not installed" in check.detail
    lib.mkdir()
    (lib / "kyojo-renew.timer").write_text("[Timer]\n")
    check = doctor.timer_enabled("kyojo-renew.timer", etc=etc, unit_dirs=(etc, lib))
    assert check.ok is False and "systemctl enable --now kyojo-renew.timer" in check.detail
    (etc / "timers.target.wants").mkdir(parents=True)
    (etc / "timers.target.wants" / "kyojo-renew.timer").symlink_to(lib / "kyojo-renew.timer")
    assert doctor.timer_enabled("kyojo-renew.timer", etc=etc, unit_dirs=(etc, lib)).ok is True


def test_crl_freshness_and_its_installed_copy(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from provisioning.cli import app

    ca_dir, broker = tmp_path / "ca", tmp_path / "mosquitto" / "crl.pem"
    broker.parent.mkdir()
    assert CliRunner().invoke(app, ["ca", "init", "--dir", str(ca_dir)]).exit_code == 0
    res = CliRunner().invoke(app, ["crl", "--ca-dir", str(ca_dir), "--install", str(broker)])
    assert res.exit_code == 0 and "systemctl reload mosquitto" in res.output, res.output
    assert broker.read_bytes() == (ca_dir / "crl.pem").read_bytes()
    assert broker.stat().st_mode & 0o777 == 0o644  # Mosquitto (user mosquitto) must read it
    now = dt.datetime.now(dt.UTC)
    assert doctor.crl_fresh(broker, now).ok is True
    soon = doctor.crl_fresh(broker, now + dt.timedelta(days=6))
    assert soon.ok is False and "soon" in soon.detail
    gone = doctor.crl_fresh(broker, now + dt.timedelta(days=8))
    assert gone.ok is False and "EXPIRED" in gone.detail
    (tmp_path / "junk.pem").write_text("not a crl")
    assert doctor.crl_fresh(tmp_path / "junk.pem").ok is False

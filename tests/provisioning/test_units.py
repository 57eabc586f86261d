"""systemd units: the hardening we rely on, `systemd-analyze verify`, and exposure <= 2.5 (`security --offline`).

`systemd-analyze` comes with Debian's `systemd` package. When it is missing the analyzer tests are SKIPPED with
that reason (shown by `pytest -ra`); when it is present, a failing unit fails the test with the tool's output.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit import ROOT

UNITS_DIR = ROOT / "systemd"
UNITS = {
    "kyojo-agent.service": "kyojo-agent.service",
    "kyojo-ingest@.service": "kyojo-ingest@1.service",
    "kyojo-eraser.service": "kyojo-eraser.service",
    "kyojo-web.service": "kyojo-web.service",
}
#: oneshot services run by timers (no watchdog: they exit), with their timers
ONESHOTS = {"kyojo-renew.service": "kyojo-renew.timer", "kyojo-crl.service": "kyojo-crl.timer"}
MAX_EXPOSURE = 2.5
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd); units not machine-checked"
)


def parse_unit(path: Path) -> dict[str, list[str]]:
    """``"Section.Key" -> [values]`` (systemd keys may repeat; configparser cannot represent that)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_declares_the_supervision_and_sandbox(unit: str) -> None:
    u = parse_unit(UNITS_DIR / unit)
    one = {k: v[-1] for k, v in u.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert int(one["Service.WatchdogSec"]) > 0
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.User"].startswith("kyojo")
    assert "Service.DynamicUser" not in one  # static users: kyojo.sysusers
    assert one["Service.StateDirectory"]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
    }.items():
        assert one[f"Service.{key}"] == value, key
    assert "@system-service" in u["Service.SystemCallFilter"]


def test_agent_reaches_only_serial_devices_and_has_its_groups() -> None:
    u = parse_unit(UNITS_DIR / "kyojo-agent.service")
    assert set(u["Service.SupplementaryGroups"][0].split()) == {"dialout", "bluetooth"}
    assert {d.split()[0] for d in u["Service.DeviceAllow"]} == {
        "char-ttyUSB",
        "char-ttyACM",
        "char-ttyAMA",
        "char-ttyS",
    }
    assert all(d.split()[1] == "rw" for d in u["Service.DeviceAllow"])
    sysusers = (UNITS_DIR / "kyojo.sysusers").read_text().split("\n")
    assert any(re.match(r"^m\s+kyojo\s+dialout$", ln) for ln in sysusers)
    assert any(re.match(r"^m\s+kyojo\s+bluetooth$", ln) for ln in sysusers)


def _installed_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart's /opt/kyojo/.venv/bin/kyojo replaced by this checkout's entry point (verify checks
    that the binary exists); every other line verbatim. Templates are instantiated as @1."""
    kyojo = Path(sys.executable).with_name("kyojo")
    assert kyojo.exists(), f"{kyojo} missing: install the project (pip install -e .)"
    text = (UNITS_DIR / unit).read_text().replace("/opt/kyojo/.venv/bin/kyojo", str(kyojo))
    target = tmp_path / UNITS[unit]
    target.write_text(text)
    return target


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    assert ANALYZE is not None
    path = _installed_copy(unit, tmp_path)
    done = subprocess.run([ANALYZE, "verify", str(path)], capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, f"systemd-analyze verify {unit} failed:\n{output}"
    assert output == "", f"systemd-analyze verify {unit} warned:\n{output}"


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_analyze_security_exposure(unit: str, tmp_path: Path) -> None:
    assert ANALYZE is not None
    path = _installed_copy(unit, tmp_path)
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert found, f"systemd-analyze security {unit} printed no exposure level:\n{output[-2000:]}"
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, f"{unit}: exposure {exposure} > {MAX_EXPOSURE}:\n{output[-4000:]}"


@pytest.mark.parametrize(("service", "timer"), sorted(ONESHOTS.items()))
def test_timer_units_run_their_hardened_oneshot_daily(service: str, timer: str) -> None:
    """Issue 22 item 12: an expired CRL locks every client out; a certificate past its end locks one gateway out."""
    u = {k: v[-1] for k, v in parse_unit(UNITS_DIR / service).items()}
    assert u["Service.Type"] == "oneshot"
    assert u["Service.User"].startswith("kyojo")
    for key, value in {"ProtectSystem": "strict", "PrivateNetwork": "true", "NoNewPrivileges": "true"}.items():
        assert u[f"Service.{key}"] == value, key
    t = {k: v[-1] for k, v in parse_unit(UNITS_DIR / timer).items()}
    assert t["Timer.OnCalendar"] == "daily" and t["Timer.Persistent"] == "true"
    assert t["Install.WantedBy"] == "timers.target"
    sysusers = (UNITS_DIR / "kyojo.sysusers").read_text()
    assert re.search(rf"^u\s+{re.escape(u['Service.User'])}\s", sysusers, re.M)


@needs_analyze
@pytest.mark.parametrize(("service", "timer"), sorted(ONESHOTS.items()))
def test_timer_units_verify_and_expose_little(service: str, timer: str, tmp_path: Path) -> None:
    assert ANALYZE is not None
    kyojo = Path(sys.executable).with_name("kyojo")
    for name in (service, timer):
        (tmp_path / name).write_text((UNITS_DIR / name).read_text().replace("/opt/kyojo/.venv/bin/kyojo", str(kyojo)))
    done = subprocess.run(
        [ANALYZE, "verify", str(tmp_path / service), str(tmp_path / timer)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and (done.stdout + done.stderr).strip() == "", done.stdout + done.stderr
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(tmp_path / service)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found and float(found.group(1)) <= MAX_EXPOSURE, done.stdout[-2000:]


def test_every_unit_in_systemd_is_checked_here() -> None:
    """A unit added to systemd/ without a test here would ship unverified."""
    checked = set(UNITS) | set(ONESHOTS) | set(ONESHOTS.values())
    shipped = {p.name for p in UNITS_DIR.iterdir() if p.suffix in (".service", ".timer", ".path")}
    assert shipped == checked

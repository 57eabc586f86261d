"""Releases under a temp dir standing in for /opt/kyojo: install, atomic switch, models.lock, health gate, prune, CLI.

No pip and no systemd: releases are minimal directories (an executable ``venv/bin/kyojo`` and some .onnx files),
systemd is a fake checker, the agent is a hand-written status.json, and the gate runs on a fake clock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioning import release as rel
from provisioning.cli import app
from tests.kit import ROOT

REPO = ROOT
AF_MODEL = REPO / "models" / "af" / "af_rr.onnx"
NILM = REPO / "models" / "nilm"


def make_source(tmp_path: Path, name: str = "src", *, nilm: bool = False) -> Path:
    """A release directory as a build would leave it: venv/bin/kyojo plus the app's models."""
    src = tmp_path / name
    kyojo = src / "venv" / "bin" / "kyojo"
    kyojo.parent.mkdir(parents=True)
    kyojo.write_text("#!/bin/sh\nexit 0\n")
    kyojo.chmod(0o755)
    models = src / "venv" / "lib" / "python3.11" / "site-packages" / "models"
    (models / "af").mkdir(parents=True)
    shutil.copy(AF_MODEL, models / "af" / "af_rr.onnx")
    if nilm:
        (models / "nilm").mkdir()
        shutil.copy(NILM / "kettle.onnx", models / "nilm" / "kettle.onnx")
        shutil.copy(NILM / "manifest.json", models / "nilm" / "manifest.json")
    return src


def installed(tmp_path: Path, *versions: str) -> Path:
    root = tmp_path / "opt-kyojo"
    src = make_source(tmp_path)
    for v in versions:
        rel.install(src, root, v)
    return root


def model_path(root: Path, version: str) -> Path:
    return root / "releases" / version / "venv/lib/python3.11/site-packages/models/af/af_rr.onnx"


# ------------------------------------------------------------------------------------------------ install


def test_install_pins_every_model_by_sha256_and_version(tmp_path: Path) -> None:
    root = tmp_path / "opt-kyojo"
    path = rel.install(make_source(tmp_path, nilm=True), root, "0.2.0")
    assert path == root / "releases" / "0.2.0"
    assert not (path / rel.INCOMPLETE).exists()
    lock = json.loads((path / "models.lock").read_text())
    assert lock["format"] == 1
    af = lock["models"]["venv/lib/python3.11/site-packages/models/af/af_rr.onnx"]
    kettle = lock["models"]["venv/lib/python3.11/site-packages/models/nilm/kettle.onnx"]
    manifest = json.loads((NILM / "manifest.json").read_text())
    assert kettle["sha256"] == manifest["appliances"]["kettle"]["sha256"]
    assert kettle["version"] == f"kettle+{kettle['sha256'][:12]}"  # no version in its metadata: the SHA pins it
    assert af["version"] == f"af_rr-1.0+{af['sha256'][:12]}"  # the same string AfModel.version reports
    assert json.loads((path / "release.json").read_text())["models"] == 2


def test_install_refuses_a_model_that_differs_from_its_manifest(tmp_path: Path) -> None:
    src = make_source(tmp_path, nilm=True)
    (src / "venv/lib/python3.11/site-packages/models/nilm/kettle.onnx").write_bytes(b"not the trained kettle")
    with pytest.raises(rel.ModelLockError, match=r"kettle\.onnx: SHA-256 .* differs from its manifest"):
        rel.install(src, tmp_path / "root", "0.2.0")
    assert not (tmp_path / "root" / "releases" / "0.2.0").exists()


def test_install_refuses_bad_input_and_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "root"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(rel.ReleaseError, match="no executable venv/bin/kyojo"):
        rel.install(empty, root, "1.0")
    assert not (root / "releases" / "1.0").exists()
    src = make_source(tmp_path)
    for bad in ("../x", "a/b", "", ".", "-rf"):
        with pytest.raises(rel.ReleaseError, match="bad version"):
            rel.install(src, root, bad)
    rel.install(src, root, "1.0")
    with pytest.raises(rel.ReleaseError, match="already exists"):
        rel.install(src, root, "1.0")


def test_install_from_a_wheel_builds_the_venv_in_place(tmp_path: Path) -> None:
    root = tmp_path / "root"
    wheel = tmp_path / "kyojo-0.3.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    calls: list[list[str]] = []

    def runner(cmd: Sequence[str]) -> None:
        calls.append(list(cmd))
        if cmd[1:3] == ["-m", "venv"]:  # what `python -m venv` + pip would leave behind
            made = make_source(tmp_path, "built")
            shutil.copytree(made / "venv", Path(cmd[3]))

    path = rel.install(
        wheel, root, "0.3.0", python="/usr/bin/python3", no_index=True, find_links=tmp_path, runner=runner
    )
    venv = str(path / "venv")
    assert calls[0] == ["/usr/bin/python3", "-m", "venv", venv]
    assert calls[1][0] == f"{venv}/bin/python" and calls[1][-1] == str(wheel)
    assert "--no-index" in calls[1] and str(tmp_path) in calls[1]
    assert len(json.loads((path / "models.lock").read_text())["models"]) == 1

    def failing(cmd: Sequence[str]) -> None:
        raise rel.ReleaseError("pip install failed")

    with pytest.raises(rel.ReleaseError, match="pip install failed"):
        rel.install(wheel, root, "0.4.0", runner=failing)
    assert not (root / "releases" / "0.4.0").exists()


# ------------------------------------------------------------------------------------------------ switch


def test_activate_switches_current_and_remembers_previous(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0", "2.0")
    assert rel.activate(root, "1.0") is None
    assert os.readlink(root / "current") == "releases/1.0"  # relative: the tree can be inspected from a rescue boot
    assert os.readlink(root / ".venv") == "current/venv"  # the unit's ExecStart path follows `current`
    assert (root / ".venv" / "bin" / "kyojo").resolve() == (root / "releases/1.0/venv/bin/kyojo").resolve()
    assert rel.activate(root, "2.0") == "1.0"
    assert (rel.current_version(root), rel.previous_version(root)) == ("2.0", "1.0")
    activation = json.loads((root / "activation.json").read_text())
    assert activation["version"] == "2.0" and activation["switched_from"] == "1.0"
    assert sorted(p.name for p in root.iterdir() if ".tmp-" in p.name) == []
    with pytest.raises(rel.ReleaseError, match=r"no release 9\.9"):
        rel.activate(root, "9.9")


READER = """
import json, os, sys
root, stop = sys.argv[1], sys.argv[2]
seen, missing, reads = set(), [], 0
while not os.path.exists(stop):
    try:
        seen.add(os.readlink(os.path.join(root, "current")))
        os.stat(os.path.join(root, "current", "venv", "bin", "kyojo"))
    except OSError as err:
        missing.append(repr(err))
    reads += 1
print(json.dumps({"seen": sorted(seen), "missing": missing[:5], "reads": reads}))
"""


def test_current_link_is_never_missing_during_switches(tmp_path: Path) -> None:
    """Another process (as systemd would) reads `current` in a tight loop while it is switched back and forth."""
    root = installed(tmp_path, "1.0", "2.0")
    rel.activate(root, "1.0")
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # let the reader start
        for i in range(200):
            rel.activate(root, "2.0" if i % 2 == 0 else "1.0")
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=10)
    result = json.loads(out)
    assert result["missing"] == []
    assert result["seen"] == ["releases/1.0", "releases/2.0"] and result["reads"] > 200


def test_a_tampered_model_refuses_activation(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0", "2.0")
    rel.activate(root, "1.0")
    model = model_path(root, "2.0")
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(rel.ModelLockError, match=r"af_rr\.onnx: SHA-256 \w+ != pinned \w+ \(af_rr-1\.0\+"):
        rel.activate(root, "2.0")
    assert rel.current_version(root) == "1.0"  # nothing switched


@pytest.mark.parametrize("change", ["delete", "extra", "no-lock"])
def test_missing_unlisted_or_unpinned_models_refuse_activation(tmp_path: Path, change: str) -> None:
    root = installed(tmp_path, "1.0")
    model = model_path(root, "1.0")
    if change == "delete":
        model.unlink()
        expect = "missing"
    elif change == "extra":
        shutil.copy(model, model.with_name("sneaky.onnx"))
        expect = "sneaky.onnx: not in models.lock"
    else:
        (root / "releases/1.0/models.lock").unlink()
        expect = "models.lock is missing"
    with pytest.raises(rel.ModelLockError, match=expect):
        rel.activate(root, "1.0")
    assert not (root / "current").exists()


def test_a_legacy_venv_directory_is_not_silently_replaced(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0")
    (root / ".venv" / "bin").mkdir(parents=True)
    with pytest.raises(rel.ReleaseError, match=r"mv .*\.venv .*\.venv\.legacy"):
        rel.activate(root, "1.0")


def test_rollback_goes_back_once_and_marks_the_release_failed(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0", "2.0")
    with pytest.raises(rel.ReleaseError, match="no previous release"):
        rel.rollback(root)
    rel.activate(root, "1.0")
    rel.activate(root, "2.0")
    assert rel.rollback(root, "smoke test failed") == "1.0"
    assert rel.current_version(root) == "1.0" and rel.previous_version(root) is None
    assert "smoke test failed" in (root / "releases/2.0/FAILED").read_text()
    with pytest.raises(rel.ReleaseError, match="no previous release"):
        rel.rollback(root)  # never flips back to the bad one
    rel.activate(root, "2.0")  # an operator's explicit re-activation clears the mark
    assert not (root / "releases/2.0/FAILED").exists()


def test_prune_keeps_the_newest_and_always_current_and_previous(tmp_path: Path) -> None:
    root = installed(tmp_path, "1", "2", "3", "4", "5", "6")
    rel.activate(root, "1")
    rel.activate(root, "2")  # previous = 1, current = 2: both older than the 2 newest
    assert rel.prune(root, keep=2) == ["3", "4"]
    assert [r.version for r in rel.list_releases(root)] == ["1", "2", "5", "6"]
    assert rel.prune(root, keep=2) == []
    with pytest.raises(rel.ReleaseError, match="at least 1"):
        rel.prune(root, keep=0)


# ------------------------------------------------------------------------------------------------ health gate


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(seconds, 0.01)


def write_status(path: Path, *, at: float, uptime_s: float, messages_sent: int, connected: bool = True) -> None:
    path.write_text(
        json.dumps(
            {
                "at": at,
                "uptime_s": uptime_s,
                "messages_sent": messages_sent,
                "connected": connected,
                "broker_error": None if connected else "connection refused",
                "messages_queued": 4,
                "aggregates_sent_total": 1000,
            }
        )
    )


def switched(tmp_path: Path) -> tuple[Path, float]:
    root = installed(tmp_path, "1.0", "2.0")
    rel.activate(root, "1.0")
    rel.activate(root, "2.0")
    return root, json.loads((root / "activation.json").read_text())["at"]


def test_gate_accepts_ready_and_a_first_publish_after_the_switch(tmp_path: Path) -> None:
    root, since = switched(tmp_path)
    status = tmp_path / "status.json"
    clock = FakeClock(since + 1)
    checks: list[float] = []

    def checker() -> rel.ServiceState:
        checks.append(clock.now)
        return rel.ServiceState(active=True, since=since + 0.5, detail="kyojo-agent.service active/running")

    write_status(status, at=since + 3, uptime_s=2.5, messages_sent=0)  # new process, nothing PUBACKed yet

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.sleeps == 3:
            write_status(status, at=clock.now, uptime_s=clock.now - since - 0.5, messages_sent=2)

    result = rel.verify(root, status, timeout=60, checker=checker, clock=clock, sleep=sleep)
    assert result.accepted, result.reason
    assert result.version == "2.0" and "messages_sent=2" in result.reason
    assert rel.current_version(root) == "2.0" and len(checks) == 4


def test_gate_rolls_back_when_nothing_is_ever_published(tmp_path: Path) -> None:
    root, since = switched(tmp_path)
    status = tmp_path / "status.json"
    write_status(status, at=since + 5, uptime_s=4, messages_sent=0, connected=False)
    clock = FakeClock(since + 1)
    restarts: list[str] = []
    result = rel.verify(
        root,
        status,
        timeout=120,
        checker=lambda: rel.ServiceState(True, since + 1, detail="active/running"),
        restart=lambda: restarts.append(rel.current_version(root) or ""),
        clock=clock,
        sleep=clock.sleep,
    )
    assert not result.accepted
    assert "not healthy within 120s" in result.reason and "no successful publish yet" in result.reason
    assert "connection refused" in result.reason
    assert result.rolled_back_to == "1.0" and rel.current_version(root) == "1.0"
    assert restarts == ["1.0"]  # restarted after the switch back
    assert "health gate" in (root / "releases/2.0/FAILED").read_text()
    assert clock.now >= since + 120


def test_gate_does_not_take_the_old_process_status_for_the_new_one(tmp_path: Path) -> None:
    root, since = switched(tmp_path)
    status = tmp_path / "status.json"
    # the old agent wrote this while stopping, after the switch, with its own publishes counted
    write_status(status, at=since + 0.3, uptime_s=86400, messages_sent=500)
    clock = FakeClock(since + 1)
    result = rel.verify(
        root, status, timeout=30, checker=lambda: rel.ServiceState(True, since + 1), clock=clock, sleep=clock.sleep
    )
    assert not result.accepted and "written by the old process" in result.reason
    assert result.rolled_back_to == "1.0"


@pytest.mark.parametrize(
    ("state", "expect"),
    [
        (rel.ServiceState(False, None, detail="activating/start"), "not active (activating/start)"),
        (rel.ServiceState(True, 10.0, detail="active/running"), "active since before the switch"),
    ],
)
def test_gate_rolls_back_without_ready_from_the_new_process(
    tmp_path: Path, state: rel.ServiceState, expect: str
) -> None:
    root, since = switched(tmp_path)
    status = tmp_path / "status.json"
    write_status(status, at=since + 5, uptime_s=3, messages_sent=7)
    clock = FakeClock(since + 1)
    result = rel.verify(root, status, timeout=30, checker=lambda: state, clock=clock, sleep=clock.sleep)
    assert not result.accepted and expect in result.reason
    assert rel.current_version(root) == "1.0"


def test_gate_fails_at_once_when_the_unit_fails(tmp_path: Path) -> None:
    root, since = switched(tmp_path)
    clock = FakeClock(since + 1)
    result = rel.verify(
        root,
        tmp_path / "status.json",
        timeout=300,
        checker=lambda: rel.ServiceState(False, failed=True, detail="failed/failed result=start-limit-hit"),
        clock=clock,
        sleep=clock.sleep,
    )
    assert not result.accepted and result.reason.startswith("unit failed: ")
    assert "start-limit-hit" in result.reason and "not written yet" in result.reason
    assert clock.sleeps == 0 and rel.current_version(root) == "1.0"


def test_gate_without_a_previous_release_reports_that_rollback_failed(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0")
    rel.activate(root, "1.0")
    clock = FakeClock(1e9)
    result = rel.verify(
        root,
        tmp_path / "status.json",
        timeout=5,
        checker=lambda: rel.ServiceState(False),
        clock=clock,
        sleep=clock.sleep,
    )
    assert not result.accepted and result.rolled_back_to is None
    assert result.rollback_error == "no previous release to roll back to"


def test_gate_without_require_publish_needs_a_connected_new_process(tmp_path: Path) -> None:
    root, since = switched(tmp_path)
    status = tmp_path / "status.json"
    write_status(status, at=since + 5, uptime_s=3, messages_sent=0, connected=True)
    clock = FakeClock(since + 1)
    ok = rel.verify(
        root,
        status,
        timeout=30,
        checker=lambda: rel.ServiceState(True, since + 1),
        require_publish=False,
        clock=clock,
        sleep=clock.sleep,
    )
    assert ok.accepted, ok.reason


def test_systemctl_show_output_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Done:
        returncode = 0
        stderr = ""
        stdout = "ActiveState=active\nSubState=running\nActiveEnterTimestamp=@1717000000\nNRestarts=0\nResult=success\n"

    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_kw: object) -> Done:
        seen.append(cmd)
        return Done()

    monkeypatch.setattr(rel.subprocess, "run", fake_run)
    state = rel.systemd_checker("kyojo-agent.service")()
    assert state == rel.ServiceState(
        True, 1717000000.0, False, "kyojo-agent.service active/running result=success restarts=0"
    )
    assert seen[0][:3] == ["systemctl", "show", "kyojo-agent.service"] and "--timestamp=unix" in seen[0]


def test_onnx_metadata_is_read_by_onnxruntime() -> None:
    meta = rel.onnx_metadata(AF_MODEL.read_bytes())
    assert meta["version"] == "af_rr-1.0" and meta["threshold"]
    assert rel.onnx_metadata(b"\xff\xff\xff") == {}


# ------------------------------------------------------------------------------------------------ CLI

cli = CliRunner()


def test_cli_install_activate_list_tamper_rollback(tmp_path: Path) -> None:
    root = tmp_path / "root"
    src = make_source(tmp_path)
    base = ["release"]
    r = cli.invoke(app, [*base, "install", str(src), "--version", "1.0", "--root", str(root)])
    assert r.exit_code == 0, r.output
    assert "1 models pinned in models.lock" in r.output
    cli.invoke(app, [*base, "install", str(src), "--version", "2.0", "--root", str(root)])
    r = cli.invoke(app, [*base, "activate", "1.0", "--root", str(root), "--no-restart"])
    assert r.exit_code == 0 and "current -> releases/1.0 (previous: none)" in r.output
    r = cli.invoke(app, [*base, "list", "--root", str(root)])
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("* 1.0 ")
    model_path(root, "2.0").write_bytes(b"tampered")
    r = cli.invoke(app, [*base, "activate", "2.0", "--root", str(root), "--no-restart"])
    assert r.exit_code == 2 and "models do not match models.lock" in r.output
    r = cli.invoke(app, [*base, "rollback", "--root", str(root), "--no-restart"])
    assert r.exit_code == 2 and "no previous release" in r.output
    rows = [
        json.loads(line) for line in cli.invoke(app, [*base, "list", "--json", "--root", str(root)]).output.splitlines()
    ]
    assert [(x["version"], x["current"]) for x in rows] == [("1.0", True), ("2.0", False)]


def test_cli_activate_rolls_back_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = switched(tmp_path)
    rel.rollback(root)  # back on 1.0, so the CLI does the 1.0 -> 2.0 switch itself
    restarts: list[str | None] = []
    monkeypatch.setattr(rel, "systemd_restarter", lambda unit: lambda: restarts.append(rel.current_version(root)))
    monkeypatch.setattr(rel, "systemd_checker", lambda unit: lambda: rel.ServiceState(False, detail="activating"))
    status = tmp_path / "status.json"
    r = cli.invoke(app, ["release", "activate", "2.0", "--root", str(root), "--status", str(status), "--timeout", "1"])
    assert r.exit_code == 1, r.output
    assert "release 2.0 REJECTED" in r.output and "rolled back to 1.0" in r.output
    assert restarts == ["2.0", "1.0"] and rel.current_version(root) == "1.0"


def test_cli_verify_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, since = switched(tmp_path)
    status = tmp_path / "status.json"
    write_status(status, at=since + 5, uptime_s=4, messages_sent=1)
    monkeypatch.setattr(rel, "systemd_checker", lambda unit: lambda: rel.ServiceState(True, since + 1))
    r = cli.invoke(app, ["release", "verify", "--root", str(root), "--status", str(status), "--timeout", "5"])
    assert r.exit_code == 0, r.output
    assert "release 2.0 accepted: READY and messages_sent=1" in r.output

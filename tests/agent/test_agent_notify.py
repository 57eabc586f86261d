"""The agent process talks to systemd: READY=1 once running, WATCHDOG=1 while its loop makes progress,
STOPPING=1 on SIGTERM; and it refuses to start with a certificate that is not its own."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioning.local import Mosquitto
from provisioning.pki import create_request, init_ca

pytestmark = pytest.mark.broker


def test_agent_notifies_systemd(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[gateway]\nid = "gw-n"\ndata_dir = "data"\n[mqtt]\nport = {mosquitto.port}\n', encoding="utf-8")
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(20)
        env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000", "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            got: list[str] = []
            end = time.monotonic() + 20
            while not (any(m.startswith("READY=1") for m in got) and got.count("WATCHDOG=1") >= 2):
                assert time.monotonic() < end, got
                got.extend(sock.recv(4096).decode().splitlines())
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in got:
                got.extend(sock.recv(4096).decode().splitlines())
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_agent_refuses_a_certificate_for_another_gateway(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    code = ca.enroll("gw-other")
    csr = create_request(tmp_path / "state", "gw-other", code)
    cert = csr.with_suffix(".crt")
    cert.write_bytes(ca.sign_csr(csr.read_bytes(), expected_id="gw-other"))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-mine"\ndata_dir = "data"\n[mqtt]\nport = 1\n'
        f'tls = {{ ca = "{tmp_path / "ca" / "ca.crt"}", cert = "{cert}", key = "{csr.with_suffix(".key")}" }}\n',
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "agent", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "is for 'gw-other', not this gateway 'gw-mine'" in proc.stderr

"""The web process stays small while it waits: serving pages loads neither the Bluetooth stack nor the CLI
framework (bleak and typer come in when a scan, a pairing or a removal runs; issue 16's idle-memory budget)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_pages_do_not_load_bleak_typer_or_the_models(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"  # a real home's config: a strap through BlueZ, plugs, no simulator
    config.write_text(
        f'[gateway]\nid = "home-001"\ndata_dir = "{tmp_path / "data"}"\n'
        '[[devices]]\nkind = "ble"\nid = "home-001-p1-hr"\naddress = "C0:4B:00:00:01:01"\nprofile = "heart_rate"\n'
        'subject = "p1"\n'
        '[[devices]]\nkind = "plugs"\nid = "home-001-plugs"\nhousehold = "home-001"\n',
        encoding="utf-8",
    )
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from starlette.testclient import TestClient\n"
        "from edge_agent.web.app import create_app\n"
        f"app = create_app(Path({str(config)!r}))\n"
        "with TestClient(app) as client:\n"
        "    assert client.get('/signin').status_code == 200\n"
        "heavy = sorted(m for m in ('bleak', 'typer', 'numpy', 'onnxruntime', 'bumble') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout

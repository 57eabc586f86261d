"""``kyojo pair plugs``: name the appliance behind a plug the driver heard; the agent's plugs driver uses it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from drivers.clock import SystemClock
from drivers.plugs import device
from drivers.registry import BuildContext
from kyojo.cli import app

runner = CliRunner()


def setup(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[gateway]\nid = "home-p"\ndata_dir = "data"\n[[devices]]\nkind = "plugs"\nid = "home-p-plugs"\n'
        'household = "home-p"\nappliances = { "tasmota:tv_plug" = "tv" }\n',
        encoding="utf-8",
    )
    (tmp_path / "data").mkdir()
    seen = [
        {"device": "tasmota:kettle_5A3C", "family": "tasmota"},
        {"device": "tasmota:tv_plug", "family": "tasmota"},
        {"device": "z2m:0x00158d0001", "family": "z2m"},
    ]
    (tmp_path / "data" / "plugs-home-p-plugs.json").write_text(json.dumps({"seen": seen}), encoding="utf-8")
    return cfg


def test_list_accept_forget(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    rows = json.loads(runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--json"]).output)
    assert {r["device"]: r["paired_as"] for r in rows} == {
        "tasmota:kettle_5A3C": None,
        "tasmota:tv_plug": "tv",
        "z2m:0x00158d0001": None,
    }
    out = runner.invoke(
        app, ["pair", "plugs", "-c", str(cfg), "--accept", "tasmota:kettle_5A3C", "--appliance", "kettle"]
    )
    assert out.exit_code == 0, out.output
    # one plug per appliance: the tv already has its plug in the config
    out = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--accept", "z2m:0x00158d0001", "--appliance", "tv"])
    assert out.exit_code == 2
    assert "already the plug 'tasmota:tv_plug'" in out.output
    out = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--accept", "bogus", "--appliance", "fan"])
    assert out.exit_code == 2

    conf = device.Config.model_validate(
        {"kind": "plugs", "id": "home-p-plugs", "household": "home-p", "appliances": {"tasmota:tv_plug": "tv"}}
    )
    ctx = BuildContext("home-p", SystemClock(), 1.0, tmp_path / "data")
    (driver,) = device.build(conf, ctx)
    assert driver.session.appliances == {"tasmota:tv_plug": "tv", "tasmota:kettle_5A3C": "kettle"}

    out = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--forget", "tasmota:kettle_5A3C"])
    assert out.exit_code == 0
    rows = json.loads(runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--json"]).output)
    assert {r["device"]: r["paired_as"] for r in rows}["tasmota:kettle_5A3C"] is None

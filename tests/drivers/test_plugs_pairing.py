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


def _plugs(cfg: Path) -> dict[str, dict[str, object]]:
    out = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    return {str(r["device"]): r for r in json.loads(out.stdout)}


def test_japanese_names_unheard_plugs_renames_and_the_config_table(tmp_path: Path) -> None:
    """Issue 22 item 7: ケトル is the kettle; a plug accepted before it was heard is listed (and the household is
    told); a rename shows; a plug the config names is changed in the config, not behind its back."""
    cfg = setup(tmp_path)
    # a Japanese name of a known appliance: the kettle, called as the household calls it
    out = runner.invoke(
        app, ["pair", "plugs", "-c", str(cfg), "--accept", "tasmota:kettle_5A3C", "--appliance", "ケトル"]
    )
    assert out.exit_code == 0, out.output
    row = _plugs(cfg)["tasmota:kettle_5A3C"]
    assert (row["paired_as"], row["device_id"], row["label"]) == ("kettle", "home-p-kettle", "ケトル")
    # any other name of the household's own: an appliance id of its own, the name kept as the display name
    out = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--accept", "z2m:0x00158d0001", "--appliance", "こたつ"])
    assert out.exit_code == 0, out.output
    assert (_plugs(cfg)["z2m:0x00158d0001"]["paired_as"], _plugs(cfg)["z2m:0x00158d0001"]["label"]) == (
        "other-1",
        "こたつ",
    )

    # accepted but never heard: listed as such, and the household is told to check the key
    out = runner.invoke(
        app, ["pair", "plugs", "-c", str(cfg), "--accept", "shelly:typo-plug/0", "--appliance", "fridge"]
    )
    assert out.exit_code == 0 and "not been heard" in out.output
    row = _plugs(cfg)["shelly:typo-plug/0"]
    assert row["paired_as"] == "fridge" and row["heard"] is False and row["source"] == "paired"
    text = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--lang", "ja"]).stdout
    assert "未受信" in text and "ケトル" in text

    # a rename shows at once (and the old name is not left behind)
    out = runner.invoke(
        app, ["pair", "plugs", "-c", str(cfg), "--accept", "tasmota:kettle_5A3C", "--appliance", "kitchen_kettle"]
    )
    assert out.exit_code == 0, out.output
    row = _plugs(cfg)["tasmota:kettle_5A3C"]
    assert (row["paired_as"], row["label"]) == ("kitchen_kettle", None)

    # the config's own plug: refused with where to change it (it used to be accepted and then not shown)
    out = runner.invoke(app, ["pair", "plugs", "-c", str(cfg), "--accept", "tasmota:tv_plug", "--appliance", "radio"])
    assert out.exit_code == 2 and "gateway config" in out.output
    assert _plugs(cfg)["tasmota:tv_plug"]["paired_as"] == "tv"


def test_pair_list_shows_configured_devices_plugs_and_names(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    cfg.write_text(
        cfg.read_text(encoding="utf-8")
        + '[[devices]]\nkind = "ble"\nid = "strap-p1"\naddress = "c0:00:00:00:09:01"\nprofile = "heart_rate"\n'
        'subject = "p1"\n',
        encoding="utf-8",
    )
    out = runner.invoke(app, ["pair", "list", "-c", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert rows["strap-p1"]["source"] == "config" and rows["strap-p1"]["address"] == "C0:00:00:00:09:01"
    assert rows["home-p-tv"]["kind"] == "plug" and rows["home-p-tv"]["last_seen"] is None

    # a name of the household's, in Japanese; shown by the list (and the home page, which reads the same table)
    out = runner.invoke(app, ["pair", "rename", "strap-p1", "父の心拍ベルト", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["pair", "rename", "nobody", "x", "-c", str(cfg)])
    assert out.exit_code == 2 and "strap-p1" in out.output
    listed = runner.invoke(app, ["pair", "list", "-c", str(cfg)], env={"LANG": "ja_JP.UTF-8"}).stdout
    assert "父の心拍ベルト" in listed and "設定ファイルで登録" in listed and "未受信" in listed
    assert (
        json.loads(runner.invoke(app, ["pair", "list", "-c", str(cfg), "--json"]).stdout)[0]["label"]
        == "父の心拍ベルト"
    )

    # pair add refuses the configured strap, and now the list says why
    from drivers.ble import pair

    site = pair._site(cfg)
    assert site.configured == {"C0:00:00:00:09:01": "strap-p1"}

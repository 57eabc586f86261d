"""``decode plug`` and ``decode echonet`` through a local Typer group, as the lead will mount them."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from drivers.meter import cli as meter_cli
from drivers.plugs import cli as plugs_cli
from tests import kit

DATA = kit.DATA / "plugs"


def _app() -> typer.Typer:
    decode_app = typer.Typer()
    plugs_cli.register(decode_app)
    meter_cli.register(decode_app)
    return decode_app


def test_decode_plug_every_fixture_file() -> None:
    runner = CliRunner()
    counts = {}
    for path in sorted(DATA.glob("*.json")):
        res = runner.invoke(_app(), ["plug", str(path), "--ts", "1"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert all("error" not in m for m in out)
        counts[path.name] = sum(len(m["readings"]) for m in out)
    assert counts == {
        "S3SW-002P16EU_1.6.1.json": 8,
        "S4PL-00416EU_1.8.99-dev134818.json": 20,
        "shelly_gen1.json": 2,
        "shelly_gen2plus.json": 4,
        "tasmota.json": 26,
        "zigbee2mqtt.json": 4,
    }


def test_decode_plug_inline_and_raw_payload() -> None:
    runner = CliRunner()
    msg = json.dumps({"topic": "zigbee2mqtt/kettle", "payload": {"power": 12.5, "energy": 0.5}})
    res = runner.invoke(_app(), ["plug", msg, "--ts", "5"])
    assert res.exit_code == 0
    readings = json.loads(res.output)[0]["readings"]
    assert [(r["metric"], r["value"], r["unit"], r["ts"]) for r in readings] == [
        ("power", 12.5, "W", 5.0), ("energy", 500.0, "Wh", 5.0),
    ]  # fmt: skip
    res = runner.invoke(_app(), ["plug", "6000", "--topic", "shellies/plug/relay/0/energy", "--ts", "5"])
    assert json.loads(res.output)[0]["readings"][0]["value"] == 100.0
    res = runner.invoke(_app(), ["plug", "oops", "--topic", "tele/x/LWT"])
    assert res.exit_code == 1 and json.loads(res.output)[0]["error"]["reason"] == "bad_state"


def test_decode_echonet() -> None:
    runner = CliRunner()
    res = runner.invoke(_app(), ["echonet", "1081000102880105FF017201E704000001F8", "--ts", "2", "--device", "m"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["frame"]["esv"] == "GET_RES" and out["frame"]["properties"][0]["value"] == 504
    assert out["readings"] == [
        {"device": "m", "subject": "", "metric": "power", "value": 504.0, "unit": "W", "ts": 2.0, "extra": {}}
    ]
    line = (
        "ERXUDP FE80:0000:0000:0000:021C:6400:030C:12A4 FE80:0000:0000:0000:021D:1290:1234:5678 0E1A 0E1A "
        "001C6400030C12A4 1 000E 1081000102880105FF017201E000"
    )
    res = runner.invoke(_app(), ["echonet", line])
    assert res.exit_code == 0 and json.loads(res.output)["readings"] == []
    res = runner.invoke(_app(), ["echonet", "1081000102880105FF0172", "--unit-kwh", "0.1"])
    assert res.exit_code == 1 and json.loads(res.output)["error"]["reason"] == "truncated"
    res = runner.invoke(_app(), ["echonet", "zz"])
    assert res.exit_code == 1 and json.loads(res.output)["error"]["reason"] == "bad_hex"


def test_lan_broker_config_renders_the_three_files(tmp_path: Path) -> None:
    gw_pw = tmp_path / "gw.pw"
    gw_pw.write_text("gateway-password-0001\n", encoding="utf-8")
    spec = tmp_path / "lan.toml"
    spec.write_text(
        f"""listen = ["192.168.1.10", "127.0.0.1"]
conf_dir = "/etc/mosquitto/kyojo"
gateway = {{ user = "kyojo-gateway", password_file = "{gw_pw}" }}
[[plugs]]
key = "tasmota:kettle_plug"
password = "kettle-password-000003"
""",
        encoding="utf-8",
    )
    res = CliRunner().invoke(plugs_cli.app, ["lan-broker-config", str(spec), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    conf = (tmp_path / "out" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 1883 192.168.1.10" in conf
    assert "password_file /etc/mosquitto/kyojo/passwd" in conf
    acl = (tmp_path / "out" / "acl").read_text()
    assert "user kettle_plug\ntopic write tele/kettle_plug/#" in acl
    passwd = (tmp_path / "out" / "passwd").read_text()
    assert passwd.startswith("kyojo-gateway:$7$101$") and "kettle-password" not in passwd
    spec.write_text('gateway = { user = "g" }\n', encoding="utf-8")  # no password
    res = CliRunner().invoke(plugs_cli.app, ["lan-broker-config", str(spec), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()

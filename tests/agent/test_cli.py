"""The household's and installer's commands, through the real ``kyojo`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge_agent.db import connect
from kyojo.cli import COMMANDS, app, plain
from tests.kit import ROOT, free_port

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-9"\ndata_dir = "data"\n', encoding="utf-8")
    return path


def kyojo(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_catalog_in_english_and_japanese() -> None:
    code, out = kyojo("consent", "catalog", "--lang", "en")
    assert code == 0
    assert "preventive-care: Preventive-care alerts [health" in out
    code, out = kyojo("consent", "catalog", "--lang", "ja")
    assert code == 0
    assert "予防医療アラート" in out


def test_grant_list_withdraw_roundtrip(config: Path) -> None:
    args = ("consent", "grant", "preventive-care", "--person", "p1", "--new-person", "--yes", "-c", str(config))
    code, out = kyojo(*args)
    assert code == 0, out
    cid = out.strip().splitlines()[-1].split(":")[0]
    code, out = kyojo(*args)
    assert out.strip().splitlines()[-1].split(":")[0] == cid  # once-only: asking again reuses the consent
    code, out = kyojo("consent", "list", "--json", "-c", str(config))
    docs = json.loads(out)
    assert [(d["id"], d["status"], d["categories"]) for d in docs] == [(cid, "active", ["health"])]
    code, out = kyojo("consent", "withdraw", cid, "-c", str(config))
    assert code == 0
    assert "withdrawn" in out
    code, out = kyojo("consent", "withdraw", cid, "-c", str(config))
    assert code == 2
    assert "already withdrawn" in out
    conn = connect(config.parent / "data" / "gateway.sqlite3")
    topics = [t for (t,) in conn.execute("SELECT topic FROM outbox ORDER BY seq")]
    conn.close()
    assert topics == [f"kyojo/v1/home-9/consent/{cid}"] * 2  # given, then withdrawn: both for the cloud


def test_bad_input_gives_clear_errors(config: Path, tmp_path: Path) -> None:
    code, out = kyojo("consent", "grant", "advertising", "--person", "p1", "-c", str(config))
    assert code == 2
    assert "unknown purpose 'advertising'" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "has space"\n', encoding="utf-8")
    code, out = kyojo("consent", "list", "-c", str(bad))
    assert code == 2
    assert "[gateway] id:" in out and "errors.pydantic.dev" not in out
    code, out = kyojo("agent", "status", "-c", str(config))
    assert code == 2
    assert "has the agent run" in out


def test_help_lists_the_command_groups() -> None:
    code, out = kyojo("--help")
    assert code == 0
    for group in ("agent", "consent", "ingest", "demo"):
        assert group in out


def test_help_imports_no_part() -> None:
    """``kyojo --help`` lists every command from the root's table without importing the parts (issue 15)."""
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kyojo.cli import app\n"
        "out = CliRunner().invoke(app, ['--help']).output\n"
        "assert 'ingest' in out and 'consent' in out, out\n"
        "parts = ('edge_agent', 'drivers', 'models', 'cloud_ingest', 'provisioning', 'firmware_tests')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(parts)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_root_table_help_is_each_commands_own() -> None:
    """The short help ``kyojo --help`` shows (static) is the help the mounted command defines."""
    group = typer.main.get_group(app)
    ctx = typer.Context(group)
    for name, (mount, short_help) in COMMANDS.items():
        cmd = typer.main.get_group(mount()).get_command(ctx, name)
        assert cmd is not None, name
        assert plain(cmd.help) == short_help, name
    assert group.list_commands(ctx) == list(COMMANDS)


#: What ``kyojo decode`` (an installer's laptop, a Pi without Bluetooth) must never pay for: the radio stack, the
#: models, the MQTT and InfluxDB clients, the cloud and provisioning parts (issue 15).
HEAVY = (
    "bleak", "dbus_fast", "bumble", "onnxruntime", "numpy", "influxdb_client", "paho", "aiomqtt", "cryptography",
    "serial", "cloud_ingest", "provisioning", "models",
)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["ble", "2A37", "0648"], '"heart_rate_bpm": 72'),
        (["plug", '{"ENERGY": {"Power": 12.5}}', "--topic", "tele/tasmota_5A3C7F/SENSOR", "--ts", "2"], '"power"'),
        (["echonet", "1081000102880105FF017201E704000001F8", "--ts", "2", "--device", "m"], '"readings"'),
    ],
)
def test_decode_imports_no_heavy_module(args: list[str], expect: str) -> None:
    """A real ``kyojo decode ...`` in a fresh interpreter, through the entry point's ``main``: it decodes, and
    afterwards none of :data:`HEAVY` is in ``sys.modules`` (before issue 15 the ``pair`` sub-app pulled in bleak)."""
    probe = (
        "import json, sys\n"
        "from kyojo.cli import main\n"
        "sys.argv = ['kyojo', 'decode', *json.loads(sys.argv[1])]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expect in done.stdout, done.stdout
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert "drivers" in loaded  # the probe saw the decode's own imports
    assert sorted(loaded & set(HEAVY)) == []


def test_help_shows_no_restructuredtext_markup() -> None:
    """Issue 22 item 18: docstrings are reST for the docs; ``kyojo ... --help`` shows plain text."""
    for name in COMMANDS:
        code, out = kyojo(name, "--help")
        assert code == 0, (name, out)
        assert "``" not in out and ":func:" not in out and ":class:" not in out, (name, out)
    code, out = kyojo("query", "--help")
    assert "'kyojo query list' shows them" in out


def test_config_errors_name_the_entry_by_its_id_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    """Issue 22 item 14: raw pydantic messages with 0-based indices and a URL became readable lines."""
    bad = tmp_path / "agent.toml"
    bad.write_text(
        '[gateway]\nid = "home-001"\ndata_dir = "data"\n[mqtt]\nport = "abc"\n'
        '[[devices]]\nkind = "ble"\nid = "strap-1"\naddress = "C0:4B:00:00:01:01"\nprofile = "heart_rat"\n'
        'subject = "p1"\n'
        '[[devices]]\nkind = "bmeter"\nid = "home-001-meter"\nhousehold = "home-001"\nserial_port = "/dev/x"\n'
        'rbid = "0123456789ABCDEF0123456789ABCDEF"\npasswrd = "y"\n',
        encoding="utf-8",
    )
    code, out = kyojo("consent", "list", "-c", str(bad))
    assert code == 2
    assert "4 problems in the configuration" in out
    assert "[mqtt] port:" in out and "(given 'abc')" in out
    assert "[[devices]] \"strap-1\" (entry 1) profile: 'heart_rat' is not allowed; allowed: 'heart_rate'" in out
    assert '[[devices]] "home-001-meter" (entry 2) password: missing (required)' in out
    assert '[[devices]] "home-001-meter" (entry 2) passwrd: unknown key (allowed: ' in out
    assert "password" in out.split("passwrd: unknown key")[1]
    assert "https://" not in out and "devices.1" not in out


def test_agent_status_reads_like_a_report(tmp_path: Path) -> None:
    """Issue 22 item 14: one raw JSON line became a few readable lines; --json keeps the document."""
    import json
    import time

    from edge_agent.cli import render_status

    doc = {
        "gateway": "home-9",
        "version": "0.1.0",
        "at": 1_700_000_000.0,
        "uptime_s": 3725,
        "connected": False,
        "broker_error": "connection refused",
        "drivers": 3,
        "readings": 1200,
        "aggregates_sent": 40,
        "events_sent": 2,
        "messages_sent": 12,
        "aggregates_sent_total": 900,
        "outbox_depth": 5,
        "denied": 7,
        "events_withheld": 1,
        "driver_errors": {"home-9-meter": 2},
        "counter_steps_held": {},
    }
    text = render_status(doc, now=1_700_000_030.0)
    assert "running: status written 2023-11-14 22:13:20 UTC (30 s ago), up 1 h 2 min" in text
    assert "NOT CONNECTED (connection refused)" in text
    assert "5 message(s) in the outbox" in text
    assert "problem     driver errors: home-9-meter 2" in text
    assert "counter steps held" not in text  # only problems that happened
    stale = render_status(doc, now=1_700_000_000.0 + 3600)
    assert "NOT RUNNING?" in stale
    data = tmp_path / "data"
    data.mkdir()
    (data / "status.json").write_text(json.dumps({**doc, "at": time.time()}), encoding="utf-8")
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "home-9"\ndata_dir = "data"\n', encoding="utf-8")
    code, out = kyojo("agent", "status", "-c", str(cfg))
    assert code == 0 and out.startswith("gateway     home-9") and "running" in out
    code, out = kyojo("agent", "status", "-c", str(cfg), "--json")
    assert code == 0 and json.loads(out)["gateway"] == "home-9"


def test_gateway_commands_read_kyojo_config_and_the_readme_says_so(config: Path) -> None:
    """Issue 22 item 8: the commands need -c or KYOJO_CONFIG away from /etc/kyojo/agent.toml; the README says so."""
    import os

    env = {**os.environ, "KYOJO_CONFIG": str(config)}
    done = subprocess.run(
        [sys.executable, "-m", "kyojo", "consent", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert (config.parent / "data" / "gateway.sqlite3").exists()  # it used the file KYOJO_CONFIG names
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "KYOJO_CONFIG" in readme and "-c /path/agent.toml" in readme


def test_doctor_says_when_the_plugs_lan_broker_is_missing(tmp_path: Path) -> None:
    """Issue 22 item 13: with no LAN broker the plugs get nothing; the doctor names it and where to read."""
    port = free_port()  # a port nothing listens on
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[gateway]\nid = "home-9"\ndata_dir = "data"\n'
        f'[[devices]]\nkind = "plugs"\nid = "home-9-plugs"\nhousehold = "home-9"\nbroker_port = {port}\n',
        encoding="utf-8",
    )
    code, out = kyojo("doctor", "-c", str(cfg))
    assert code == 1
    line = next(ln for ln in out.splitlines() if "LAN broker (home-9-plugs)" in ln)
    assert line.startswith("FAIL") and "docs/LAN.md" in line


# -- issue 22 item 6: the notice before a grant, a person who exists, the gateway's clock, erasure status -----------


def _grant(config: Path, *extra: str, stdin: str | None = None, purpose: str = "preventive-care") -> tuple[int, str]:
    result = runner.invoke(app, ["consent", "grant", purpose, *extra, "-c", str(config)], input=stdin)
    return result.exit_code, result.output


def test_grant_shows_the_notice_asks_and_knows_the_people(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[gateway]\nid = "home-9"\ndata_dir = "data"\n'
        '[[devices]]\nkind = "ble"\nid = "home-9-p1-hr"\naddress = "C0:4B:00:00:01:01"\nprofile = "heart_rate"\n'
        'subject = "p1"\nbackend = "virtual"\n',
        encoding="utf-8",
    )
    code, out = _grant(config, "--person", "p7", "--lang", "en")
    assert code == 2 and "p7 is not a person this gateway knows (known: p1)" in out
    code, out = _grant(config, "--person", "p1", "--lang", "en", stdin="n\n")
    assert code == 1 and "Nothing was given." in out
    for line in ("Who receives it: City Preventive Care Office", "How detailed:", "How long it is kept:", "Why:"):
        assert line in out, out
    code, out = kyojo("consent", "list", "--json", "-c", str(config))
    assert json.loads(out) == []  # saying no gives nothing
    code, out = _grant(config, "--person", "p1", "--lang", "ja", stdin="y\n")
    assert code == 0, out
    assert "提供先: 市 予防医療課" in out and "細かさ: 要約は最も細かくて 1 分に1件" in out
    assert "この内容で同意しますか？" in out and "JST）" in out
    code, out = _grant(config, "--person", "p1", "--yes", purpose="community-energy")
    assert code == 2 and "--person home-9" in out  # the household's purposes are given for the household
    code, out = _grant(config, "--person", "home-9", "--yes", "--lang", "en", purpose="community-energy")
    assert code == 0, out
    code, out = _grant(config, "--person", "p2", "--new-person", "--yes", "--lang", "en")
    assert code == 0 and "p2 -> Preventive-care alerts" in out


def test_grant_is_stamped_with_the_gateways_clock_and_withdrawal_tells_about_erasure(tmp_path: Path) -> None:
    """In the demo the simulated clock ran behind the wall clock, so a consent stamped with wall time released
    nothing: the grant takes the agent's clock (extrapolated from its status), like the web page."""
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "home-9"\ndata_dir = "{data}"\n[clock]\nspeed = 60\nstart = 1717200000\n',
        encoding="utf-8",
    )
    import time

    (data / "status.json").write_text(json.dumps({"clock": 1_717_300_000.0, "at": time.time()}), encoding="utf-8")
    code, out = _grant(config, "--person", "home-9", "--yes", "--lang", "en", purpose="community-energy")
    assert code == 0, out
    doc = json.loads(kyojo("consent", "list", "--json", "-c", str(config))[1])[0]
    given = datetime.fromisoformat(doc["given_at"]).timestamp()
    assert 1_717_300_000 <= given < 1_717_300_000 + 3600  # the agent's clock, not 2026's wall clock
    code, out = kyojo("consent", "withdraw", doc["id"], "-c", str(config), "--lang", "en")
    assert code == 0 and "erasure: the city erases what it holds" in out
    code, out = kyojo("consent", "show", doc["id"], "-c", str(config), "--lang", "en")
    assert "Erasure: waiting for the city's receipt" in out
    code, out = kyojo("consent", "show", doc["id"], "-c", str(config), "--lang", "ja")
    assert "消去: 市からの受領証を待っています" in out and "撤回済み" in out and " JST " in out

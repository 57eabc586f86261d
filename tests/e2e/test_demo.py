"""``kyojo demo --duration``: the smoke run CI relies on, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]


def test_demo_runs_and_reports_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kyojo",
            "demo",
            "--duration",
            "12",
            "--speed",
            "120",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,  # 12 s, then at most 120 s waiting for the residents' services, setup and shutdown
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert {"readings", "aggregates_sent", "points_written", "rejected"} <= set(summary)
    # the household page was up, and its URL and one-time pairing code were printed
    assert summary["household_page"].startswith("http://127.0.0.1:")
    assert re.search(r"household page: http://127\.0\.0\.1:\d+/ +\(pairing code \d{4} \d{4};", proc.stdout)
    # the garbage-collection navigator was up on the truck's route (issue 17 section 3), and answered from InfluxDB
    assert summary["navigator_page"].startswith("http://127.0.0.1:")
    assert re.search(r"garbage-collection navigator: http://127\.0\.0\.1:\d+/ ", proc.stdout)
    assert summary["navigator"]["chiyoda-1"]["points"] == 20, summary["navigator"]
    assert summary["navigator"]["chiyoda-1"]["collected"] > 0, summary["navigator"]  # the truck's pickups, via InfluxDB
    assert summary["readings"] > 1000
    assert summary["aggregates_sent"] > 50
    assert summary["aggregates_sent"] == summary["points_in_influxdb"]  # every aggregate sent is in InfluxDB once
    assert summary["events_sent"] == summary["events_in_influxdb"]  # pickups and alerts too
    assert summary["points_written"] == summary["aggregates_sent"] + summary["events_sent"]
    assert summary["rejected"] == 0
    assert summary["aggregates_withheld_no_consent"] > 0  # person p2 gave no consent
    # the devices came over the real protocols, read by the production drivers (drivers.sim.emit)
    by_path = summary["readings_by_path"]
    for kind in ("plugs", "bmeter", "gnss", "ble", "ocpp"):
        assert by_path.get(kind, 0) > 0, (kind, by_path)
    assert by_path["plugs"] + by_path["bmeter"] + by_path["gnss"] + by_path["ble"] > 10 * by_path.get("sim", 0)
    wire = summary["wire"]
    assert wire["error"] is None and min(wire["plug_messages"], wire["meter_gets"], wire["nmea_epochs"]) > 0
    assert not list((tmp_path / "demo" / "dev").iterdir())  # the pty links are gone
    for gw in ("home-001", "truck-07", "home-002", "home-003"):
        status = json.loads((tmp_path / "demo" / gw / "data" / "status.json").read_text())
        assert status["late"] == 0 and status["driver_errors"] == {}, (gw, status)
        procs = status["processors"]
        if gw == "home-001":  # the models run inside the agent on the demo's streams
            assert procs["health"]["af_windows"] > 0, procs  # the ONNX rhythm model on the straps' RR
            assert procs["nilm"]["inferences"] > 0, procs  # the NILM models on the B-route meter's power
        elif gw == "home-002":  # the person living alone: the rhythm learned (replayed), then the quiet morning
            assert procs["watchover"]["learning"] is False and procs["watchover"]["events"] >= 1, procs
        elif gw == "home-003":  # PV and an EV: the surplus loop steers the real ocpp charge point
            assert status["ev_surplus"]["state"] == "ok", status["ev_surplus"]
        else:
            assert procs["truck"]["pickups"] > 0, procs  # stops at collection points on the NMEA stream
        if gw in ("home-001", "home-002"):  # both homes are in the declared area and answered it
            assert status["safety"]["taken"] == 1 and status["safety"]["statuses"] >= 1, status["safety"]
    # issue 17 section 1: the family signed up (double opt-in) and got the notice, in Japanese, over real SMTP,
    # from the notifier reading what the ingester accepted
    watch = summary["watchover"]
    assert watch["family_signed_up"] is True, watch
    notices = [m for m in summary["mail"] if "動きがありません" in m["subject"]]
    assert [m["to"] for m in notices] == ["musume@family.example.jp"], summary["mail"]
    # issue 17 section 2: the declaration reached both homes, both answered, counted per area (k = 2 in the demo)
    area = summary["safety"]["areas"]["wakamatsu-1"]
    assert area["answered"] == 2 and area["power"] == 2, summary["safety"]
    assert area["safe"] == "<2", area  # one household pressed "safe": below k, not shown as a number
    # issue 18 section 1: home-003's gateway read its net meter over the B-route pty and steered the car into the
    # PV surplus with TxProfiles the charge point accepted
    ev = summary["ev_surplus"]
    assert ev["charge_point_connects"] >= 1 and ev["profiles_accepted"] >= 1, ev
    (tx,) = ev["transactions"].values()
    assert tx["state"] == "controlled" and tx["car_source"] == "meter_values", tx
    # issue 18 section 2: a day of trades on the ledger in a real PostgreSQL: the PV home offered, the buyer bid, the
    # matcher cleared and settled from the meters, tokens moved, and anyone's `kyojo ledger verify` says OK
    trade = summary["trading"]
    assert trade["verify_ok"] is True and trade["problems"] == [] and trade["refused"] == {}, trade
    assert 0 < trade["delivered_wh"] <= trade["matched_wh"] <= trade["offered_wh"], trade
    assert trade["site_tokens_wh"] == trade["delivered_wh"] and trade["balances_sum"] == 0, trade
    check = subprocess.run(
        [sys.executable, "-m", "kyojo", *trade["verify_command"].split()[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0 and "ledger OK" in check.stdout, check.stdout + check.stderr
    # what home-001's page shows under 電力の取引: its own entries, read with its trading key from the city's read
    # API (kyojo ledger serve-http) and checked against what it signed
    view = trade["household_view"]
    assert view["exit_code"] == 0 and view["entries"] > 0, view
    assert f"{trade['site_tokens_wh'] / 1000:.3f} kWh in tokens" in view["account"], view
    assert any(line.startswith("readings ") for line in lines)  # live progress
    # the analyst's lines (issue 22 items 16, 18): kyojo query, one window over the simulated data and the wall-time
    # stats, and no hint that points at the InfluxDB that stopped with the demo
    query = next(line for line in lines if "kyojo query energy.whole_vs_appliances" in line)
    since = datetime.fromisoformat(query.split("--since ")[1].split()[0].replace("Z", "+00:00")).timestamp()
    until = datetime.fromisoformat(query.split("--until ")[1].split()[0].replace("Z", "+00:00")).timestamp()
    home = json.loads((tmp_path / "demo" / "home-001" / "data" / "status.json").read_text())
    assert since <= min(home["clock"], home["at"]) and until >= max(home["clock"], home["at"])
    assert not any("influx -host" in line for line in lines)
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False)
    assert left.stdout == ""  # broker, database, agents and ingester all stopped

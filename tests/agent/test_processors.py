"""Models inside the agent: health alerts and NILM estimates as processors, under the consent gate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

import drivers.sim as sim
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from edge_agent.processors.health import Config as HealthConfig
from edge_agent.processors.health import HealthProcessor
from edge_agent.processors.nilm import Config as NilmConfig
from edge_agent.processors.nilm import NilmProcessor
from kyojo.cli import app
from kyojo.contract.vocab import Category, reading
from kyojo.contract.wire import decode_events
from provisioning.local import Mosquitto

T0 = 1_717_200_000.0  # 2024-06-01 09:00 JST


def test_config_accepts_processors_and_rejects_typos(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[gateway]\nid = "h"\n[[processors]]\nkind = "health"\nprofile = "japan"\n', encoding="utf-8")
    assert load_config(f).processors[0].profile == "japan"
    f.write_text('[gateway]\nid = "h"\n[[processors]]\nkind = "health"\nprofil = "japan"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="profil"):
        load_config(f)


def test_bp_crisis_alert_is_kept_then_released_only_with_consent(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-h"\ndata_dir = "data"\n', encoding="utf-8")
    cfg = load_config(path)
    p = Pipeline(connect(cfg.db_path), cfg)
    proc = HealthProcessor(HealthConfig(kind="health"))
    cuff = [
        reading("cuff", "p1", "systolic", 192, T0),
        reading("cuff", "p1", "diastolic", 124, T0),
        reading("cuff", "p1", "pulse_rate", 80, T0),
    ]
    events = proc.feed(cuff)
    assert [e.kind for e in events] == ["alert.bp_crisis"]
    assert events[0].severity == "urgent"
    assert events[0].category is Category.HEALTH
    p.store_events(events)
    p.release_events(T0 + 10)
    assert p.stats.events_withheld == 1  # no preventive-care consent: the alert stays home

    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["alerts", "list", "--json", "-c", str(path)]).output)
    assert [(a["kind"], a["shared"], a["acknowledged"]) for a in listed] == [("bp_crisis", False, False)]
    out = runner.invoke(app, ["alerts", "ack", str(listed[0]["alert_id"]), "-c", str(path)])
    assert out.exit_code == 0
    assert json.loads(runner.invoke(app, ["alerts", "list", "--json", "-c", str(path)]).output)[0]["acknowledged"]
    # in Japanese (issue 22 item 5): the alert's title, urgency, state and what to do in words, the time in JST
    shown = runner.invoke(app, ["alerts", "list", "-c", str(path)], env={"LANG": "ja_JP.UTF-8"}).output
    assert "緊急" in shown and "継続中" in shown and "2024-06-01 09:00 JST" in shown and "119" in shown
    assert "確認済み" in shown and "ゲートウェイ内のみ" in shown
    assert not any(w in shown for w in ("urgent", "open", "UTC", "kept on the gateway", "bp_crisis "))
    shown = runner.invoke(app, ["alerts", "list", "-c", str(path), "--lang", "en"]).output
    assert "urgent" in shown and "2024-06-01 00:00 UTC" in shown

    p.consents.grant("preventive-care", "p1", now=datetime.fromtimestamp(T0 + 20, tz=UTC))
    # the crisis ends with a normal reading later: the closing update happens under the consent
    again = proc.feed(
        [reading("cuff", "p1", "systolic", 118, T0 + 3600), reading("cuff", "p1", "diastolic", 76, T0 + 3600)]
    )
    assert [e.attrs["state"] for e in again] == ["closed"]
    p.store_events(again)
    p.release_events(T0 + 120)
    rows = p.conn.execute("SELECT topic, payload FROM outbox WHERE topic LIKE '%/event/%'").fetchall()
    batches = [decode_events(t, bytes(b)) for t, b in rows]
    released = [e for b in batches for e in b.events]
    assert all(b.purpose == "preventive-care" for b in batches)
    assert all(e.subject == p.keys.pseudonym("preventive-care", "p1") for e in released)
    assert all(e.at >= (T0 + 20) * 1000 for e in released)  # nothing from before the consent
    assert released
    summary_keys = {
        "alert_id",
        "state",
        "level",
        "started_ms",
        "ended_ms",
        "metric",
        "n",
        "min",
        "max",
        "mean",
        "source",
        "message",
        "model_version",
    }
    assert all(set(e.attrs) <= summary_keys for e in released)  # a summary, never the readings themselves
    assert b"p1" not in b"".join(bytes(b) for _, b in rows)  # the local person label never leaves


def test_nilm_estimates_enter_the_energy_path_with_a_longer_grace(tmp_path: Path) -> None:
    home = sim.household("home-n", 3)
    meter = next(s for s in home if s.kind == "meter")
    proc = NilmProcessor(NilmConfig(kind="nilm", meter=meter.device_id, subject="home-n"), tmp_path / "nilm.json")
    start = T0 + 9 * 3600  # 18:00 JST
    derived = []
    for h in range(3):
        batch = meter.readings_between(start + h * 3600, start + (h + 1) * 3600)
        derived += proc.feed(batch)
    assert derived
    assert {r.metric for r in derived} == {"power", "energy"}
    assert all(".nilm." in r.device and r.extra["estimated"] == "true" for r in derived)
    assert all(r.value >= 0 for r in derived)
    energies = [r.value for r in derived if r.metric == "energy"]
    assert energies == sorted(energies) or len({r.device for r in derived}) > 1
    state = json.loads((tmp_path / "nilm.json").read_text())
    assert set(state["energy_wh"]) >= {"kettle", "dishwasher"}
    again = NilmProcessor(NilmConfig(kind="nilm", meter=meter.device_id, subject="home-n"), tmp_path / "nilm.json")
    assert again.runtime.energy_wh == state["energy_wh"]  # cumulative estimates survive a restart
    # only shown estimates became Readings; the others were counted as withheld
    health = proc.health()
    n_power = sum(r.metric == "power" for r in derived)
    assert sum(health["shown"].values()) == n_power  # type: ignore[attr-defined]
    assert health["estimates"] == n_power + sum(health["withheld"].values())  # type: ignore[attr-defined]

    cfg = AgentConfig.model_validate({"gateway": {"id": "home-n", "data_dir": str(tmp_path / "gw")}})
    p = Pipeline(connect(cfg.db_path), cfg)
    p.category_grace_s[Category.ENERGY] = proc.lag_s
    p.consents.grant("community-energy", "home-n", now=datetime.fromtimestamp(start, tz=UTC))
    p.store(derived)
    measured = meter.readings_between(start, start + 3 * 3600)
    p.store(measured)
    p.close_windows(start + 3 * 3600)
    assert p.stats.late == 0
    marks = dict(p.conn.execute("SELECT category, next_start FROM watermark").fetchall())
    # the measured series are released up to a minute ago; the estimates wait for the models' hour of lag
    assert marks["energy"] == (start + 3 * 3600 - 60) * 1000
    assert marks["energy.estimated"] <= (start + 3 * 3600 - proc.lag_s) * 1000
    rows = p.conn.execute("SELECT payload FROM outbox WHERE topic LIKE '%/agg/energy'").fetchall()
    assert rows  # estimated appliance series released under the household's energy consent


def test_agent_builds_drivers_for_paired_ble_devices(tmp_path: Path) -> None:
    from drivers.clock import SystemClock
    from edge_agent.agent import build_drivers

    cfg = AgentConfig.model_validate({"gateway": {"id": "home-b", "data_dir": str(tmp_path)}})
    assert build_drivers(cfg, SystemClock())[0] == []
    (tmp_path / "ble-devices.json").write_text(
        json.dumps(
            {
                "version": 1,
                "devices": [
                    {
                        "id": "glucose-alice",
                        "address": "C0:00:00:00:02:01",
                        "profile": "glucose",
                        "subject": "alice",
                        "name": "Meter",
                        "bonded": True,
                        "added_at": "2026-11-26T13:40:00Z",
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    drivers, _ = build_drivers(cfg, SystemClock())
    assert [d.device_id for d in drivers] == ["glucose-alice"]


@pytest.mark.broker
def test_af_model_runs_inside_the_agent_on_the_simulated_strap(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The ONNX rhythm model classifies the simulated strap's RR stream inside a running agent: sinus rhythm,
    so windows are classified and no AF alert opens."""
    from drivers.clock import ScaledClock
    from edge_agent.agent import Agent
    from tests.agentkit import agent_config, run_agent_in_thread
    from tests.kit import wait_for

    cfg = agent_config(tmp_path / "gw", mosquitto.port, gateway="home-af")
    clock = ScaledClock(T0, speed=300)
    strap = sim.HeartRateStrap("home-af-p1-hr", "p1", 5)
    proc = HealthProcessor(HealthConfig(kind="health"))

    def make() -> Agent:
        agent = Agent(cfg, clock=clock, drivers=[sim.SimDriver(strap, clock, tick_s=30, start=T0)])
        agent.processors = [proc]
        return agent

    _, stop, _ = run_agent_in_thread(make)
    wait_for(lambda: clock.now() > T0 + 1200)
    stop()
    health = proc.health()
    assert int(health["af_windows"]) > 20  # 20 simulated minutes of beats, 30-beat steps
    conn = connect(cfg.db_path)
    kinds = [k for (k,) in conn.execute("SELECT kind FROM events")]
    conn.close()
    assert "alert.af" not in kinds
    status = json.loads(cfg.status_path.read_text())
    assert status["processors"]["health"]["af_windows"] == health["af_windows"]


def test_an_af_alert_shows_its_episode_in_words(tmp_path: Path) -> None:
    """Issue 21: the AF alert's burden and start/end estimates reach the household (kyojo alerts list, as the
    alerts page shows them), in Japanese with JST times."""
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-af"\ndata_dir = "data"\n', encoding="utf-8")
    cfg = load_config(path)
    conn = connect(cfg.db_path)
    attrs = {
        "alert_id": "af-1",
        "level": "advisory",
        "state": "closed",
        "message": "AF burden 92% over 10 min",
        "started_ms": int(T0 * 1000),
        "ended_ms": int((T0 + 2400) * 1000),
        "episode_start_ms": int(T0 * 1000),
        "episode_end_ms": int((T0 + 2400) * 1000),
        "burden": 0.92,
        "metric": "rr_interval",
    }
    conn.execute(
        "INSERT INTO events(id, kind, category, subject, device, ts, severity, attrs, state) "
        "VALUES('e1', 'alert.af', 'health', 'p1', 'strap', ?, 'advisory', ?, 'pending')",
        (int((T0 + 2400) * 1000), json.dumps(attrs)),
    )
    conn.close()
    shown = CliRunner().invoke(app, ["alerts", "list", "-c", str(path), "--lang", "ja"]).output
    assert "不規則な脈が時間の 92%" in shown and "2024-06-01 09:00 JST - 2024-06-01 09:40 JST" in shown
    from edge_agent.web.alerting import list_alerts

    conn = connect(cfg.db_path)
    (view,) = list_alerts(conn)
    conn.close()
    assert (view.burden, view.episode_start_ms, view.episode_end_ms) == (0.92, int(T0 * 1000), int((T0 + 2400) * 1000))

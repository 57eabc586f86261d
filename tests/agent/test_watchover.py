"""Watch-over on the gateway (issue 17 section 1): the processor turns the meter's power into absence events, and
they leave only as the family's watch-over consent allows: nothing of the power data, nothing under another
purpose, nothing but ``watchover.*`` under this one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from edge_agent.processors import validate
from edge_agent.processors.watchover import Config, WatchoverProcessor
from kyojo.contract.vocab import Category, Event, reading
from kyojo.contract.wire import decode_events
from tests.models.test_watchover import START, person_alone

ABSENT_DAY = 5


def home_readings(days: int = 7) -> list[list[object]]:
    """A day of the meter's 1-minute power readings per list (two readings a minute), the kettle's plug too."""
    out: list[list[object]] = []
    for t, w in person_alone(days, absent_day=ABSENT_DAY):
        d = int((t - START) // 86400)
        while len(out) <= d:
            out.append([])
        out[d] += [reading("meter", "h1", "power", w, t + 10), reading("meter", "h1", "power", w, t + 40)]
        if w > 2000:  # the kettle's own plug, as the household paired it
            out[d].append(reading("plug-kettle", "h1", "power", 1900.0, t + 20))
    return out


def processor(tmp_path: Path) -> WatchoverProcessor:
    config = validate(
        {
            "kind": "watchover",
            "meter": "meter",
            "subject": "h1",
            "signals": {"plug-kettle": "kettle"},
            "learn_days": 2,
            "calibrate_days": 2,
        }
    )
    assert isinstance(config, Config)
    return WatchoverProcessor(config, tmp_path / "watchover-h1.json")


def test_an_absence_becomes_an_event_released_only_under_the_familys_consent(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-w"\ndata_dir = "data"\n', encoding="utf-8")
    cfg = load_config(path)
    pipe = Pipeline(connect(cfg.db_path), cfg)
    proc = processor(tmp_path)
    events: list[Event] = []
    for day in home_readings():
        events += proc.feed(day)  # type: ignore[arg-type]
    kinds = [(e.kind, e.severity, int((e.ts - START) // 86400)) for e in events]
    assert ("watchover.absence", "warning", ABSENT_DAY) in kinds
    assert ("watchover.resumed", "info", ABSENT_DAY + 1) in kinds
    assert all(day >= 4 for _, _, day in kinds)  # two days of profile and two of calibration first
    absence = next(e for e in events if e.kind == "watchover.absence")
    assert absence.category is Category.WELLBEING and absence.subject == "h1"
    keys = {"quiet_min", "since_ms", "usual_hours", "score", "threshold", "last_signal", "family_key"}
    assert set(absence.attrs) <= keys
    assert absence.attrs["quiet_min"] >= 60 and absence.attrs["last_signal"] in {"kettle", "meter"}
    assert proc.health()["learning"] is False and proc.health()["events"] == len(events)

    given = datetime.fromtimestamp(START, tz=UTC)
    pipe.store_events(events)
    pipe.consents.grant("community-energy", "h1", now=given)  # electricity summaries: not the watch-over events
    pipe.release_events(START + 8 * 86400)
    assert pipe.stats.events_withheld == len(events) and pipe.stats.events_released == 0

    (tmp_path / "other").mkdir()
    path.write_text('[gateway]\nid = "home-w"\ndata_dir = "other"\n', encoding="utf-8")
    pipe = Pipeline(connect(load_config(path).db_path), load_config(path))
    pipe.consents.grant("watchover-family", "h1", now=given)
    other = Event("x-1", "safety.status", Category.WELLBEING, "h1", "meter", START + 7 * 86400, "info", {})
    pipe.store_events([*events, other])  # a wellbeing event of another kind: not what this purpose carries
    pipe.release_events(START + 8 * 86400)
    rows = pipe.conn.execute("SELECT topic, payload FROM outbox WHERE topic LIKE '%/event/%'").fetchall()
    batches = [decode_events(t, bytes(b)) for t, b in rows]
    assert {(b.purpose, b.category) for b in batches} == {("watchover-family", Category.WELLBEING)}
    sent = [e for b in batches for e in b.events]
    assert sorted(e.kind for e in sent) == sorted(e.kind for e in events)
    assert pipe.stats.events_released == len(events) and pipe.stats.events_withheld == 1
    assert pipe.conn.execute("SELECT state FROM events WHERE id = 'x-1'").fetchone() == ("withheld",)
    assert all(e.subject == pipe.keys.pseudonym("watchover-family", "h1") for e in sent)
    assert b"h1" not in b"".join(bytes(b) for _, b in rows)


def test_the_learned_rhythm_survives_a_restart_and_a_damaged_file_is_set_aside(tmp_path: Path) -> None:
    proc = processor(tmp_path)
    for day in home_readings(3):
        proc.feed(day)  # type: ignore[arg-type]
    proc.save()
    again = processor(tmp_path)
    assert again.health()["days_seen"] == proc.health()["days_seen"] == 3
    assert again.watch.last_activity == proc.watch.last_activity

    (tmp_path / "watchover-h1.json").write_text("{not json", encoding="utf-8")
    fresh = processor(tmp_path)
    assert fresh.health()["state_resets"] == 1 and fresh.health()["days_seen"] == 0
    assert (tmp_path / "watchover-h1.damaged").read_text(encoding="utf-8") == "{not json"


def test_the_household_gets_the_family_code_from_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edge_agent.processors.watchover import family_code
    from kyojo.cli import app

    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-w"\ndata_dir = "data"\n', encoding="utf-8")
    out = CliRunner().invoke(
        app, ["consent", "family-code", "--person", "h1", "-c", str(path)], env={"LANG": "ja_JP.UTF-8"}
    )
    assert out.exit_code == 0, out.output
    code = family_code(tmp_path / "data", "h1")  # the same code every time
    assert f"h1 さんのご家族用コード: {code}" in out.stdout and "市の見守りページ" in out.stdout
    assert (tmp_path / "data" / "watchover-h1.code").stat().st_mode & 0o777 == 0o600

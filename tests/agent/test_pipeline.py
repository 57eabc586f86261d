"""Raw store, windows, consent gate and outbox against a real SQLite database (no broker)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from edge_agent import consent
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline, SeriesKey, aggregate_series
from kyojo.contract.vocab import reading
from kyojo.contract.wire import AggregateBatch, AggregateItem, ConsentRecord, decode_batch

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z, a window boundary for every window length


def make(tmp_path: Path, **agg: object) -> tuple[AgentConfig, Pipeline]:
    cfg = AgentConfig.model_validate(
        {"gateway": {"id": "gw-1", "data_dir": str(tmp_path)}, "aggregation": {"grace": 5, **agg}}
    )
    return cfg, Pipeline(connect(cfg.db_path), cfg)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=UTC)


def outbox(p: Pipeline) -> list[tuple[str, bytes, int]]:
    return [(t, bytes(b), r) for t, b, r in p.conn.execute("SELECT topic, payload, retain FROM outbox ORDER BY seq")]


def batches(p: Pipeline) -> list[AggregateBatch]:
    return [decode_batch(t, b) for t, b, r in outbox(p) if not r]


def test_gauge_summary() -> None:
    item = aggregate_series(SeriesKey("d", "s", "heart_rate"), 0, 60, [60.0, 70.0, 65.0], None)
    assert (item.count, item.mean, item.min, item.max, item.last, item.delta) == (
        3,
        65.0,
        60.0,
        70.0,
        65.0,
        None,
    )


def test_counter_delta_uses_previous_window_and_survives_reset() -> None:
    key = SeriesKey("plug", "home", "energy")
    assert aggregate_series(key, 0, 60, [100.0, 101.5, 103.0], 99.0).delta == pytest.approx(4.0)
    assert aggregate_series(key, 0, 60, [100.0, 103.0], None).delta == pytest.approx(3.0)
    # the plug rebooted between 103 and 1: 103-99 before the reset, then 1 and 2 from zero
    # a step down is no energy (the drivers already tell resets from glitches; state lost since is not energy)
    held: Counter[str] = Counter()
    assert aggregate_series(key, 0, 60, [103.0, 1.0, 2.0], 99.0, held=held).delta == pytest.approx(5.0)
    assert held == {"counter_backwards": 1}


def test_counter_steps_faster_than_any_supply_are_held_and_long_gaps_say_their_span() -> None:
    """The demo's 1 GWh spike could not leave the gateway again: a step beyond the physical ceiling adds nothing
    (issue 22 item 1), and a delta reaching back before the window carries ``span_s`` for the cloud's check."""
    key = SeriesKey("m", "s", "energy")
    held: Counter[str] = Counter()
    times = [10_000, 20_000, 30_000]
    spike = aggregate_series(key, 0, 60, [1_000.0, 1_000_001_000.0, 1_000_001_001.0], 999.0,
                             times_ms=times, prev_ms=0, held=held)  # fmt: skip
    assert spike.delta == pytest.approx(2.0) and held == {"counter_implausible": 1}
    # 3 kWh since a reading two hours earlier is plausible, but only over those two hours
    late = aggregate_series(key, 7_200_000, 60, [4_000.0], 1_000.0, times_ms=[7_230_000], prev_ms=30_000)
    assert late.delta == pytest.approx(3_000.0) and late.span_s == 7_200
    assert AggregateItem.model_validate(late.model_dump()).delta == 3_000.0
    with pytest.raises(ValueError, match="implausible"):  # without its span the cloud would refuse it
        AggregateItem.model_validate(late.model_dump() | {"span_s": None})


def test_default_deny_nothing_leaves_without_consent(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    p.store(reading("hr", "p1", "heart_rate", 60 + i % 5, T0 + i) for i in range(300))
    assert p.close_windows(T0 + 400) == 0
    assert p.stats.aggregates == 5 and p.stats.denied == 5
    assert outbox(p) == []


def test_consent_releases_exact_windows_and_queues_record_first(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    c = p.consents.grant("preventive-care", "p1", now=at(0))
    values = [60 + (i * 7) % 13 for i in range(180)]
    p.store(reading("hr", "p1", "heart_rate", v, T0 + i) for i, v in enumerate(values))
    p.store(reading("hr2", "p2", "heart_rate", 80, T0 + i) for i in range(180))  # p2 gave no consent
    p.close_windows(T0 + 180 + 5)
    rows = outbox(p)
    assert rows[0][0] == "kyojo/v1/gw-1/consent/" + c.id and rows[0][2] == 1
    assert ConsentRecord.model_validate_json(rows[0][1]).status == "active"
    items = [i for b in batches(p) for i in b.items]
    assert [i.start for i in items] == [int(T0 * 1000), int(T0 * 1000) + 60_000, int(T0 * 1000) + 120_000]
    for w, item in enumerate(items):
        win = values[w * 60 : (w + 1) * 60]
        assert item.subject == p.keys.pseudonym("preventive-care", "p1") and item.count == 60
        assert item.mean == pytest.approx(sum(win) / 60) and item.max == max(win) and item.last == win[-1]
    assert {b.consent for b in batches(p)} == {c.id}
    assert [b.seq for b in batches(p)] == sorted({b.seq for b in batches(p)})


def test_window_not_closed_before_grace_and_late_readings_counted(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    p.consents.grant("preventive-care", "p1", now=at(0))
    p.store([reading("hr", "p1", "heart_rate", 60, T0 + 10)])
    p.close_windows(T0 + 62)  # end 60 + grace 5 not reached
    assert batches(p) == []
    p.close_windows(T0 + 65)
    assert len(batches(p)) == 1
    p.store([reading("hr", "p1", "heart_rate", 99, T0 + 30)])  # arrives after its window closed
    assert p.stats.late == 1
    p.close_windows(T0 + 200)
    assert sum(i.count for b in batches(p) for i in b.items) == 1  # the late reading never leaves


def test_consent_is_not_retroactive_and_withdrawal_purges_queue(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    p.store(reading("plug", "home", "power", 100, T0 + i) for i in range(600))
    c = p.consents.grant("community-energy", "home", now=at(120))
    p.close_windows(T0 + 300)
    starts = sorted({i.start for b in batches(p) for i in b.items})
    assert starts[0] == int((T0 + 120) * 1000)  # windows before the grant stay on the gateway
    queued = len(batches(p))
    assert starts == [int((T0 + 120) * 1000), int((T0 + 180) * 1000)]
    assert queued == 1  # both windows travel in one message
    dropped = p.consents.withdraw(c.id, now=at(301))
    assert dropped == queued and batches(p) == []
    record = ConsentRecord.model_validate_json(outbox(p)[-1][1])
    assert record.status == "withdrawn"
    p.close_windows(T0 + 700)
    assert batches(p) == []


def test_once_only_one_consent_covers_every_device_of_the_category(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    c1 = p.consents.grant("preventive-care", "p1", now=at(0))
    c2 = p.consents.grant("preventive-care", "p1", now=at(10))
    assert c1 == c2
    p.store([reading("cuff-a", "p1", "systolic", 120, T0 + 5), reading("cuff-b", "p1", "systolic", 130, T0 + 6)])
    p.close_windows(T0 + 100)
    devices = sorted(i.device for b in batches(p) for i in b.items)
    assert devices == sorted(p.keys.device_pseudonym("preventive-care", d) for d in ("cuff-a", "cuff-b"))


def test_expiry_stops_release(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    p.consents.grant("preventive-care", "p1", now=at(0), expires_at=at(120))
    p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(300))
    p.close_windows(T0 + 100)
    assert [i.start for b in batches(p) for i in b.items] == [int(T0 * 1000)]
    p.close_windows(T0 + 400)  # [60, 120) falls due after the expiry: the cloud would refuse it too
    assert batches(p) == []  # what was still queued at expiry is dropped, like on withdrawal
    assert p.conn.execute("SELECT count(*) FROM audit WHERE kind = 'release'").fetchone()[0] == 1
    assert consent.list_consents(p.conn)[0].status == "expired"


def test_unknown_purpose_and_bad_subject_are_typed_errors(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    with pytest.raises(consent.ConsentError, match="unknown purpose"):
        p.consents.grant("marketing", "p1")
    with pytest.raises(consent.ConsentError, match="not a valid id"):
        p.consents.grant("preventive-care", "p 1")


def test_outbox_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    cfg = AgentConfig.model_validate(
        {
            "gateway": {"id": "gw-1", "data_dir": str(tmp_path)},
            "outbox": {"max_messages": 10},
            "aggregation": {"max_items_per_message": 1},
        }
    )
    p = Pipeline(connect(cfg.db_path), cfg)
    p.consents.grant("community-energy", "home", now=at(0))
    p.store(reading("plug", "home", "power", 100, T0 + i) for i in range(1200))
    p.close_windows(T0 + 1300)
    assert p.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 10
    assert p.stats.outbox_dropped == 20 - 10 + 1  # 20 windows + the consent record, consent record kept
    assert outbox(p)[0][2] == 1


def test_counter_delta_across_windows_matches_total(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    p.consents.grant("community-energy", "home", now=at(0))
    p.store(reading("plug", "home", "energy", 1000 + i * 0.5, T0 + i * 10) for i in range(60))
    p.close_windows(T0 + 700)
    deltas = [i.delta for b in batches(p) for i in b.items]
    assert sum(d for d in deltas if d is not None) == pytest.approx(59 * 0.5)


def test_restart_continues_from_watermark(tmp_path: Path) -> None:
    cfg, p = make(tmp_path)
    p.consents.grant("preventive-care", "p1", now=at(0))
    p.store(reading("hr", "p1", "heart_rate", 70, T0 + i) for i in range(130))
    p.close_windows(T0 + 70)
    p.conn.close()
    p2 = Pipeline(connect(cfg.db_path), cfg)  # the agent restarted
    p2.close_windows(T0 + 200)
    starts = [i.start for b in batches(p2) for i in b.items]
    assert starts == sorted(set(starts)) and len(starts) == 3


def test_payload_is_compact_json_of_the_contract(tmp_path: Path) -> None:
    _, p = make(tmp_path)
    p.consents.grant("preventive-care", "p1", now=at(0))
    p.store([reading("hr", "p1", "heart_rate", 70, T0 + 1)])
    p.close_windows(T0 + 100)
    topic, payload, _ = outbox(p)[-1]
    doc = orjson.loads(payload)
    assert "delta" not in doc["items"][0]  # None fields are left out
    assert topic == "kyojo/v1/gw-1/agg/health"


def test_config_rejects_typos_and_bad_windows(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[gateway]\nid = "gw-1"\ndata_dir = "data"\n[mqtt]\nhots = "x"\n')
    with pytest.raises(ConfigError, match="hots"):
        load_config(f)
    f.write_text('[gateway]\nid = "gw-1"\n[aggregation.windows]\nhealth = 7\n')
    with pytest.raises(ConfigError, match="dividing a day"):
        load_config(f)
    f.write_text('[gateway]\nid = "gw-1"\ndata_dir = "data"\n')
    assert load_config(f).gateway.data_dir == (tmp_path / "data").resolve()
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_device_entries_are_validated_by_their_kind(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[gateway]\nid = "gw-1"\n[[devices]]\nkind = "teleporter"\n')
    with pytest.raises(ConfigError, match="unknown device kind 'teleporter'"):
        load_config(f)
    f.write_text('[gateway]\nid = "gw-1"\n[[devices]]\nkind = "sim"\nprofile = "household"\nid = "h"\nsede = 1\n')
    with pytest.raises(ConfigError, match="sede"):
        load_config(f)
    f.write_text('[gateway]\nid = "gw-1"\n[[devices]]\nkind = "sim"\nprofile = "truck"\nid = "t-1"\n')
    assert load_config(f).devices[0].profile == "truck"

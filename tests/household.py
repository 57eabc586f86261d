"""A household's month in a gateway database, written through the agent's own code paths (tests and bench/web.py).

:func:`seed_household` plays ``days`` of the demo household's simulated devices (``drivers.sim.household``: two
heart-rate straps, p1's blood-pressure cuff with a hypertensive profile, p2's oximeter, four plugs, the meter, the
EV charger) into a gateway database the way the running agent would have stored them, hour by hour:

- consents granted at the start through ``ConsentStore.grant`` (p1 preventive care, the household's community
  energy and EV sharing; p2 gives none, so p2's alerts stay home), EV sharing withdrawn after a third of the time
  through ``ConsentStore.withdraw``;
- each hour's readings -> ``Pipeline.store``; the configured processors (``health``: the guideline rules;
  ``nilm``: the ONNX appliance models) fed with them exactly as ``Agent.flush`` does -> ``store_events`` /
  derived estimate Readings; then ``close_windows`` and ``release_events`` (the consent gate, the outbox and the
  audit log); raw rows older than the retention period pruned daily, as the agent does;
- hypertensive-crisis readings for p1 two days and 20 minutes before the end (the 119 rule; the second is still
  open) and a low-SpO2 episode for p2 three days before (withheld: p2 gave no consent), injected as device
  Readings, so the alerts come from the real rules engine;
- optionally (``publish=True``) the real ``Publisher`` sends the outbox to the config's broker, so the audit log
  also holds the broker's acknowledgements; one alert is acknowledged through ``kyojo alerts ack``'s function.

Two liberties, both to keep a month affordable on a shared 2-core machine: heart rate is kept every
``hr_every_s`` seconds (default 10) instead of every second, and RR intervals are not stored (so the AF model
sees nothing). Everything else is at the simulators' native rate (plugs and meter every 10 s).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers import sim
from drivers.clock import SystemClock
from drivers.registry import BuildContext
from edge_agent import consent
from edge_agent import processors as processor_kinds
from edge_agent.config import AgentConfig, load_config
from edge_agent.db import connect
from edge_agent.pipeline import Pipeline
from kyojo.contract.vocab import Event, Reading, reading

HOME_ID = "home-001"
SEED = 7
DAY = 86_400
HOUR = 3_600


@dataclass
class SeedStats:
    """What the seeding wrote (counts), and how long it took."""

    days: float
    readings: int = 0
    events: int = 0
    estimates: int = 0
    releases: int = 0
    raw_rows: int = 0
    alerts: int = 0
    outbox_left: int = 0
    seconds: float = 0.0
    consents: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _injected(start: float, end: float) -> list[Reading]:
    """p1's hypertensive crisis (single reading, 07:10 JST two days before the end) and p2's low-SpO2 episode."""
    day0 = (end + 9 * HOUR) // DAY * DAY - 9 * HOUR  # 00:00 JST of the last day
    crisis = day0 - 2 * DAY + 7 * HOUR + 10 * 60
    out: list[Reading] = []
    if start <= crisis < end:
        dev = f"{HOME_ID}-p1-bp"
        for metric, value in (("systolic", 186.0), ("diastolic", 112.0), ("mean_arterial_pressure", 136.7)):
            out.append(reading(dev, "p1", metric, value, crisis))
        out.append(reading(dev, "p1", "pulse_rate", 88.0, crisis))
    late = end - 20 * 60  # a second crisis 20 min before the end: still open when the page is looked at
    if start <= late:
        for metric, value in (("systolic", 184.0), ("diastolic", 108.0), ("mean_arterial_pressure", 133.3)):
            out.append(reading(f"{HOME_ID}-p1-bp", "p1", metric, value, late))
    low = spo2_episode(end)
    if start <= low and low + 20 * 60 < end:
        dev = f"{HOME_ID}-p2-spo2"
        for i in range(16):  # one a minute for 15 min at 86-88 %, then back to 95 %
            out.append(reading(dev, "p2", "spo2", 86.0 + (i % 3) if i < 12 else 95.0, low + 60 * i))
    return out


def spo2_episode(end: float) -> float:
    """Start of p2's injected low-SpO2 episode: 03:00 JST three days before the end's day."""
    day0 = (end + 9 * HOUR) // DAY * DAY - 9 * HOUR
    return day0 - 3 * DAY + 3 * HOUR


def _keep(r: Reading, hr_every_s: int, quiet: tuple[float, float], end: float = float("inf")) -> bool:
    if r.metric == "rr_interval":
        return False
    if r.device == f"{HOME_ID}-p2-spo2" and quiet[0] <= r.ts < quiet[1]:
        return False  # the oximeter's own readings give way to the injected episode
    if r.device == f"{HOME_ID}-p1-bp" and r.ts >= end - 20 * 60:
        return False  # nothing after the late crisis, whatever the time of day the home is seeded at
    return not (r.metric == "heart_rate" and int(r.ts) % hr_every_s)


def seed_household(
    config_path: Path,
    *,
    days: float = 30.0,
    end: float | None = None,
    hr_every_s: int = 10,
    publish: bool = False,
    publish_timeout: float = 300.0,
    progress: Callable[[float], None] | None = None,
) -> SeedStats:
    """Write ``days`` of the household's life, ending at ``end`` (default now), into the config's database."""
    t_start = time.monotonic()
    cfg: AgentConfig = load_config(config_path)
    end = float(int(time.time() if end is None else end) // 60 * 60)
    start = end - days * DAY
    stats = SeedStats(days=days)
    conn = connect(cfg.db_path)
    pub = _Drain(cfg) if publish else None
    try:
        pipeline = Pipeline(conn, cfg)
        ctx = BuildContext(cfg.gateway.id, SystemClock(), 1.0, cfg.gateway.data_dir)
        procs = [processor_kinds.build(p, ctx) for p in cfg.processors]
        for proc in procs:
            if proc.lag_s and proc.category is not None:
                pipeline.category_grace_s[proc.category] = proc.lag_s
        store = consent.open_store(cfg, conn)
        at = datetime.fromtimestamp(start, tz=UTC)
        grants = (("preventive-care", "p1"), ("community-energy", HOME_ID), ("ev-energy-sharing", HOME_ID))
        for purpose, subject in grants:
            stats.consents[purpose] = store.grant(purpose, subject, now=at, lang="ja").id
        withdraw_at = start + days * DAY / 3
        sims = sim.household(HOME_ID, SEED, bp_profile="hypertensive")
        extra = sorted(_injected(start, end), key=lambda r: r.ts)
        quiet = (spo2_episode(end), spo2_episode(end) + 16 * 60)
        t = start
        last_prune = start
        while t < end:
            nxt = min(t + HOUR, end)
            batch = [r for s in sims for r in s.readings_between(t, nxt) if _keep(r, hr_every_s, quiet, end)]
            batch += [r for r in extra if t <= r.ts < nxt]
            batch.sort(key=lambda r: r.ts)
            stats.readings += pipeline.store(batch)
            for proc in procs:
                out = proc.feed(batch)
                stats.events += pipeline.store_events(o for o in out if isinstance(o, Event))
                derived = [o for o in out if isinstance(o, Reading)]
                if derived:
                    stats.estimates += pipeline.store(derived)
            if t < withdraw_at <= nxt:
                consent.open_store(cfg, conn).withdraw(
                    stats.consents["ev-energy-sharing"], now=datetime.fromtimestamp(withdraw_at, tz=UTC)
                )
            pipeline.close_windows(nxt)
            pipeline.release_events(nxt)
            if pub is not None:
                pub.pub.wake.set()
            if nxt - last_prune >= DAY:
                pipeline.prune(nxt)
                last_prune = nxt
                if progress is not None:
                    progress(round((nxt - start) / DAY, 1))
            t = nxt
        pipeline.prune(end)
        stats.releases = int(conn.execute("SELECT count(*) FROM audit WHERE kind = 'release'").fetchone()[0])
        stats.raw_rows = int(conn.execute("SELECT count(*) FROM raw").fetchone()[0])
        stats.alerts = int(conn.execute("SELECT count(*) FROM events WHERE kind LIKE 'alert.%'").fetchone()[0])
        if pub is not None:
            pub.drain(publish_timeout)
    finally:
        conn.close()
        if pub is not None:
            pub.stop()
    _ack_oldest_alert(config_path)
    conn = connect(cfg.db_path)
    try:
        stats.outbox_left = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()
    stats.seconds = round(time.monotonic() - t_start, 1)
    return stats


class _Drain:
    """The agent's real publisher, sending the outbox to the config's broker while the month is written."""

    def __init__(self, cfg: AgentConfig) -> None:
        from edge_agent.publisher import Publisher

        self.cfg = cfg
        self.pub = Publisher(cfg)
        self.pub.start()

    def drain(self, timeout: float) -> None:
        conn = connect(self.cfg.db_path)
        try:
            deadline = time.monotonic() + timeout
            while conn.execute("SELECT count(*) FROM outbox").fetchone()[0]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the outbox did not drain")
                self.pub.wake.set()
                time.sleep(0.1)
        finally:
            conn.close()

    def stop(self) -> None:
        self.pub.stop()


def _ack_oldest_alert(config_path: Path) -> None:
    """Acknowledge the oldest alert as the household would (``kyojo alerts ack``)."""
    from edge_agent import cli

    alerts = cli._alerts(config_path)
    if alerts:
        with contextlib.redirect_stdout(io.StringIO()):
            cli.alerts_ack(str(alerts[-1]["alert_id"]), config_path)

"""The metered values of a household's traded slots come from its own smart meter (issue 18 section 2): the real
agent reads an emulated BP35A1 (0xE0/0xE3 registers, the B-route driver with ``export = true``), and after a slot it
offered in, queues one signed meter report of the energy it sold over that slot, in its outbox and audit log; a
slot it did not trade is never reported; a gap around a boundary is given up, never guessed; without the consent
nothing is reported."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloud_ingest.ledger.chain import ed25519_ok
from drivers.meter.emulator import PWD, RBID, PtyEmulator, Scenario
from drivers.sim.evsite import SiteMeter, StepClock
from edge_agent import audit, consent, trading
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.db import connect
from edge_agent.trade_meter import GIVE_UP_S, SlotMeters
from kyojo.contract.vocab import Reading
from kyojo.contract.wire import SLOT_S, TRADING_PURPOSE, MeterReport, TradeOrder
from kyojo.keys import load_keys

S = 1_782_691_200  # a slot start (2026-06-29 00:00 UTC), a multiple of 30 minutes
GW = "gw-trade"


def _meter_reports(conn: Any) -> list[MeterReport]:
    rows = conn.execute("SELECT payload FROM outbox WHERE topic LIKE '%/trade/meter' ORDER BY seq").fetchall()
    return [MeterReport.model_validate_json(bytes(r[0])) for r in rows]


def test_the_agent_reports_what_its_meter_sold_over_a_slot_it_offered_in(tmp_path: Path) -> None:
    site = SiteMeter()

    async def main(port: str) -> dict[str, Any]:
        config = AgentConfig.model_validate(
            {
                "gateway": {"id": GW, "data_dir": str(tmp_path)},
                "devices": [
                    {"kind": "bmeter", "id": "h-meter", "household": GW, "rbid": RBID, "password": PWD,
                     "serial_port": port, "scan_durations": [4], "poll_interval": 60, "export": True},
                ],
                "trading": {"meter": "h-meter"},
            }
        )  # fmt: skip
        clock = StepClock(S - 600.0)
        agent = Agent(config, clock=clock)
        meters = agent.trade_meters
        assert meters is not None
        keys = load_keys(tmp_path)
        given = datetime.fromtimestamp(S - 7200, tz=UTC)
        c = consent.open_store(config, agent.conn).grant(TRADING_PURPOSE, GW, now=given)
        offer = trading.order(keys, GW, "offer", "o1", slot=S, wh=900, price=17, now=given)
        trading.queue(agent.conn, GW, offer, consent=c.id, now_ms=int(given.timestamp() * 1000))
        tasks = [asyncio.create_task(agent._run_driver(d)) for d in agent.drivers]
        try:
            t = S - 600.0
            while t < S + 2 * SLOT_S + 300:
                # a minute of the site: 2 kW sold during the traded slot, 500 W bought outside it
                site.add(-2000.0 if S <= t < S + SLOT_S else 500.0, 60.0)
                t += 60.0
                await clock.advance_to(t)
                # wait on state: the Get at t reached the agent (no event marks a reading; poll what it changes)
                while (meters._last.get("export") or (0.0, 0.0))[0] < t:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                agent.flush()
            return {"status": agent.status(), "reports": _meter_reports(agent.conn), "keys": keys, "conn": agent.conn}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with PtyEmulator(Scenario(), model=site) as emu:
        out = asyncio.run(asyncio.wait_for(main(emu.path), 120))
    conn = out["conn"]
    try:
        (report,) = out["reports"]  # the traded slot only; the next one was not traded
        assert (report.slot, report.direction, report.account) == (S, "export", trading.account(out["keys"], GW))
        assert abs(report.wh - 1000) <= 10  # 2 kW for 30 minutes, in the register's 10 Wh steps
        assert ed25519_ok(out["keys"].purpose_public_key_b64(TRADING_PURPOSE), report.signing_bytes(), report.sig)
        released = [e.body for e in audit.entries(conn) if e.kind == "release"]
        assert [r["events"] for r in released] == [["trade.order"], ["trade.meter"]]  # in the household's log
        assert out["status"]["trading"] == {"meter": "h-meter", "reported": 1, "gave_up": 0, "no_consent": 0,
                                            "gaps": 0, "offered": 0}  # fmt: skip
        assert conn.execute("SELECT state, wh FROM trade_slots").fetchall() == [("reported", report.wh)]
    finally:
        conn.close()


def _reading(ts: float, wh: float, device: str = "m-export") -> Reading:
    return Reading(device=device, subject="h", metric="energy", value=wh, unit="Wh", ts=ts)


def test_a_slot_the_meter_did_not_cover_is_given_up_and_nothing_goes_without_consent(tmp_path: Path) -> None:
    cfg = AgentConfig.model_validate({"gateway": {"id": GW, "data_dir": str(tmp_path)}})
    conn = connect(cfg.db_path)
    keys = load_keys(tmp_path)
    given = datetime.fromtimestamp(S - 7200, tz=UTC)
    store = consent.open_store(cfg, conn)
    c = store.grant(TRADING_PURPOSE, GW, now=given)
    for n in (0, 1):  # offers in two slots
        trading.queue(conn, GW, trading.order(keys, GW, "offer", f"o{n}", slot=S + n * SLOT_S, wh=500, price=17,
                                              now=given), consent=c.id, now_ms=0)  # fmt: skip
    meters = SlotMeters("m")
    # slot 0 covered (readings around both boundaries); slot 1's end falls in a 20-minute gap
    for ts, wh in ((S - 30, 100.0), (S + 30, 110.0), (S + SLOT_S - 30, 600.0), (S + SLOT_S + 30, 610.0),
                   (S + 2 * SLOT_S - 600, 900.0), (S + 2 * SLOT_S + 600, 1000.0)):  # fmt: skip
        meters.observe(_reading(ts, wh))
    assert meters.at["export"][S] == 105.0 and meters.at["export"][S + SLOT_S] == 605.0  # interpolated
    assert S + 2 * SLOT_S not in meters.at["export"] and meters.counts["gaps"] == 1
    assert meters.due(conn, GW, keys, S + SLOT_S + 60) == 0  # not yet: the slot just ended
    assert meters.due(conn, GW, keys, S + 2 * SLOT_S + 700) == 1  # slot 0: 500 Wh; slot 1 waits for its boundary
    assert [(r.slot, r.wh) for r in _meter_reports(conn)] == [(S, 500)]
    assert meters.due(conn, GW, keys, S + 2 * SLOT_S + GIVE_UP_S + 1) == 0  # given up, not guessed
    assert meters.counts["gave_up"] == 1

    # a withdrawn consent: the next traded slot is closed without a report
    trading.queue(conn, GW, trading.order(keys, GW, "bid", "b2", slot=S + 4 * SLOT_S, wh=500, price=30, now=given),
                  consent=c.id, now_ms=0)  # fmt: skip
    store.withdraw(c.id, now=given + timedelta(hours=1))
    assert _meter_reports(conn) == []  # the withdrawal also dropped the report still waiting to be sent
    meters.observe(_reading(S + 4 * SLOT_S, 0.0, "m"))
    meters.observe(_reading(S + 5 * SLOT_S, 400.0, "m"))
    assert meters.due(conn, GW, keys, S + 5 * SLOT_S + 300) == 0
    assert meters.counts["no_consent"] == 1 and _meter_reports(conn) == []
    states = conn.execute("SELECT slot, direction, state FROM trade_slots ORDER BY slot").fetchall()
    assert states == [(S, "export", "reported"), (S + SLOT_S, "export", "gave_up"),
                      (S + 4 * SLOT_S, "import", "no_consent")]  # fmt: skip
    conn.close()


def test_the_gateway_offers_what_its_own_history_says_it_will_surely_sell(tmp_path: Path) -> None:
    """``[trading] offer_price``: an hour before a slot, the gateway offers the lower quartile of what it exported in
    that half hour over the last week (x offer_share), once, only after the household joined, never with less than
    three days measured; the history it forecasts from never leaves the gateway."""
    cfg = AgentConfig.model_validate({"gateway": {"id": GW, "data_dir": str(tmp_path)}})
    conn = connect(cfg.db_path)
    keys = load_keys(tmp_path)
    target = S + 20 * SLOT_S  # 10:00 UTC
    given = datetime.fromtimestamp(target - 9 * 86_400, tz=UTC)
    c = consent.open_store(cfg, conn).grant(TRADING_PURPOSE, GW, now=given)
    meters = SlotMeters("m")
    exported = {1: 800, 2: 900, 3: 1000, 4: 400, 5: 1200, 6: 950, 7: 1100}  # days before -> Wh in that half hour
    total = 0.0
    for day in sorted(exported, reverse=True):
        start = target - day * 86_400
        meters.observe(_reading(start - 300, total))  # a reading every 5 minutes, from before the half hour
        for k in range(7):
            meters.observe(_reading(start + 300 * k, total + exported[day] * k / 6))
        total += exported[day]
        meters.record(conn, start + SLOT_S)
        if day == 6:  # two days measured: not enough to offer on
            assert meters.forecast(conn, target) is None
    assert meters.forecast(conn, target) == 800  # lower quartile of 400, 800, 900, 950, 1000, 1100, 1200
    topics = [r[0] for r in conn.execute("SELECT topic FROM outbox")]
    assert all("/consent/" in t for t in topics), topics  # only the consent record: the history stays home

    now = target - 3600
    kw: dict[str, Any] = {"price": 18, "share": 0.8, "ahead": 3600.0}
    assert meters.offers(conn, GW, keys, now, **kw) == 0  # not joined yet
    join = trading.enrollment(keys, GW, trading.consent_of(keys, GW, c), now=datetime.fromtimestamp(now, tz=UTC))
    trading.queue(conn, GW, join, consent=c.id, now_ms=int(now * 1000))
    assert meters.offers(conn, GW, keys, now, **kw) == 1
    assert meters.offers(conn, GW, keys, now + 30, **kw) == 0  # once per slot
    assert meters.offers(conn, GW, keys, now + 600, **kw) == 0  # not the slot's first minute: no late offer
    rows = conn.execute("SELECT payload FROM outbox WHERE topic LIKE '%/trade/order'").fetchall()
    (offer,) = [TradeOrder.model_validate_json(bytes(r[0])) for r in rows]
    assert (offer.kind, offer.slot, offer.wh, offer.price) == ("offer", target, 640, 18)
    assert ed25519_ok(keys.purpose_public_key_b64(TRADING_PURPOSE), offer.signing_bytes(), offer.sig)
    assert conn.execute("SELECT state FROM trade_slots WHERE slot = ?", (target,)).fetchall() == [("open",)]
    conn.close()

"""drivers.counter.MonotonicCounter: roll-over, reset, re-read and glitch told apart (issue 22, item 1)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.counter import CounterError, MonotonicCounter
from drivers.meter.echonet import CONTROLLER, ESV, SMART_METER, Frame, Property
from drivers.meter.smartmeter import MeterDecoder
from drivers.plugs.mqtt import PlugsDriver
from drivers.plugs.session import PlugSession
from edge_agent.agent import Agent
from kyojo.contract.vocab import MAX_POWER_W, METRICS, KyojoError, plausible_delta
from tests.agentkit import T0, agent_config


def _res(tid: int, *props: tuple[int, bytes]) -> Frame:
    return Frame(tid, SMART_METER, CONTROLLER, ESV.GET_RES, tuple(Property(e, v) for e, v in props))


def test_demo_spike_one_lower_reading_is_not_a_rollover() -> None:
    """The demo's meter (0xE1 = 0.01 kWh, 0xD7 = 8 digits: wraps at 10**8 counts = 1 GWh) read every 10 s:
    one reading a count lower than the one before made the whole-home counter jump by 1,000,000,000 Wh."""
    dec = MeterDecoder("home1-meter", "home1")
    dec.readings(_res(1, (0xD3, (1).to_bytes(4, "big")), (0xD7, b"\x08"), (0xE1, b"\x02")), 0.0)
    counts = (1_888_000, 1_888_001, 1_888_000, 1_888_002, 1_888_003)
    energy: list[float] = []
    for i, count in enumerate(counts):
        energy += [r.value for r in dec.readings(_res(2 + i, (0xE0, count.to_bytes(4, "big"))), 10.0 * (i + 1))]
    assert energy[0] == 18_880_000.0  # 18.88 MWh
    assert max(energy) == 18_880_030.0  # 30 Wh more, not 1 GWh more
    assert all(b >= a for a, b in itertools.pairwise(energy))


# ---------------------------------------------------------------------------------------------------------
# one test per cause (a plug-like counter in Wh: 6 kW ceiling, so 100 Wh per minute at most)
# ---------------------------------------------------------------------------------------------------------

PLUG_RATE = MAX_POWER_W["plug"] / 3600.0  # Wh/s


def plug(**kw: Any) -> MonotonicCounter:
    return MonotonicCounter(max_rate=PLUG_RATE, **kw)


def feed(c: MonotonicCounter, seq: list[tuple[float, float]]) -> list[tuple[float, bool]]:
    """(value, held) after each (ts, raw)."""
    return [(c.update(raw, ts), c.held) for ts, raw in seq]


def test_rollover_near_modulus_at_a_plausible_rate() -> None:
    c = MonotonicCounter(modulus=100_000, max_rate=MAX_POWER_W["meter"] / 3600.0, slack=1.0)
    out = feed(c, [(0, 99_900), (60, 99_990), (120, 40), (180, 100)])
    assert out == [(99_900, False), (99_990, False), (100_040, False), (100_100, False)]
    assert c.causes == {"rollover": 1} and c.resets == 1


def test_rollover_refused_when_the_implied_delta_is_too_fast() -> None:
    """99,000 -> 50 through the wrap is 1,050 Wh: a meter cannot deliver that in 10 s (100 kW: 278 Wh)."""
    c = MonotonicCounter(modulus=100_000, max_rate=MAX_POWER_W["meter"] / 3600.0, slack=1.0, can_reset=False)
    out = feed(c, [(0, 99_000), (10, 50)])
    assert out == [(99_000, False), (99_000, True)] and c.causes == {"backwards": 1}


def test_small_step_back_far_from_the_modulus_is_held_not_a_rollover() -> None:
    """The demo's class of bug without a timestamp: only the RFC 1982 order is left, and it says 'earlier'."""
    c = MonotonicCounter(modulus=10**8)
    assert [c.update(v) for v in (1_888_000, 1_888_001, 1_888_000, 1_888_002)] == [
        1_888_000, 1_888_001, 1_888_001, 1_888_002,
    ]  # fmt: skip
    assert c.causes == {"backwards": 1} and c.resets == 0


def test_reset_to_near_zero_counts_what_was_counted_since() -> None:
    """Shelly Gen1 reboot: 150 Wh, then 5 Wh a minute later. The 5 Wh are added; whatever the plug used between
    its last report and the reboot is lost (documented)."""
    c = plug()
    out = feed(c, [(0, 100), (60, 150), (120, 5), (180, 20)])
    assert out == [(100, False), (150, False), (155, False), (170, False)]
    assert c.causes == {"reset": 1}


def test_drop_not_near_zero_is_held() -> None:
    """1,000 -> 400 Wh: not a reset (a plug cannot have counted 400 Wh within the 10 s since), and held."""
    c = plug()
    assert feed(c, [(0, 1000), (10, 400), (20, 1005)]) == [(1000, False), (1000, True), (1005, False)]
    assert c.causes == {"backwards": 1}


def test_meter_register_never_resets() -> None:
    c = MonotonicCounter(modulus=10**8, max_rate=MAX_POWER_W["meter"] / 3600.0, slack=1.0, can_reset=False)
    assert feed(c, [(0, 500), (10, 1), (20, 501)]) == [(500, False), (500, True), (501, False)]
    assert c.causes == {"backwards": 1}


def test_wild_jump_is_held_and_the_next_true_reading_counts() -> None:
    c = plug()
    out = feed(c, [(0, 100), (60, 1e9), (120, 150)])
    assert out == [(100, False), (100, True), (150, False)] and c.causes == {"jump": 1}


def test_rate_ceiling_is_physical() -> None:
    """6 kW for 60 s is 100 Wh: 100 Wh passes, 101 Wh is a jump (slack 0)."""
    assert feed(plug(), [(0, 0), (60, 100)])[-1] == (100, False)
    c = plug()
    assert feed(c, [(0, 0), (60, 101)])[-1] == (0, True) and c.causes == {"jump": 1}


def test_persistent_decrease_becomes_the_base_without_adding_energy() -> None:
    """A counter that restarted at 500 Wh (a replaced plug with its own history): three readings that agree are
    a new base; the value does not move at the switch and then follows the new counter."""
    c = plug()
    out = feed(c, [(0, 2000), (60, 500), (120, 510), (180, 520), (240, 530)])
    assert out == [(2000, False), (2000, True), (2000, True), (2000, False), (2010, False)]
    assert c.causes == {"backwards": 3, "rebased": 1}


def test_persistent_jump_becomes_the_base_and_restores_with_negative_offset() -> None:
    c = plug()
    feed(c, [(0, 100), (60, 90_000), (120, 90_050), (180, 90_090)])
    assert c.value == 100 and c.causes == {"jump": 3, "rebased": 1} and c.offset < 0
    d = plug()
    d.restore(c.to_dict())
    assert d.update(90_100, 240) == c.update(90_100, 240) == 110


def test_interleaved_glitches_do_not_confirm_each_other() -> None:
    """Held readings that do not agree with each other (a re-read, then a wild value) start over."""
    c = plug()
    out = feed(c, [(0, 1000), (60, 990), (120, 1e7), (180, 980), (240, 1050)])
    assert [v for v, _ in out] == [1000, 1000, 1000, 1000, 1050]
    assert c.causes == {"backwards": 2, "jump": 1}


def test_noise_within_tolerance_is_held_silently() -> None:
    c = MonotonicCounter(tolerance=0.5)
    assert [c.update(v) for v in (10.0, 9.7, 10.2)] == [10.0, 10.0, 10.2] and c.causes == {}


def test_reading_stamped_earlier_does_not_widen_the_bound() -> None:
    """A reading stamped before the base (clock step, reordering) moves the base's time neither way."""
    c = plug()
    feed(c, [(100, 0), (50, 0)])
    assert c.last_ts == 100
    assert feed(c, [(110, 50)]) == [(0, True)]  # 50 Wh in 10 s is 18 kW


def test_invalid_raw_is_a_typed_error_and_counted() -> None:
    c = plug()
    c.update(5, 0)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(CounterError) as err:
            c.update(bad, 1)
        assert isinstance(err.value, KyojoError) and err.value.reason == "counter_invalid"
    assert c.causes == {"invalid": 3} and c.value == 5


def test_old_saved_state_restores_with_defaults_and_new_state_roundtrips() -> None:
    old = {"last_raw": 50.0, "offset": 10.0, "resets": 1}  # what the counter saved before issue 22
    c = plug()
    c.restore(old)
    assert (c.value, c.last_ts, c.causes) == (60.0, None, {})
    assert c.update(55.0, 1000.0) == 65.0  # no time yet: the first step is not rate-checked
    c.update(1e6, 1001.0)
    d = plug()
    d.restore(json.loads(json.dumps(c.to_dict())))
    assert (d.value, d.last_ts, d.causes, d.resets) == (65.0, 1000.0, {"jump": 1}, 1)
    d.restore({"last_raw": "x", "offset": math.nan, "causes": {"jump": True, "bogus": 3}, "last_ts": None})
    assert (d.value, d.causes) == (65.0, {})


def test_plausible_delta_uses_the_metric_ceiling() -> None:
    assert METRICS["energy"].max_rate == pytest.approx(100_000 / 3600)
    assert plausible_delta("energy", 1_666.0, 60) and not plausible_delta("energy", 1_668.0, 60)
    assert plausible_delta("ev_energy", 8_000.0, 60) and not plausible_delta("ev_energy", 8_400.0, 60)
    assert not plausible_delta("energy", -1.0, 60) and not plausible_delta("energy", math.nan, 60)
    assert not plausible_delta("energy", 1.0, -1) and not plausible_delta("nope", 1.0, 60)
    assert plausible_delta("energy", 0.0, 0) and not plausible_delta("energy", 1e9, 10)  # the demo's 1 GWh
    assert plausible_delta("heart_rate", 5.0, 1)  # a gauge has no ceiling


# ---------------------------------------------------------------------------------------------------------
# properties over random histories
# ---------------------------------------------------------------------------------------------------------

METER_RATE = MAX_POWER_W["meter"] / 3600.0  # Wh/s
MODULUS = 100_000  # Wh: small enough that a history wraps several times


@st.composite
def histories(draw: st.DrawFn, meter: bool) -> tuple[list[tuple[float, float]], float]:
    """A device counting real energy, as (ts, raw) readings, and what it really counted (the oracle).

    Each step lasts 1-600 s and delivers an integer number of Wh the supply can deliver in that time. A plug
    may reset during a step (``e_pre`` counted before the reset is lost, ``e_post`` after it is the new raw
    value); the meter's register wraps at ``MODULUS`` instead and never resets. Between two true readings at
    most one glitch is inserted: a re-read (an earlier value of the same epoch, i.e. since the last wrap or
    reset), a wild value, or two answers arriving together in the wrong order. Left out, because no rule can
    tell it from a reset: a stale plug value below half of the current one (the first doubling after a reset).
    """
    rate = METER_RATE if meter else PLUG_RATE
    t = 1_700_000_000.0
    raw = draw(st.integers(MODULUS - 30_000, MODULUS - 1)) if meter else draw(st.integers(0, 50_000))
    true = [(t, raw)]
    epoch = [0]  # epoch id per true reading: a wrap or reset starts a new one
    counted = 0
    for _ in range(draw(st.integers(1, 30))):
        dt = draw(st.integers(1, 600))
        e = draw(st.integers(0, math.floor(rate * dt)))
        t += dt
        new_epoch = epoch[-1]
        if meter:
            if raw + e >= MODULUS:
                new_epoch += 1
            raw = (raw + e) % MODULUS
            counted += e
        else:
            e_post = draw(st.integers(0, e))
            if draw(st.booleans()) and draw(st.booleans()) and raw > 2 * e_post:
                raw, counted, new_epoch = e_post, counted + e_post, new_epoch + 1  # e - e_post is lost
            else:
                raw, counted = raw + e, counted + e
        true.append((t, raw))
        epoch.append(new_epoch)
    out: list[tuple[float, float]] = [true[0]]
    i = 1
    while i < len(true):
        kind = draw(st.sampled_from(("none", "none", "reread", "wild", "swap")))
        ts, cur = out[-1]
        same = [r for (_, r), ep in zip(true[:i], epoch[:i], strict=True) if ep == epoch[i - 1]][-3:]
        if kind == "reread" and i > 1:
            g = draw(st.sampled_from(same))
            if meter or g >= cur / 2:
                out.append((ts, g))
        elif kind == "wild":
            x = (
                draw(st.integers(math.floor(rate * 600) + 1, MODULUS // 2 - 1))
                if meter
                else draw(st.integers(10**6, 10**9))
            )
            out.append((ts, (cur + x) % MODULUS if meter else cur + x))
        elif kind == "swap" and i + 1 < len(true) and epoch[i - 1] == epoch[i] == epoch[i + 1]:
            # two answers in flight arrive together, the later one first: a's slot gets no reading
            (_, a), (tb, b) = true[i], true[i + 1]
            if meter or a >= b / 2:
                out += [(tb, b), (tb, a)]
                i += 2
                continue
        out.append(true[i])
        i += 1
    return out, float(counted)


def counter_for(meter: bool) -> MonotonicCounter:
    if meter:
        return MonotonicCounter(modulus=MODULUS, max_rate=METER_RATE, can_reset=False)
    return MonotonicCounter(max_rate=PLUG_RATE)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.booleans())
def test_true_history_with_isolated_glitches_counts_exactly_the_true_energy(data: st.DataObject, meter: bool) -> None:
    """Roll-overs and resets are followed, every glitch is held: the cumulative value never decreases, never
    grows faster than the supply, and ends at exactly what the device counted (minus the documented loss at a
    reset, which the oracle leaves out)."""
    readings, counted = data.draw(histories(meter))
    c = counter_for(meter)
    out = [c.update(raw, ts) for ts, raw in readings]
    assert all(b >= a for a, b in itertools.pairwise(out))
    t0 = readings[0][0]
    for (ts, _), v in zip(readings, out, strict=True):
        assert v - out[0] <= (METER_RATE if meter else PLUG_RATE) * (ts - t0) + 1e-6
    assert out[-1] - out[0] == pytest.approx(counted, abs=1e-6)
    assert "rebased" not in c.causes


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-100, 600, allow_nan=False), st.floats(0, 2e5, allow_nan=False)), min_size=1, max_size=40
    ),
    st.sampled_from([None, 100_000.0]),
)
def test_any_sequence_never_decreases_and_never_outruns_the_supply(
    steps: list[tuple[float, float]], modulus: float | None
) -> None:
    """Whatever a device sends (garbage included, times that step back), the cumulative value never decreases
    and never grows by more than the ceiling allows for the time elapsed since the first reading."""
    c = MonotonicCounter(modulus=modulus, max_rate=PLUG_RATE)
    t = 1_700_000_000.0
    out: list[tuple[float, float]] = []  # (latest time so far, value)
    for dt, raw in steps:
        t += dt
        try:
            v = c.update(raw, t)
        except CounterError:
            assert modulus is not None and raw >= modulus  # the register cannot hold it
            continue
        out.append((max(t, out[-1][0]) if out else t, v))
    for (_, a), (_, b) in itertools.pairwise(out):
        assert b >= a
    if out:
        t0, v0 = out[0]
        assert all(v - v0 <= PLUG_RATE * (tm - t0) * (1 + 1e-9) + 1e-6 for tm, v in out)


# ---------------------------------------------------------------------------------------------------------
# where the counts show: driver health and `kyojo agent status`
# ---------------------------------------------------------------------------------------------------------


def test_held_plug_reading_is_dropped_and_shows_in_agent_status(tmp_path: Path) -> None:
    """A Tasmota plug re-sends an older Total: no energy reading comes out, and the agent's status file (what
    `kyojo agent status` prints) counts it under the plugs driver and the plug's native key."""
    session = PlugSession("home1", {"tasmota:pow1": "kettle"})
    out: list[float] = []
    for ts, total in ((T0, 6.294), (T0 + 300, 6.404), (T0 + 310, 6.294), (T0 + 600, 6.5)):
        payload = json.dumps({"ENERGY": {"Total": total}}).encode()
        out += [r.value for r in session.feed("tele/pow1/SENSOR", payload, ts) if r.metric == "energy"]
    assert out == [6294.0, 6404.0, 6500.0]
    agent = Agent(agent_config(tmp_path, 1), drivers=[PlugsDriver("home1-plugs", session)])
    try:
        agent.write_status(tmp_path / "status.json")
    finally:
        agent.conn.close()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counters"] == {"home1-plugs": {"tasmota:pow1": {"backwards": 1}}}

"""AF alerts as a person lives them: the artefact filter, injected strap faults, the burden alert rule, the
person-level evaluation and the alert's event attributes.

Data: the excerpts of ``tests/data/rr`` (see its README; they are training records of the committed model, so
these tests check behaviour and robustness, not generalisation: that is ``kyojo models eval af --loro``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edge_agent.processors.health import Config, HealthProcessor, alert_event, feed_af
from kyojo.contract.vocab import Reading, reading
from models.af import AfModel, AfMonitor, evaluate, load_dir, load_record
from models.af.alerting import AlertRule, BurdenRule
from models.af.artefacts import Injection, RrCleaner, clean_record, inject
from models.af.cli import register
from models.af.data import Record
from models.af.episodes import af_runs, evaluate_record, replay, runtime_windows, score_record
from models.af.evaluate import evaluate_episodes
from tests import kit

DATA = kit.DATA / "rr"
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def model() -> AfModel:
    return AfModel()


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return load_dir(DATA)


def as_readings(rr_ms: np.ndarray, t_s: np.ndarray, person: str = "x") -> list[Reading]:
    return [reading("strap", person, "rr_interval", float(v), T0 + float(t)) for v, t in zip(rr_ms, t_s, strict=True)]


# ---- the artefact filter ---------------------------------------------------------------------------------------
def _sinus(n: int = 200, rr: float = 800.0) -> tuple[list[float], list[float]]:
    rrs = [rr + 20.0 * math.sin(i / 3.0) for i in range(n)]
    t = np.cumsum(rrs) / 1000.0
    return t.tolist(), rrs


def test_cleaner_rejects_values_outside_physiology_and_counts_them() -> None:
    c = RrCleaner()
    t, rr = _sinus(40)
    out: list[tuple[float, float, str]] = []
    for i, (a, b) in enumerate(zip(t, rr, strict=True)):
        out += c.push(a, b)
        if i == 10:
            for bad in (math.nan, -800.0, 0.0, 65535.0, math.inf):
                out += c.push(a + 0.01, bad)
            out += c.push(a - 5.0, 800.0)  # time going backwards
    out += c.flush()
    assert c.counts.rejected == 6 and c.counts.beats_in == 46
    assert len(out) == 40 and all(250.0 <= b <= 2500.0 for _, b, _ in out)


def test_cleaner_merges_an_extra_detection_and_splits_a_missed_beat() -> None:
    t, rr = _sinus(60)
    # an extra detection 30 % into beat 20's interval; beat 40 missed (its interval joins beat 41's)
    t2 = [*t[:20], t[20] - rr[20] * 0.7 / 1000.0, *t[20:40], *t[41:]]
    rr2 = [*rr[:20], rr[20] * 0.3, rr[20] * 0.7, *rr[21:40], rr[40] + rr[41], *rr[42:]]
    c = RrCleaner()
    out = [b for a, r in zip(t2, rr2, strict=True) for b in c.push(a, r)] + c.flush()
    assert (c.counts.merged, c.counts.split, c.counts.rejected) == (1, 1, 0)
    got = np.array([r for _, r, _ in out])
    assert got.shape == (60,) and np.allclose(got[:40], rr[:40]) and np.abs(got[40:42] - 800).max() < 60


def test_cleaner_leaves_a_real_rate_change_alone() -> None:
    """A sudden halving of the rate (2:1 block) is split at most MAX_CORRECTIONS times, then followed."""
    _t, rr = _sinus(30)
    rr2 = rr + [1600.0] * 40
    t2 = np.cumsum(rr2) / 1000.0
    c = RrCleaner()
    out = [b for a, r in zip(t2.tolist(), rr2, strict=True) for b in c.push(a, r)] + c.flush()
    assert c.counts.split <= 2 and [r for _, r, _ in out][-20:] == [1600.0] * 20


def test_premature_beats_with_compensatory_pause_are_not_merged() -> None:
    _t, rr = _sinus(100)
    for i in range(10, 90, 4):  # frequent atrial premature beats: 65 % then 135 % of the cycle
        rr[i], rr[i + 1] = 520.0, 1080.0
    tt = (np.cumsum(rr) / 1000.0).tolist()
    c = RrCleaner()
    for a, r in zip(tt, rr, strict=True):
        c.push(a, r)
    assert c.counts.merged == 0 and c.counts.split == 0


# ---- injected strap faults on real data (the 1 %, 3 %, 5 %) -----------------------------------------------
def _window_rates(model: AfModel, recs: list[Record]) -> tuple[float, float]:
    m = evaluate(recs, model).pooled
    return m.sensitivity, m.specificity


#: Largest mean drop (over 3 seeds) of window sensitivity / specificity allowed at each injected rate, on the
#: excerpts' 99 windows (40 AF, 59 non-AF: one non-AF window is 1.7 points). Measured with the committed model:
#: at most 0.9 / 4.5 points at 1 %, 0.9 / 6.2 at 3 %, 0 / 6.8 at 5 % (the full leave-one-record-out run with 3 %
#: missed + 3 % spurious moves them by 0.8 / 0.9 points: MODEL_CARD.md).
MAX_DROP = {0.01: (0.03, 0.06), 0.03: (0.03, 0.08), 0.05: (0.05, 0.10)}


@pytest.mark.parametrize("kind", ["missed", "spurious", "nonphysio"])
def test_injected_faults_change_window_figures_and_alerts_little(
    model: AfModel, records: list[Record], kind: str
) -> None:
    """The issue's rates (1 %, 3 %, 5 % of beats) of one fault kind on the real excerpts: window figures move
    within MAX_DROP, the AF excerpt still alerts and the sinus and flutter excerpts stay quiet."""
    base_sens, base_spec = _window_rates(model, records)
    for rate in (0.01, 0.03, 0.05):
        drops = []
        for seed in range(3):
            hit = [inject(r, Injection(**{kind: rate}), seed=seed) for r in records]
            changed = [
                len(h.rr_ms) != len(r.rr_ms) or not np.array_equal(h.rr_ms, r.rr_ms, equal_nan=True)
                for h, r in zip(hit, records, strict=True)
            ]
            assert all(changed)  # every excerpt really got faults
            sens, spec = _window_rates(model, hit)
            drops.append((base_sens - sens, base_spec - spec))
            alerts = {h.name: AfMonitor(model).push_series(h.name, T0 + h.t_s, h.rr_ms) for h in hit}
            assert alerts["08219"] and not alerts["04015"] and not alerts["08378"], (kind, rate, seed)
        d_sens, d_spec = np.mean(drops, axis=0)
        assert d_sens <= MAX_DROP[rate][0] and d_spec <= MAX_DROP[rate][1], (kind, rate, d_sens, d_spec)


def test_the_filter_is_what_makes_3_percent_missed_and_spurious_harmless(model: AfModel, records: list[Record]) -> None:
    """With 3 % missed + 3 % spurious beats, the filtered windows keep the clean figures within 2 points on the
    sinus excerpt and detect the AF one; without the filter (features on the faulty beats directly), the sinus
    excerpt's windows become more irregular-looking (higher mean P(AF))."""
    from models.af.features import batch_features

    faults = Injection(missed=0.03, spurious=0.03)
    sinus = load_record(DATA / "afdb_04015.csv")
    hit = inject(sinus, faults, seed=3)
    cleaned, counts = clean_record(hit)
    assert counts.merged + counts.split + counts.rejected >= 20
    raw_w, clean_w = runtime_windows(hit), runtime_windows(cleaned)
    p_raw = model.scores(batch_features(raw_w.rr)[0])
    p_clean = model.scores(batch_features(clean_w.rr)[0])
    p_ref = model.scores(batch_features(runtime_windows(clean_record(sinus)[0]).rr)[0])
    assert p_clean.mean() < p_raw.mean()
    assert abs(p_clean.mean() - p_ref.mean()) < abs(p_raw.mean() - p_ref.mean())
    assert (p_clean >= model.threshold).mean() <= (p_ref >= model.threshold).mean() + 0.02
    af = load_record(DATA / "afdb_08219.csv")
    assert AfMonitor(model).push_series("x", T0 + inject(af, faults, seed=3).t_s, inject(af, faults, seed=3).rr_ms)


def test_strap_gaps_and_garbage_do_not_crash_and_sinus_stays_quiet(model: AfModel) -> None:
    sinus = load_record(DATA / "afdb_04015.csv")
    hit = inject(sinus, Injection(missed=0.05, spurious=0.05, nonphysio=0.05, gaps_per_hour=30, gap_s=30), seed=1)
    assert np.isnan(hit.rr_ms).any() and (np.diff(hit.t_s) > 20).any()
    mon = AfMonitor(model)
    assert mon.push_series("x", T0 + hit.t_s, hit.rr_ms) == []
    assert mon.artefacts.rejected > 0 and mon.artefacts.gaps > 0 and mon.windows > 0


# ---- the alert rule ----------------------------------------------------------------------------------------------
def _decisions(pattern: str, step_s: float = 30.0, t0: float = T0) -> tuple[list[float], list[float], list[bool]]:
    """One decision per character ('A' = AF window, '.' = not), every ``step_s``, windows of 60 s."""
    ends = [t0 + (i + 1) * step_s for i in range(len(pattern))]
    return [e - 60.0 for e in ends], ends, [c == "A" for c in pattern]


RULE = AlertRule(
    window_s=600.0, on_burden=0.7, confirm=3, min_decisions=10, clear_s=600.0, off_burden=0.2, refractory_s=1800.0
)


def test_isolated_irregular_windows_never_alert() -> None:
    # one AF-looking window in four, all day: burden 25 %
    assert replay(RULE, *_decisions("A..." * 2880)) == []
    # bursts of 5 AF windows every 20 min: the confirmation count is met, the 10-min burden is not
    assert replay(RULE, *_decisions(("AAAAA" + "." * 35) * 72)) == []


def test_sustained_af_gives_one_alert_with_start_end_and_burden() -> None:
    ups = replay(RULE, *_decisions("." * 40 + "A" * 120 + "." * 60))
    assert [u.end is None for u in ups] == [True, False]
    opened, closed = ups
    assert opened.start == pytest.approx(T0 + 41 * 30 - 60)  # first AF window's start
    assert opened.raised - opened.start <= 600.0  # within 10 min
    assert closed.end == pytest.approx(T0 + 160 * 30)  # end of the last AF window
    assert closed.burden == pytest.approx(1.0) and closed.windows >= 100


def test_a_recurrence_within_the_refractory_period_is_the_same_alert() -> None:
    ups = replay(RULE, *_decisions("A" * 60 + "." * 40 + "A" * 60 + "." * 200 + "A" * 60))
    ids = [u.alert_start for u in ups]
    assert len(ups) == 5 and ups[2].reopened and len(set(ids)) == 2  # the third paroxysm is 100 min later


def test_a_strap_off_period_closes_the_alert_at_its_last_af_window() -> None:
    r = BurdenRule(RULE)
    ups = []
    for s, e, a in zip(*_decisions("A" * 40), strict=True):
        ups += r.step(e, s, a)
    ups += r.step(T0 + 40 * 30 + 3600, T0 + 40 * 30 + 3540, False)  # back an hour later
    assert ups[-1].end == pytest.approx(T0 + 40 * 30)


# ---- person-level evaluation ---------------------------------------------------------------------------------
def test_person_level_scoring_counts_episodes_delays_and_false_alerts() -> None:
    # 3 h, one beat a second: 1 h sinus, 40 min AF, 80 min sinus
    n = 3 * 3600
    t = np.arange(1, n + 1, dtype=np.float64)
    lab = np.where((t > 3600) & (t <= 3600 + 2400), "AFIB", "N")
    truth = Record("syn", t, np.full(n, 1000.0), lab)
    assert af_runs(truth) == [(3600.0, 6000.0)]
    caught = score_record(truth, replay(RULE, *_decisions("A" * 80, t0=3600.0 - 30.0)), float(n))
    assert (caught.episodes, caught.caught, caught.false_alerts) == (1, 1, 0) and 0 < caught.delays_s[0] <= 600
    false = score_record(truth, replay(RULE, *_decisions("A" * 40 + "." * 40, t0=0.0)), float(n))
    assert (false.false_alerts, false.caught, false.alerts) == (1, 0, 1)
    assert false.as_dict()["false_alerts_per_person_day"] == pytest.approx(1 / ((n - 2400) / 86400), rel=1e-3)


def test_monitor_and_evaluation_replay_agree(model: AfModel) -> None:
    """The evaluation replays the same windows and rule the gateway runs: same alerts, same times."""
    rec = load_record(DATA / "afdb_08219.csv")
    alerts = AfMonitor(model).push_series("x", rec.t_s, rec.rr_ms)
    opened = [a for a in alerts if a.ended is None]
    assert opened

    def score(rr: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        from models.af.features import batch_features

        x, ok = batch_features(rr)
        p = np.full(rr.shape[0], np.nan)
        p[ok] = model.scores(x[ok])
        return p

    w = runtime_windows(clean_record(rec)[0])
    p = score(w.rr)
    ups = replay(model.alert_rule, w.t_start.tolist(), w.t_end.tolist(), (p >= model.threshold).tolist())
    assert [u.start for u in ups if u.end is None] == [a.started for a in opened]
    res = evaluate_record(rec, clean_record(rec)[0], score, model.threshold, model.alert_rule)
    assert res.alerts == len({a.id for a in alerts}) and res.false_alerts == 0


def test_eval_cli_episodes_extends_the_window_keys(model: AfModel) -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None: ...

    plain = json.loads(CliRunner().invoke(app, ["af", "--data", str(DATA)]).stdout)
    res = CliRunner().invoke(app, ["af", "--data", str(DATA), "--episodes", "--per-record"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {k: out[k] for k in plain} == plain  # the window keys are unchanged
    for key in ("episode_sensitivity", "median_detection_delay_s", "false_alerts_per_person_day"):
        assert key in out
    # the excerpts hold no 30-min episode; the AF excerpt alerts (true), the sinus and flutter ones do not
    assert out["af_episodes_30min"] == 0 and out["episode_sensitivity"] is None
    assert out["false_alerts"] == 0 and out["per_record"]["08219"]["alerts"] >= 1
    assert out["per_record"]["04015"]["alerts"] == 0 and out["per_record"]["08378"]["alerts"] == 0
    assert out == {**out, **evaluate_episodes(load_dir(DATA), model, truths=None) | {"per_record": out["per_record"]}}
    bad = CliRunner().invoke(app, ["af", "--data", str(DATA), "--inject", "sideways=0.1"])
    assert bad.exit_code == 2
    hit = json.loads(CliRunner().invoke(app, ["af", "--data", str(DATA), "--inject", "missed=0.03"]).stdout)
    assert hit["injected"] == "missed=0.03" and hit["windows"] != plain["windows"]


# ---- the health processor --------------------------------------------------------------------------------------
def test_health_processor_alert_carries_episode_start_end_and_burden() -> None:
    rec = load_record(DATA / "afdb_08219.csv")
    proc = HealthProcessor(Config(kind="health"))
    events = proc.feed(as_readings(rec.rr_ms, rec.t_s, "p1"))
    af = [e for e in events if e.kind == "alert.atrial_fibrillation"]
    assert af
    attrs = af[0].attrs
    for key in ("alert_id", "level", "state", "message", "started_ms", "episode_start_ms", "episode_end_ms", "burden"):
        assert key in attrs
    assert attrs["state"] == "open" and 0.5 <= float(attrs["burden"]) <= 1.0
    assert int(attrs["episode_start_ms"]) <= int(attrs["episode_end_ms"])
    assert attrs["episode_start_ms"] == attrs["started_ms"]


def test_health_processor_survives_bad_rr_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    proc = HealthProcessor(Config(kind="health"))
    t, rr = _sinus(300)
    readings = as_readings(np.array(rr), np.array(t), "p2")
    bad = [reading("strap", "p2", "rr_interval", v, T0 + t[100] + 0.01) for v in (-800.0, 0.0, 65535.0, 1e12)]
    with caplog.at_level("WARNING"):
        events = proc.feed(readings[:100] + bad + readings[100:])
    assert events == []
    h = proc.health()
    artefacts = h["af_artefacts"]
    assert isinstance(artefacts, dict) and artefacts["rejected"] == 4 and h["af_windows"] == 8
    assert "rejected as artefacts" in caplog.text
    assert feed_af(AfMonitor(), []) == []


def test_alert_event_of_a_rule_alert_has_no_episode_attrs() -> None:
    from models.rules.alert import Alert, Evidence, Severity

    a = Alert(
        "p:fever:1",
        "p",
        "fever",
        Severity.WARNING,
        T0,
        None,
        Evidence("body_temperature", "degC", 1, T0, T0, 38.0, 38.0, 38.0),
        "src",
        "msg",
    )
    assert "burden" not in alert_event(a).attrs


# ---- ectopy ------------------------------------------------------------------------------------------------------
def _with_ectopy(rec: Record, rng: np.random.Generator, frac: float, prem: float, pause: float) -> Record:
    """``rec``'s sinus rhythm with premature beats at random positions (``frac`` of beats; coupling ``prem`` and
    pause ``pause`` of the current cycle: 0.7/1.3 = compensatory, 0.7/1.1 = non-compensatory, atrial)."""
    rr = rec.rr_ms.copy()
    i = 3
    while i < rr.shape[0] - 2:
        if rng.random() < frac:
            c = rr[i]
            rr[i], rr[i + 1] = prem * c * rng.uniform(0.9, 1.1), pause * c * rng.uniform(0.97, 1.03)
            i += 2
        else:
            i += 1
    return Record(rec.name, rec.t_s[0] + np.cumsum(rr) / 1000.0, rr, rec.rhythm)


@pytest.mark.parametrize(("frac", "prem", "pause"), [(0.1, 0.7, 1.3), (0.3, 0.7, 1.1), (0.2, 0.85, 1.05)])
def test_frequent_premature_beats_are_not_called_af(model: AfModel, frac: float, prem: float, pause: float) -> None:
    """Up to 30 % premature beats (ventricular with compensatory pause, atrial without) in the sinus excerpt: no
    alert and at most 5 % of windows called AF (the ectopy feature ``frac_compensated`` and the alert rule)."""
    rec = _with_ectopy(load_record(DATA / "afdb_04015.csv"), np.random.default_rng(0), frac, prem, pause)
    assert np.mean(np.abs(np.diff(rec.rr_ms)) > 100) > frac  # the ectopy is really there
    p = evaluate([rec], model).pooled
    assert p.specificity >= 0.95
    assert AfMonitor(model).push_series("x", T0 + rec.t_s, rec.rr_ms) == []


def test_the_af_alert_event_fits_the_wire_contract() -> None:
    """The added attributes keep the event valid for the cloud (attribute names, count and value types)."""
    from kyojo.contract.wire import EventItem

    rec = load_record(DATA / "afdb_08219.csv")
    events = HealthProcessor(Config(kind="health")).feed(as_readings(rec.rr_ms, rec.t_s, "p1"))
    assert events
    for e in events:
        item = EventItem(
            id=e.id,
            kind=e.kind,
            subject=e.subject,
            device=e.device,
            at=int(e.ts * 1000),
            severity=e.severity,
            attrs=dict(e.attrs),
        )
        assert item.attrs["burden"] == e.attrs["burden"]


def test_the_rule_is_chosen_for_fewest_errors_then_the_slowest_within_the_delay_budget(model: AfModel) -> None:
    """models.af.loro.choose_rule (what every LORO fold and train.py run on out-of-fold scores; no scikit-learn
    needed here): when the sinus excerpt looks like 3 AF windows in every 4, the rules that would alert on it
    (confirmation 3 and on-burden <= 0.7) are not chosen."""
    from models.af.loro import DELAY_BUDGET_S, RULE_GRID, choose_rule, prepare

    preps = [prepare(r) for r in load_dir(DATA)]
    scores = [np.where(p.ok, model.scores(p.x), 0.0) for p in preps]
    sinus = next(i for i, p in enumerate(preps) if p.truth.name == "04015")
    scores[sinus] = np.where(np.arange(scores[sinus].shape[0]) % 4 == 3, 0.0, 0.99)
    naive = replay(
        RULE,
        preps[sinus].windows.t_start.tolist(),
        preps[sinus].windows.t_end.tolist(),
        (scores[sinus] >= model.threshold).tolist(),
    )
    assert naive  # the pattern does fool a confirm-3 / 70 % rule
    rule, figs = choose_rule(preps, scores, model.threshold)
    assert rule in RULE_GRID and figs["false_alerts"] == 0
    assert rule.confirm > 3 or rule.on_burden > 0.75
    delay = figs["median_detection_delay_s"]
    assert delay is None or (isinstance(delay, float) and delay <= DELAY_BUDGET_S)

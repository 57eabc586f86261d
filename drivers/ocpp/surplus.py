"""The solar-surplus loop: the smart meter's net power in, a TxProfile per running transaction out, every minute.

The controller reads what the gateway already measures (fed through :meth:`SurplusController.observe`):

- the B-route smart meter's 0xE7 instantaneous power (``power`` of the meter device, W): the *net* power at the
  grid connection, import positive, export negative, **including the car's own draw**; its 0xE0/0xE3 registers
  (``energy`` of ``<meter>`` and ``<meter>-export``) are kept for the status (energy bought and sold meanwhile);
- the charger's MeterValues (``ev_power``, ``current``, ``voltage`` of the transaction): the car's draw, and from
  power / (current x voltage) the number of phases it charges on;
- optionally a plug on the PV inverter (``power`` of ``pv``), for the status only.

The surplus available for the car is ``car power - net grid power`` (:func:`~drivers.ocpp.smart.surplus_for_car`);
:func:`~drivers.ocpp.smart.next_limit` turns it into a limit with the 6 A floor (IEC 61851) and hysteresis, and
:func:`~drivers.ocpp.smart.tx_profile` into an OCPP 1.6 ``TxProfile`` (``chargingRateUnit`` A, ``Relative``: no
reliance on the charger's clock) sent with SetChargingProfile through the gateway's own central system.

Modes (the household's choice): ``surplus-only`` charges only from surplus (pauses without it);
``surplus-minimum`` charges at least at the floor (6 A) and faster with surplus; ``fixed`` charges at
``fixed_current`` whatever the sun does.

Faults and the stated behaviour (each shows in :meth:`SurplusController.status` and is logged once per cause):

- the charger answers Rejected/NotSupported (or a CALLERROR) -> the transaction falls back to ``uncontrolled``:
  no more profiles for it (the charger charges at its own limit), tried again after ``retry_after``;
- the charger accepts but the car keeps drawing above the limit for ``ignore_after`` fresh meter values ->
  ``uncontrolled`` with reason ``ignored`` (same fallback); its draw then counts as house load for the others;
- the meter's last power is older than ``meter_stale`` -> the limit is held (never raised on stale data); older
  than ``meter_timeout`` -> stepped down to the mode's minimum (pause, or the floor in ``surplus-minimum``);
- a transaction that ended (StopTransaction, even while a profile was on its way) -> nothing more is sent to it;
- the charger's clock: never used (Relative schedules, gateway reception times for every freshness check).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.logs import LogLimiter
from drivers.ocpp.smart import SurplusPolicy, fixed_limit, next_limit, phases_from, surplus_for_car, tx_profile
from kyojo.contract.vocab import ID_PATTERN, Clock, Reading

if TYPE_CHECKING:
    from drivers.ocpp.server import CentralSystem

log = logging.getLogger(__name__)


class Mode(StrEnum):
    """What the household chose."""

    SURPLUS_ONLY = "surplus-only"
    SURPLUS_MINIMUM = "surplus-minimum"
    FIXED = "fixed"


class Config(BaseModel):
    """``[ev.surplus]``: the surplus loop between one smart meter and one OCPP central system of this gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field(default=Mode.SURPLUS_ONLY, description="surplus-only, surplus-minimum or fixed")
    ocpp: str = Field(pattern=ID_PATTERN, description="id of the [[devices]] entry of kind ocpp")
    meter: str = Field(pattern=ID_PATTERN, description="device id of the smart meter's power readings")
    charge_point: str | None = Field(default=None, description="only this charger (default: every charger)")
    pv: str | None = Field(default=None, pattern=ID_PATTERN, description="device id of a plug on the PV inverter")
    min_current: float = Field(default=6.0, ge=6.0, le=80.0, description="A per phase; IEC 61851 floor is 6 A")
    max_current: float = Field(default=16.0, ge=6.0, le=80.0, description="A per phase")
    fixed_current: float = Field(default=16.0, ge=0.0, le=80.0, description="A per phase in mode fixed (0 pauses)")
    phases: Literal[1, 3] | None = Field(default=None, description="override; default: from the charger's values")
    voltage: float = Field(default=200.0, ge=90.0, le=260.0, description="V line-to-neutral (Japan: 200 V)")
    hysteresis: float = Field(default=1.0, ge=0.0, le=10.0, description="A: smaller changes are not sent")
    interval: timedelta = Field(default=timedelta(minutes=1), description="cadence of decisions")
    meter_stale: timedelta = Field(default=timedelta(seconds=150), description="older: the limit is held")
    meter_timeout: timedelta = Field(default=timedelta(minutes=5), description="older: stepped down")
    ignore_after: int = Field(default=3, ge=1, le=60, description="fresh values above the limit: ignored")
    retry_after: timedelta = Field(default=timedelta(minutes=15), description="an uncontrolled charger is retried")
    refresh: timedelta = Field(default=timedelta(minutes=15), description="the same limit is sent again")
    sample_interval: bool = Field(
        default=True, description="set the charger's MeterValueSampleInterval to the interval (ChangeConfiguration)"
    )
    response_timeout: timedelta = Field(default=timedelta(seconds=20), description="for SetChargingProfile")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.max_current < self.min_current:
            raise ValueError("max_current must be >= min_current")
        if not timedelta(seconds=10) <= self.interval <= timedelta(minutes=15):
            raise ValueError("interval must be between 10 s and 15 min")
        if self.meter_stale < self.interval:
            raise ValueError("meter_stale must be at least one interval")
        if self.meter_timeout <= self.meter_stale:
            raise ValueError("meter_timeout must be longer than meter_stale")
        return self


#: a car measured this much above its limit (per phase) is not following it (meter tolerance, rounding)
OVER_LIMIT_A = 1.0
#: the car's values must be at least this old after a profile was accepted before they are judged (s): IEC 61851
#: gives the car 5 s to follow a PWM change; a charger's meter averages over its sample interval
JUDGE_AFTER_S = 30.0


@dataclass(slots=True)
class TxControl:
    """The loop's state of one running transaction."""

    tx: int
    charge_point: str
    connector: int
    state: str = "new"  # new | controlled | uncontrolled | offline
    reason: str | None = None
    limit_a: float | None = None  # last limit the charger accepted
    sent_at: float | None = None
    uncontrolled_since: float | None = None
    over: int = 0
    car_w: float | None = None
    car_seen: float | None = None
    car_source: str | None = None  # meter_values | limit (no fresh MeterValues: the limit's power) | None
    judged: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    phases: int | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "charge_point": self.charge_point,
            "connector": self.connector,
            "state": self.state,
            "reason": self.reason,
            "limit_a": self.limit_a,
            "phases": self.phases,
            "car_w": self.car_w,
            "car_source": self.car_source,
            "car_age_s": None if self.car_seen is None else round(now - self.car_seen, 1),
            "counts": dict(self.counts),
        }


class SurplusController:
    """Drives one central system's transactions from one meter (see the module docstring).

    ``central``: returns the running central system (None while it is not listening). ``clock``: the gateway's
    (simulated in tests and the demo); every age is measured on it, at the moment a reading is observed.
    """

    def __init__(self, config: Config, central: Callable[[], CentralSystem | None], clock: Clock) -> None:
        self.config = config
        self._central = central
        self.clock = clock
        self.txs: dict[int, TxControl] = {}
        self.ended: deque[dict[str, Any]] = deque(maxlen=5)
        self.meter_w: float | None = None
        self.meter_seen: float | None = None
        self.pv_w: float | None = None
        self.energy: dict[str, list[float]] = {}  # "import"/"export" -> [first Wh, last Wh]
        self.counts: Counter[str] = Counter()
        self.state = "starting"
        self.surplus_w: float | None = None
        self.steps = 0
        self.last_step: float | None = None
        self._car: dict[int, dict[str, tuple[float, float]]] = {}  # tx -> metric -> (value, seen)
        #: charger -> (the connection it was asked on, its answer to ChangeConfiguration MeterValueSampleInterval)
        self.sampling: dict[str, tuple[float | None, str]] = {}
        self._log = LogLimiter(log, interval=600.0)
        #: set after each observed meter power (tests and the demo wait on it)
        self.meter_event = asyncio.Event()

    # -- input ------------------------------------------------------------------------------------------------

    def observe(self, r: Reading, now: float | None = None) -> None:
        """Take one Reading from the gateway's bus (anything not for the loop is ignored). Never raises."""
        seen = self.clock.now() if now is None else now
        try:
            if not math.isfinite(r.value):
                self.counts["bad_value"] += 1
                return
            if r.device == self.config.meter and r.metric == "power":
                self.meter_w, self.meter_seen = r.value, seen
                self.meter_event.set()
            elif r.metric == "energy" and r.device in (self.config.meter, f"{self.config.meter}-export"):
                key = "import" if r.device == self.config.meter else "export"
                span = self.energy.setdefault(key, [r.value, r.value])
                span[1] = r.value
            elif self.config.pv is not None and r.device == self.config.pv and r.metric == "power":
                self.pv_w = r.value
            elif r.metric in ("ev_power", "current", "voltage") and "transaction" in r.extra:
                tx = int(r.extra["transaction"])
                self._car.setdefault(tx, {})[r.metric] = (r.value, seen)
        except (ValueError, KeyError) as err:  # a transaction id that is not a number: counted, never raised
            self.counts["bad_reading"] += 1
            self._log(logging.WARNING, "bad_reading", "surplus loop: unusable reading %s (%s)", r.device, err)

    # -- decisions --------------------------------------------------------------------------------------------

    def _policy(self, ctl: TxControl) -> SurplusPolicy:
        c = self.config
        voltage = ctl.voltage_v if ctl.voltage_v is not None and 90.0 <= ctl.voltage_v <= 260.0 else c.voltage
        return SurplusPolicy(
            phases=ctl.phases or 1,
            voltage_v=voltage,
            floor_a=c.min_current,
            max_a=c.max_current,
            hysteresis_a=c.hysteresis,
            keep_floor=c.mode is Mode.SURPLUS_MINIMUM,
        )

    def _update_car(self, ctl: TxControl, now: float) -> None:
        values = self._car.get(ctl.tx, {})
        stale = 3 * self.config.interval.total_seconds()
        fresh = {m: v for m, (v, seen) in values.items() if now - seen <= stale}
        if "ev_power" in values:
            ctl.car_w, ctl.car_seen = values["ev_power"]
        ctl.current_a = fresh.get("current")
        ctl.voltage_v = fresh.get("voltage")
        if self.config.phases is not None:
            ctl.phases = self.config.phases
        elif "ev_power" in fresh and ctl.current_a is not None:
            detected = phases_from(fresh["ev_power"], ctl.current_a, ctl.voltage_v or self.config.voltage)
            if detected is not None:
                ctl.phases = detected

    def _car_estimate(self, ctl: TxControl, now: float) -> float:
        """The car's draw (W) for the surplus: its charger's last power when fresh (within three intervals); without
        fresh MeterValues (a charger that sends none, or too seldom), what the accepted limit lets it draw; else 0."""
        fresh = 3 * self.config.interval.total_seconds()
        if ctl.car_w is not None and ctl.car_seen is not None and 0 <= now - ctl.car_seen <= fresh:
            ctl.car_source = "meter_values"
            return ctl.car_w
        if ctl.state == "controlled" and ctl.limit_a is not None:
            policy = self._policy(ctl)
            ctl.car_source = "limit"
            return ctl.limit_a * policy.voltage_v * policy.phases
        ctl.car_source = None
        return 0.0

    def _judge(self, ctl: TxControl, now: float) -> None:
        """Count fresh car values above the accepted limit; enough in a row: the charger ignores profiles."""
        if ctl.state != "controlled" or ctl.limit_a is None or ctl.sent_at is None or ctl.car_seen is None:
            return
        if ctl.car_seen < ctl.sent_at + JUDGE_AFTER_S or ctl.car_seen == ctl.judged:
            return
        ctl.judged = ctl.car_seen
        allowed_a = ctl.limit_a + max(OVER_LIMIT_A, 0.1 * ctl.limit_a)
        if ctl.current_a is not None:
            over = ctl.current_a > allowed_a
        else:  # no current values: judge the power, with three phases when the count is unknown (never unfair)
            policy = self._policy(ctl)
            over = (ctl.car_w or 0.0) > allowed_a * policy.voltage_v * (ctl.phases or 3) * 1.1
        ctl.over = ctl.over + 1 if over else 0
        if ctl.over >= self.config.ignore_after:
            self._uncontrolled(ctl, "ignored", now)

    def _uncontrolled(self, ctl: TxControl, reason: str, now: float) -> None:
        ctl.state, ctl.reason, ctl.uncontrolled_since, ctl.over = "uncontrolled", reason, now, 0
        ctl.counts[f"uncontrolled:{reason}"] += 1
        self.counts[f"uncontrolled:{reason}"] += 1
        self._log(
            logging.WARNING,
            f"uncontrolled:{ctl.charge_point}:{reason}",
            "surplus loop: charger %s (transaction %d) %s the charging profile: it charges at its own limit now, "
            "uncontrolled; the loop tries again in %d min",
            ctl.charge_point,
            ctl.tx,
            {"ignored": "ignores"}.get(reason, f"answered {reason} to"),
            int(self.config.retry_after.total_seconds() // 60),
        )

    def _open(self, central: CentralSystem) -> dict[int, tuple[str, int, bool]]:
        out: dict[int, tuple[str, int, bool]] = {}
        for cp_id, st in central.chargers.items():
            if self.config.charge_point is not None and cp_id != self.config.charge_point:
                continue
            for connector, tx in st.transactions.items():
                out[tx] = (cp_id, connector, st.connected)
        return out

    def _meter_state(self, now: float) -> str:
        if self.meter_seen is None:
            return "none"
        age = now - self.meter_seen
        if age < -self.config.interval.total_seconds():
            return "stale"  # the clock went back: the reading's age is unknown, so it is not trusted to raise
        if age <= self.config.meter_stale.total_seconds():
            return "fresh"
        return "stale" if age <= self.config.meter_timeout.total_seconds() else "lost"

    def _want(self, ctl: TxControl, share_w: float | None, meter: str) -> float:
        policy = self._policy(ctl)
        if self.config.mode is Mode.FIXED:
            return fixed_limit(self.config.fixed_current, policy)
        idle = policy.floor_a if policy.keep_floor else 0.0
        if meter == "fresh" and share_w is not None:
            return next_limit(share_w, ctl.limit_a if ctl.limit_a is not None else 0.0, policy)
        if meter == "stale" and ctl.limit_a is not None:
            return ctl.limit_a  # held: never raised on stale data
        return idle  # lost (or never seen): the mode's minimum

    async def step(self) -> None:
        """One decision for every running transaction (what :meth:`run` does each interval). Never raises except
        when cancelled: a failure is counted, logged and tried again at the next step."""
        now = self.clock.now()
        self.steps += 1
        self.last_step = now
        central = self._central()
        if central is None:
            self.state = "no_central_system"
            return
        open_txs = self._open(central)
        for tx in [t for t in self.txs if t not in open_txs]:
            ctl = self.txs.pop(tx)
            self.ended.append({"tx": tx, **ctl.as_dict(now), "state": "ended"})
            self._car.pop(tx, None)
        for tx in [t for t in self._car if t not in open_txs]:
            self._car.pop(tx, None)
        meter = self._meter_state(now)
        self.state = {"fresh": "ok", "stale": "meter_stale", "lost": "meter_lost", "none": "meter_lost"}[meter]
        if self.config.mode is Mode.FIXED:
            self.state = "ok"
        if not open_txs:
            self.state = "idle" if self.state == "ok" else self.state
            self.surplus_w = None if self.meter_w is None else -self.meter_w
            return
        if meter in ("stale", "lost") and self.config.mode is not Mode.FIXED:
            self._log(
                logging.WARNING,
                f"meter:{meter}",
                "surplus loop: the meter's power is %s (last %s): %s",
                meter,
                "never" if self.meter_seen is None else f"{now - self.meter_seen:.0f} s ago",
                "the limit is held" if meter == "stale" else "stepped down to the mode's minimum",
            )
            self.counts[f"meter_{meter}"] += 1
        if self.config.sample_interval:
            for cp_id in sorted({cp for cp, _, connected in open_txs.values() if connected}):
                await self._ask_sampling(central, cp_id)
        controls: list[tuple[TxControl, bool]] = []
        for tx, (cp_id, connector, connected) in sorted(open_txs.items()):
            ctl = self.txs.setdefault(tx, TxControl(tx, cp_id, connector))
            self._update_car(ctl, now)
            self._judge(ctl, now)
            if ctl.state == "uncontrolled":
                since = ctl.uncontrolled_since or now
                if now - since < self.config.retry_after.total_seconds():
                    continue
                ctl.state, ctl.reason = "new", None  # try again
                ctl.counts["retries"] += 1
            controls.append((ctl, connected))
        share: float | None = None
        if self.meter_w is not None and controls:
            car = sum(self._car_estimate(c, now) for c, _ in controls)
            self.surplus_w = surplus_for_car(car, self.meter_w)
            share = self.surplus_w / len(controls)
        for ctl, connected in controls:
            if not connected:
                ctl.state = "offline"
                continue
            want = self._want(ctl, share, meter)
            due = ctl.sent_at is None or now - ctl.sent_at >= self.config.refresh.total_seconds()
            if ctl.limit_a is not None and want == ctl.limit_a and not due and ctl.state == "controlled":
                continue
            await self._send(central, ctl, want, now)

    async def _ask_sampling(self, central: CentralSystem, cp_id: str) -> None:
        """Once per connection of a charger: MeterValueSampleInterval = the loop's interval (OCPP 1.6 core
        configuration key, seconds), so that the car's draw arrives as often as the loop decides. Whatever the
        answer (Rejected, NotSupported, a CALLERROR), the loop goes on: without fresh MeterValues it takes the
        accepted limit's power as the car's draw."""
        from ocpp.exceptions import OCPPError
        from websockets.exceptions import ConnectionClosed

        state = central.chargers.get(cp_id)
        since = state.connected_since if state is not None else None
        asked = self.sampling.get(cp_id)
        if asked is not None and asked[0] == since:
            return
        value = str(int(self.config.interval.total_seconds()))
        try:
            async with asyncio.timeout(self.config.response_timeout.total_seconds()):
                answer = await central.change_configuration(cp_id, "MeterValueSampleInterval", value)
        except OCPPError as err:
            answer = f"CallError:{err.code}"
        except (LookupError, ConnectionClosed, TimeoutError) as err:
            answer = type(err).__name__
        self.sampling[cp_id] = (since, answer)
        self.counts[f"sample_interval:{answer}"] += 1
        if answer != "Accepted":
            self._log(
                logging.INFO,
                f"sampling:{cp_id}:{answer}",
                "surplus loop: %s answered %s to MeterValueSampleInterval=%s; the accepted limit stands in for the "
                "car's draw when its meter values are older than three intervals",
                cp_id,
                answer,
                value,
            )

    async def _send(self, central: CentralSystem, ctl: TxControl, limit_a: float, now: float) -> None:
        from ocpp.exceptions import OCPPError  # imported here: a gateway without the loop never needs it
        from websockets.exceptions import ConnectionClosed

        profile = tx_profile(ctl.tx, limit_a, number_phases=ctl.phases)
        ctl.counts["sent"] += 1
        self.counts["profiles_sent"] += 1
        try:
            async with asyncio.timeout(self.config.response_timeout.total_seconds()):
                status = await central.set_charging_profile(ctl.charge_point, ctl.connector, profile)
        except (LookupError, ConnectionClosed):
            ctl.state = "offline"
            ctl.counts["not_connected"] += 1
            return
        except TimeoutError:
            ctl.counts["timeout"] += 1
            self.counts["timeouts"] += 1
            self._log(logging.WARNING, f"timeout:{ctl.charge_point}", "surplus loop: %s did not answer in time",
                      ctl.charge_point)  # fmt: skip
            return
        except OCPPError as err:  # a CALLERROR (NotImplemented, NotSupported...): the charger cannot do it
            status = f"CallError:{err.code}"
        if ctl.tx not in self._open(central):  # StopTransaction came while the profile was on its way
            ctl.counts["ended_in_flight"] += 1
            self.counts["ended_in_flight"] += 1
            return
        if status == "Accepted":
            ctl.limit_a, ctl.sent_at, ctl.state, ctl.reason = limit_a, now, "controlled", None
            ctl.counts["accepted"] += 1
            self.counts["profiles_accepted"] += 1
            return
        self.counts[f"answer:{status}"] += 1
        reason = {"Rejected": "rejected", "NotSupported": "not_supported"}.get(status, status)
        self._uncontrolled(ctl, reason, now)

    async def run(self) -> None:
        """Decide every ``interval`` on the clock until cancelled; a bug in one step is logged and counted."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # one place: the loop must outlive a bad step (the agent keeps running)
                self.counts["step_errors"] += 1
                self._log(logging.ERROR, f"bug:{type(err).__name__}", "surplus loop step failed", exc_info=True)
            await self.clock.sleep(self.config.interval.total_seconds())

    # -- status -----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """JSON-ready: mode, state, the meter's last power and age, each transaction's limit and state, counters."""
        now = self.clock.now()
        energy = {k: round(v[1] - v[0], 1) for k, v in self.energy.items()}
        return {
            "mode": self.config.mode.value,
            "state": self.state,
            "meter": {
                "device": self.config.meter,
                "power_w": self.meter_w,
                "age_s": None if self.meter_seen is None else round(now - self.meter_seen, 1),
                "import_wh": energy.get("import"),
                "export_wh": energy.get("export"),
            },
            "pv_w": self.pv_w,
            "surplus_w": self.surplus_w,
            "transactions": {str(tx): c.as_dict(now) for tx, c in sorted(self.txs.items())},
            "ended": list(self.ended),
            "counts": dict(self.counts),
            "sample_interval": {cp: answer for cp, (_, answer) in sorted(self.sampling.items())},
            "steps": self.steps,
            "last_step": self.last_step,
        }

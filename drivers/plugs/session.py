"""The stateful, still sans-IO, layer between the MQTT transport and the agent.

:class:`PlugSession` feeds each message to :func:`drivers.plugs.parse.decode`, then

- maps native device keys (``tasmota:pow1``) to appliances from the config and renames readings to the
  household's device ids (``home1-kettle``, the same ids the simulator uses), with the household as subject;
- turns each plug's raw energy counter into a monotonic cumulative ``energy`` reading
  (:class:`~drivers.counter.MonotonicCounter`), keeping the raw value in ``extra["raw_energy_wh"]``; a held
  counter value (a replayed or impossible one, see :mod:`drivers.counter`) gives no energy reading, and the
  causes are counted per plug (:meth:`PlugSession.counter_causes`);
- records online / relay states, discovery announcements and plugs seen but not paired (for ``pair plugs``);
- counts parse errors by reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from drivers.base import MAX_POWER_W, ParseError, Reading
from drivers.counter import MonotonicCounter
from drivers.plugs.parse import Announcement, Decoded, decode


@dataclass(slots=True)
class Seen:
    """A plug the gateway heard from: announced itself, or published readings/states."""

    device: str
    family: str
    first_seen: float
    last_seen: float
    model: str = ""
    mac: str = ""
    ip: str = ""
    name: str = ""
    firmware: str = ""
    paired_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``pair plugs`` reads)."""
        return asdict(self)


@dataclass(slots=True)
class PlugSession:
    """Decode, map and count plug messages for one household.

    ``appliances`` maps native keys (``tasmota:pow1``, ``shelly:shellyplug-s-C45BBE/0``, ``z2m:kettle``) to
    appliance names; a reading's device becomes ``f"{household}-{appliance}"``. Readings of unpaired plugs are
    dropped (and the plug recorded in :attr:`seen`). ``max_power_w`` bounds how fast an outlet's or relay's
    counter can grow; Shelly EM/3EM clamp channels (``.../emeter:<n>``) measure a whole supply and get the
    meter's ceiling instead.
    """

    household: str
    appliances: Mapping[str, str]
    z2m_base: str = "zigbee2mqtt"
    max_power_w: float = MAX_POWER_W["plug"]
    counters: dict[str, MonotonicCounter] = field(default_factory=dict)
    states: dict[str, dict[str, bool]] = field(default_factory=dict)
    seen: dict[str, Seen] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    readings_out: int = 0
    last_error: str | None = None

    def device_id(self, key: str) -> str | None:
        """The agent's device id for a native key (None when the plug is not paired)."""
        appliance = self.appliances.get(key)
        return None if appliance is None else f"{self.household}-{appliance}"

    def feed(self, topic: str, payload: bytes, received_at: float | None = None) -> list[Reading]:
        """One MQTT message in, the readings to hand to the agent out. Never raises ParseError: bad
        messages are counted by reason in :attr:`errors`."""
        now = time.time() if received_at is None else received_at
        self.messages += 1
        try:
            dec = decode(topic, payload, received_at=now, z2m_base=self.z2m_base)
        except ParseError as err:
            self.errors[err.reason] += 1
            self.last_error = str(err)[:200]
            return []
        return self.apply(dec, now)

    def apply(self, dec: Decoded, now: float) -> list[Reading]:
        """Record a decoded message's states/announcements and return its mapped readings."""
        for ann in dec.announcements:
            self._record(ann.device, dec.family, now, ann)
        for st in dec.states:
            self._record(st.device, dec.family, now)
            self.states.setdefault(st.device, {})[st.key] = st.value
        out: list[Reading] = []
        for r in dec.readings:
            self._record(r.device, dec.family, now)
            if r.metric == "energy":
                mono = self._monotonic(r)
                if mono is None:
                    continue
                r = mono
            dev = self.device_id(r.device)
            if dev is None:
                continue
            out.append(Reading(dev, self.household, r.metric, r.value, r.unit, r.ts, {**r.extra, "native": r.device}))
        self.readings_out += len(out)
        return out

    def _counter(self, key: str) -> MonotonicCounter:
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = MonotonicCounter()
        watts = MAX_POWER_W["meter"] if "/emeter:" in key else self.max_power_w
        # 10 Wh of slack: Zigbee2MQTT reports kWh with two decimals, the coarsest register of the family.
        counter.max_rate, counter.slack = watts / 3600.0, 10.0
        return counter

    def _monotonic(self, r: Reading) -> Reading | None:
        counter = self._counter(r.device)
        try:
            value = counter.update(r.value, r.ts)
        except ParseError as err:  # the parsers already refuse negative counters; counted like theirs
            self.errors[err.reason] += 1
            return None
        if counter.held:
            return None
        extra = {**r.extra, "raw_energy_wh": repr(r.value), "resets": str(counter.resets)}
        return Reading(r.device, r.subject, r.metric, round(value, 6), r.unit, r.ts, extra)

    def _record(self, key: str, family: str, now: float, ann: Announcement | None = None) -> None:
        s = self.seen.get(key)
        if s is None:
            s = self.seen[key] = Seen(key, family, now, now, paired_as=self.appliances.get(key))
        s.last_seen = now
        if ann is not None:
            s.model, s.mac, s.ip, s.name, s.firmware = ann.model, ann.mac, ann.ip, ann.name, ann.firmware

    def unpaired(self) -> list[Seen]:
        """Plugs heard from that the config does not map to an appliance."""
        return sorted((s for s in self.seen.values() if s.paired_as is None), key=lambda s: s.device)

    def counter_causes(self) -> dict[str, dict[str, int]]:
        """Per native key, the energy counter's roll-overs, resets and held readings by cause."""
        return {k: dict(c.causes) for k, c in sorted(self.counters.items()) if c.causes}

    def counters_state(self) -> dict[str, dict[str, Any]]:
        """Energy counter state per native key (persisted by the driver across restarts)."""
        return {k: c.to_dict() for k, c in self.counters.items()}

    def restore_counters(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`counters_state` output; malformed entries are ignored."""
        for key, value in state.items():
            if isinstance(key, str) and isinstance(value, dict):
                self._counter(key).restore(value)

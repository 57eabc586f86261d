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

Only paired plugs (``kyojo pair plugs --accept`` or the config's ``appliances``) produce Readings: anyone on the
LAN can publish a plug's topic, so a reading from an unknown key is only remembered for discovery. That memory is
bounded: at most ``max_unpaired`` (256) unpaired plugs, the least recently heard forgotten first, keys of at most
128 printable characters, announcement fields cut to 64; energy counters and relay states are kept for paired
plugs only. A flood of invented ids costs neither memory nor disk beyond that.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from drivers.counter import MonotonicCounter
from drivers.logs import LogLimiter
from drivers.plugs.parse import Announcement, Decoded, decode
from kyojo.contract.vocab import MAX_POWER_W, ParseError, Reading

log = logging.getLogger(__name__)

#: unpaired plugs remembered for ``kyojo pair plugs`` (least recently heard forgotten first)
MAX_UNPAIRED = 256
#: longest native key kept (``kyojo pair plugs --accept`` takes the same)
MAX_KEY = 128
_MAX_FIELD = 64
_FAMILIES = ("tasmota:", "shelly:", "z2m:")


def valid_key(key: object) -> bool:
    """A native plug key worth remembering: a family prefix, then 1-128 printable characters (no control
    characters: keys end up in files and on terminals)."""
    return (
        isinstance(key, str)
        and key.startswith(_FAMILIES)
        and 0 < len(key.partition(":")[2]) <= MAX_KEY
        and key.isprintable()
    )


def _field(value: object) -> str:
    """An announcement field from the network, made safe to store and print."""
    text = value if isinstance(value, str) else str(value)
    return "".join(c for c in text[: _MAX_FIELD * 2] if c.isprintable())[:_MAX_FIELD]


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

    @classmethod
    def from_dict(cls, doc: object) -> Seen | None:
        """A record saved by :meth:`to_dict` (None when it is not one: the file is checked like the network)."""
        if not isinstance(doc, dict) or not valid_key(doc.get("device")):
            return None
        try:
            first, last = float(doc.get("first_seen", 0.0)), float(doc.get("last_seen", 0.0))
        except (TypeError, ValueError):
            return None
        texts = {k: _field(doc.get(k, "")) for k in ("family", "model", "mac", "ip", "name", "firmware")}
        return cls(doc["device"], first_seen=first, last_seen=last, **texts)


@dataclass(slots=True)
class PlugSession:
    """Decode, map and count plug messages for one household.

    ``appliances`` maps native keys (``tasmota:pow1``, ``shelly:shellyplug-s-C45BBE/0``, ``z2m:kettle``) to
    appliance names; a reading's device becomes ``f"{household}-{appliance}"``. Readings of unpaired plugs are
    dropped, counted in ``ignored["unpaired"]``, and the plug remembered in :attr:`heard` (bounded LRU).
    ``max_power_w`` bounds how fast an outlet's or relay's counter can grow; Shelly EM/3EM clamp channels
    (``.../emeter:<n>``) measure a whole supply and get the meter's ceiling instead.
    """

    household: str
    appliances: Mapping[str, str]
    z2m_base: str = "zigbee2mqtt"
    max_unpaired: int = MAX_UNPAIRED
    max_power_w: float = MAX_POWER_W["plug"]
    counters: dict[str, MonotonicCounter] = field(default_factory=dict)
    states: dict[str, dict[str, bool]] = field(default_factory=dict)
    #: paired plugs heard from (bounded by ``appliances``)
    seen: dict[str, Seen] = field(default_factory=dict)
    #: unpaired plugs heard from, least recently heard first (at most ``max_unpaired``)
    heard: OrderedDict[str, Seen] = field(default_factory=OrderedDict)
    errors: Counter[str] = field(default_factory=Counter)
    #: state words a family does not define, kept out of :attr:`states` (the message's readings are kept), by
    #: ``<family>:<field>``
    reserved_values: Counter[str] = field(default_factory=Counter)
    #: messages (or parts of them) not turned into Readings: ``unpaired``, ``bad_key``, ``forgotten``
    ignored: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    readings_out: int = 0
    last_error: str | None = None
    log_limited: LogLimiter = field(default_factory=lambda: LogLimiter(log, max_causes=64))

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
            self.log_limited(logging.WARNING, f"parse:{err.reason}", "plug message refused: %r", self.last_error)
            return []
        return self.apply(dec, now)

    def apply(self, dec: Decoded, now: float) -> list[Reading]:
        """Record a decoded message's states/announcements and return the readings of paired plugs."""
        for ann in dec.announcements:
            self._record(ann.device, dec.family, now, ann)
        for st in dec.states:
            if self._record(st.device, dec.family, now):
                self.states.setdefault(st.device, {})[st.key] = st.value
        for unknown in dec.unknown:
            cause = f"{dec.family}:{unknown.field}"
            self.reserved_values[cause] += 1
            self.log_limited(
                logging.INFO,
                f"unknown:{cause}",
                "plug %s: unknown %s %r (the rest of the message kept)",
                unknown.device,
                unknown.field,
                unknown.raw,
            )
        out: list[Reading] = []
        unpaired = 0
        for r in dec.readings:
            if not self._record(r.device, dec.family, now):
                unpaired += 1
                continue
            dev = self.device_id(r.device)
            assert dev is not None
            if r.metric == "energy":
                mono = self._monotonic(r)
                if mono is None:  # held by the counter (replayed or impossible), counted there
                    continue
                r = mono
            out.append(Reading(dev, self.household, r.metric, r.value, r.unit, r.ts, {**r.extra, "native": r.device}))
        if unpaired:
            self.ignored["unpaired"] += unpaired
            self.log_limited(
                logging.INFO,
                "unpaired",
                "readings of plugs that are not paired are ignored (%d unpaired heard; `kyojo pair plugs`)",
                len(self.heard),
            )
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

    def _record(self, key: str, family: str, now: float, ann: Announcement | None = None) -> bool:
        """Note that ``key`` was heard; True when it is a paired plug (whose data may be used)."""
        paired = key in self.appliances
        if paired:
            s = self.seen.get(key)
            if s is None:
                s = self.seen[key] = Seen(key, family, now, now, paired_as=self.appliances[key])
        elif not valid_key(key):
            self.ignored["bad_key"] += 1
            self.log_limited(logging.WARNING, "bad_key", "plug key refused (control characters or too long)")
            return False
        else:
            s = self.heard.pop(key, None) or Seen(key, family, now, now)
            self.heard[key] = s  # most recently heard last
            while len(self.heard) > self.max_unpaired:
                self.heard.popitem(last=False)
                self.ignored["forgotten"] += 1
        s.last_seen = now
        if ann is not None:
            s.model, s.mac, s.ip = _field(ann.model), _field(ann.mac), _field(ann.ip)
            s.name, s.firmware = _field(ann.name), _field(ann.firmware)
        return paired

    def set_appliances(self, appliances: Mapping[str, str]) -> dict[str, list[str]]:
        """Take a new pairing table while running (the household paired, renamed or forgot a plug).

        A newly paired plug's discovery record moves to :attr:`seen` and its next readings count; a renamed one
        keeps its energy counter (its readings carry the new device id from now on); a forgotten one goes back to
        :attr:`heard` and its counter and states are dropped (a later pairing starts from a fresh baseline, so
        energy used meanwhile is never booked as one step). Returns the keys ``added``, ``renamed``, ``removed``.
        """
        new = dict(appliances)
        old = dict(self.appliances)
        changes: dict[str, list[str]] = {"added": [], "renamed": [], "removed": []}
        for key in sorted(old.keys() - new.keys()):
            changes["removed"].append(key)
            self.counters.pop(key, None)
            self.states.pop(key, None)
            s = self.seen.pop(key, None)
            if s is not None:
                s.paired_as = None
                self.heard[key] = s
        for key in sorted(new.keys()):
            if key not in old:
                changes["added"].append(key)
                s = self.heard.pop(key, None)
                if s is not None:
                    self.seen[key] = s
            elif old[key] != new[key]:
                changes["renamed"].append(key)
            if key in self.seen:
                self.seen[key].paired_as = new[key]
        while len(self.heard) > self.max_unpaired:
            self.heard.popitem(last=False)
            self.ignored["forgotten"] += 1
        self.appliances = new
        return changes

    def unpaired(self) -> list[Seen]:
        """Plugs heard from that are not paired (at most ``max_unpaired``), by key."""
        return sorted(self.heard.values(), key=lambda s: s.device)

    def records(self) -> list[Seen]:
        """Every plug heard from, paired or not, by key (what the driver saves for ``pair plugs``)."""
        return sorted([*self.seen.values(), *self.heard.values()], key=lambda s: s.device)

    def restore_seen(self, records: Iterable[object]) -> None:
        """Load saved discovery records (checked like the network; the newest ``max_unpaired`` unpaired kept)."""
        loaded = [s for s in (Seen.from_dict(r) for r in records) if s is not None]
        for s in sorted(loaded, key=lambda s: s.last_seen):
            if s.device in self.appliances:
                s.paired_as = self.appliances[s.device]
                self.seen.setdefault(s.device, s)
            elif s.device not in self.heard:
                self.heard[s.device] = s
        while len(self.heard) > self.max_unpaired:
            self.heard.popitem(last=False)

    def counter_causes(self) -> dict[str, dict[str, int]]:
        """Per native key, the energy counter's roll-overs, resets and held readings by cause."""
        return {k: dict(c.causes) for k, c in sorted(self.counters.items()) if c.causes}

    def counters_state(self) -> dict[str, dict[str, Any]]:
        """Energy counter state per native key (persisted by the driver across restarts)."""
        return {k: c.to_dict() for k, c in self.counters.items()}

    def restore_counters(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`counters_state` output for paired plugs; other and malformed entries are ignored."""
        for key, value in state.items():
            if isinstance(key, str) and key in self.appliances and isinstance(value, dict):
                self._counter(key).restore(value)

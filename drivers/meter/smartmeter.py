"""ECHONET Lite smart-meter frames -> Readings (stateful but sans-IO).

The meter's cumulative registers need three properties to mean anything: 0xD3 coefficient, 0xE1 unit and 0xD7
effective digits (the register wraps at ``10**digits``). :class:`MeterDecoder` remembers them from any frame
that carries them (the driver asks for them once after joining), converts 0xE0 to Wh and keeps it monotonic
across the roll-over with :class:`drivers.counter.MonotonicCounter` (raw count kept in ``extra``). The
counters work in register counts: their rate ceiling is ``max_power_w`` converted to counts per second, with
one count of slack (the register is truncated to its unit). A held register value (a re-read, a late answer,
an impossible jump: see :mod:`drivers.counter`) gives no energy reading.

Device ids: ``<id>`` for power (0xE7) and energy bought (0xE0); ``<id>-r`` / ``<id>-t`` for the R / T phase
currents (0xE8: the raw store keys series by device + metric, so two phases need two devices); ``<id>-export``
for energy sold (0xE3), only when ``export`` is set.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from drivers.counter import MonotonicCounter
from drivers.meter.echonet import (
    ESV,
    FixedTimeEnergy,
    Frame,
    ReservedValue,
    is_reserved_esv,
    parse_coefficient,
    parse_cumulative,
    parse_currents,
    parse_digits,
    parse_fixed_time,
    parse_instant_power,
    parse_unit,
)
from kyojo.contract.vocab import MAX_POWER_W, Reading

#: ESVs whose property list carries values from the meter.
VALUE_SERVICES = frozenset({ESV.GET_RES, ESV.GET_SNA, ESV.INF, ESV.INFC})

#: Names of the 0x0288 properties we decode (for describe()).
PROPERTY_NAMES = {
    0x80: "operation_status",
    0xD3: "coefficient",
    0xD7: "effective_digits",
    0xE0: "cumulative_energy_normal",
    0xE1: "cumulative_energy_unit_kwh",
    0xE3: "cumulative_energy_reverse",
    0xE7: "instantaneous_power_w",
    0xE8: "instantaneous_current_a",
    0xEA: "fixed_time_energy_normal",
    0xEB: "fixed_time_energy_reverse",
}


def property_value(epc: int, edt: bytes) -> Any:
    """JSON-ready decoded value of one smart-meter property (hex string for those we do not decode)."""
    if epc == 0xD3:
        return parse_coefficient(edt)
    if epc == 0xD7:
        return parse_digits(edt)
    if epc in (0xE0, 0xE3):
        return parse_cumulative(edt, epc)
    if epc == 0xE1:
        return parse_unit(edt)
    if epc == 0xE7:
        return parse_instant_power(edt)
    if epc == 0xE8:
        c = parse_currents(edt)
        return {"r": c.r, "t": c.t}
    if epc in (0xEA, 0xEB):
        f = parse_fixed_time(edt, epc)
        return {"at": f.at.isoformat(), "count": f.count}
    if epc == 0x80 and len(edt) == 1:  # operation status: 0x30 ON, 0x31 OFF
        if edt[0] not in (0x30, 0x31):
            # Appendix, device object super class, EPC 0x80: only 0x30/0x31 are assigned; another code is
            # reserved: reported as such (describe), never a reason to refuse the frame
            raise ReservedValue(0x80, edt, f"EPC 0x80: reserved operation status {edt[0]:#04x}")
        return {0x30: "on", 0x31: "off"}[edt[0]]
    return edt.hex()


def esv_name(code: int) -> str:
    """The ESV's name, or ``reserved_0xNN`` for a code reserved for future use (:func:`is_reserved_esv`)."""
    return ESV(code).name if code in ESV._value2member_map_ else f"reserved_0x{code:02X}"


def describe(frame: Frame) -> dict[str, Any]:
    """A JSON-ready view of a frame, with smart-meter property values decoded when the source is a meter.

    A property whose value is reserved (:class:`~drivers.meter.echonet.ReservedValue`) keeps its ``edt`` and gets
    ``"value": None`` and ``"reserved": true``; the frame's other properties are decoded as usual.
    """
    meter = frame.seoj.class_code == 0x0288
    props = []
    for p in (*frame.props, *frame.get_props):
        item: dict[str, Any] = {"epc": f"0x{p.epc:02X}", "pdc": len(p.edt), "edt": p.edt.hex()}
        if meter and p.edt:
            item["name"] = PROPERTY_NAMES.get(p.epc, "")
            try:
                item["value"] = property_value(p.epc, p.edt)
            except ReservedValue:
                item["value"], item["reserved"] = None, True
        props.append(item)
    out = {
        "tid": frame.tid,
        "seoj": str(frame.seoj),
        "deoj": str(frame.deoj),
        "esv": esv_name(frame.esv),
        "properties": props,
    }
    if is_reserved_esv(frame.esv):
        out["reserved"] = True
    return out


@dataclass(slots=True)
class MeterDecoder:
    """Turns frames from one smart meter into Readings. ``tz_offset_h``: the meter's local time (JST = 9);
    ``max_power_w``: the supply's ceiling (:data:`kyojo.contract.vocab.MAX_POWER_W`), which bounds register growth."""

    device: str
    subject: str
    tz_offset_h: float = 9.0
    export: bool = False
    coefficient: int = 1
    unit_kwh: float | None = None
    digits: int | None = None
    max_power_w: float = MAX_POWER_W["meter"]
    normal: MonotonicCounter = field(default_factory=MonotonicCounter)
    reverse: MonotonicCounter = field(default_factory=MonotonicCounter)
    last_energy_ts: float | None = None
    last_fixed: FixedTimeEnergy | None = None
    #: the meter's last 0xE1 was a reserved unit code: energy is withheld until a known unit arrives
    unit_reserved: bool = False
    #: reserved values seen (not errors), by cause: ``esv:0xNN`` or ``epc:0xNN``
    reserved: Counter[str] = field(default_factory=Counter)

    @property
    def ready(self) -> bool:
        """True once the unit (0xE1) is known, so cumulative registers can be converted to Wh."""
        return self.unit_kwh is not None

    def readings(self, frame: Frame, received_at: float) -> list[Reading]:
        """Readings in a meter frame (Get_Res, Get_SNA, INF). Raises ParseError on a malformed EDT; a reserved
        value (ESV or property code) is counted in :attr:`reserved` and the rest of the frame is kept."""
        if frame.seoj.class_code != 0x0288:
            return []
        if is_reserved_esv(frame.esv):
            # ECHONET Lite Part II 3.2.5: a reserved service code. Its properties are decoded (describe shows
            # them) but their meaning (request? answer?) is unknown: no Readings, counted, nothing refused.
            self.reserved[f"esv:0x{frame.esv:02X}"] += 1
            return []
        if frame.esv not in VALUE_SERVICES:
            return []
        # Configuration first: coefficient, unit and digits apply to the registers in the same frame.
        if (edt := frame.prop(0xD3)) is not None:
            self.coefficient = parse_coefficient(edt)
        if (edt := frame.prop(0xE1)) is not None:
            try:
                self.unit_kwh, self.unit_reserved = parse_unit(edt), False
            except ReservedValue as err:
                # A unit code reserved for future use: the registers cannot be converted, so no energy until
                # a known unit arrives; power and currents in this frame are still read.
                self.reserved[f"epc:0x{err.epc:02X}"] += 1
                self.unit_kwh, self.unit_reserved = None, True
        if (edt := frame.prop(0xD7)) is not None:
            self.digits = parse_digits(edt)
            self.normal.modulus = self.reverse.modulus = float(10**self.digits)
        out: list[Reading] = []
        if (edt := frame.prop(0xE7)) is not None and (watts := parse_instant_power(edt)) is not None:
            out.append(self._r(self.device, "power", float(watts), received_at))
        if (edt := frame.prop(0xE8)) is not None:
            cur = parse_currents(edt)
            for phase, amps in (("r", cur.r), ("t", cur.t)):
                if amps is not None:
                    out.append(self._r(f"{self.device}-{phase}", "current", amps, received_at))
        if (edt := frame.prop(0xE0)) is not None and (count := parse_cumulative(edt, 0xE0)) is not None:
            out += self._energy(self.device, self.normal, count, received_at)
        if self.export and (edt := frame.prop(0xE3)) is not None:
            count_rev = parse_cumulative(edt, 0xE3)
            if count_rev is not None:
                out += self._energy(f"{self.device}-export", self.reverse, count_rev, received_at)
        if (edt := frame.prop(0xEA)) is not None:
            out += self._fixed(parse_fixed_time(edt, 0xEA))
        return out

    def _r(self, device: str, metric: str, value: float, ts: float, extra: dict[str, str] | None = None) -> Reading:
        unit = {"power": "W", "current": "A", "energy": "Wh"}[metric]
        return Reading(device, self.subject, metric, value, unit, ts, extra or {})

    def _wh(self, count: float) -> float:
        assert self.unit_kwh is not None
        return round(count * self.coefficient * self.unit_kwh * 1000.0, 6)

    def _energy(self, device: str, counter: MonotonicCounter, count: int, ts: float) -> list[Reading]:
        if self.unit_kwh is None:
            return []  # not convertible yet: the driver asks for 0xD3/0xD7/0xE1 before polling
        wh_per_count = self.coefficient * self.unit_kwh * 1000.0
        counter.max_rate = self.max_power_w / 3600.0 / wh_per_count if wh_per_count > 0 else None
        counter.slack = 1.0
        counter.can_reset = False  # 0xE0/0xE3 only wrap at 10**digits; a meter is replaced, never reset
        cumulative = counter.update(float(count), ts)
        if counter.held:
            return []
        if device == self.device:
            self.last_energy_ts = ts
        extra = {"raw_count": str(count), "rollovers": str(counter.causes.get("rollover", 0))}
        return [self._r(device, "energy", self._wh(cumulative), ts, extra)]

    def _fixed(self, fixed: FixedTimeEnergy) -> list[Reading]:
        """0xEA (pushed by the meter every 30 min): a reading at the fixed time, but only when it is newer than
        the last polled 0xE0 and does not go backwards (it must not look like a roll-over)."""
        self.last_fixed = fixed
        if fixed.count is None or self.unit_kwh is None:
            return []
        ts = fixed.at.replace(tzinfo=dt.timezone(dt.timedelta(hours=self.tz_offset_h))).timestamp()
        last = self.normal.last_raw
        if (self.last_energy_ts is not None and ts <= self.last_energy_ts) or (last is not None and fixed.count < last):
            return []
        return self._energy(self.device, self.normal, fixed.count, ts)

"""Sans-IO normaliser: OCPP 1.6 ``meterValue`` lists (MeterValues, StopTransaction ``transactionData``) -> Readings.

Input is the wire payload (camelCase JSON already decoded, no I/O, no asyncio). Output is Readings in the fixed
units of ``kyojo.contract.vocab``: ``ev_energy`` Wh (the Energy.Active.Import.Register, cumulative), ``ev_power`` W,
``current`` A, ``voltage`` V, ``soc`` %. Everything a parser can't make sense of raises :class:`ParseError` and
nothing else; a single unusable sampled value is skipped (and counted), it never sinks the whole message.

OCPP 1.6 facts this module relies on (spec section 7.17 SampledValue, JSON schema of MeterValues):

- ``sampledValue.value`` is a string; ``measurand`` defaults to ``Energy.Active.Import.Register``, ``unit`` to
  ``Wh``, ``context`` to ``Sample.Periodic``, ``location`` to ``Outlet``, ``format`` to ``Raw``;
- one ``meterValue`` entry is one timestamp with any number of sampled values (measurands x phases x locations);
- ``Energy.Active.Import.Register`` is a cumulative register; ``Power.Active.Import`` an instantaneous value;
- ``format: SignedData`` carries a signed blob, not a number.

The chargers in the field bend these rules; :data:`QUIRKS` lists what is accepted and how it is normalised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kyojo.contract.vocab import ParseError, Reading, reading

#: Accepted deviations from OCPP 1.6, by the name counted in health; value = what is seen and what we do.
QUIRKS: Mapping[str, str] = {
    "numeric_value": "sampledValue.value sent as a JSON number instead of a string: used as the number",
    "comma_decimal": "decimal comma ('7,5'): read as a decimal point",
    "empty_value": "value '' (schema-valid; Alfen, lbbrhzn fixture seq 9): the sample is skipped",
    "unit_case": "unit in the wrong case ('kwh', 'percent', 'KW'): matched case-insensitively",
    "unit_missing": "no unit on a non-energy measurand (spec default 'Wh' makes no sense for A/V/W/%): "
    "the measurand's natural unit is assumed",
    "kwh_register": "energy register in kWh (lbbrhzn seq 9, 12, 14): converted to Wh",
    "kw_power": "power in kW, possibly mixed with per-phase W in one message: converted to W",
    "measurand_case": "measurand in the wrong case ('soc', 'energy.active.import.register'): matched "
    "case-insensitively",
    "duplicate_register": "the same register twice in one meterValue with different contexts (Growatt "
    "THOR, Project EV: Sample.Periodic and Transaction.Begin): one value per metric, by context priority",
    "phase_only": "per-phase values only (no total): power is the sum of L1..L3, current the highest phase, "
    "voltage the mean of the live line-to-neutral phases",
    "phase_notation": "swapped phase notation (Voltage 'L1', Current 'L1-N'): L1 and L1-N are the same phase",
    "line_to_line": "only line-to-line voltages (L1-L2...): reported as line-to-neutral (divided by sqrt 3)",
    "naive_timestamp": "timestamp without offset: taken as UTC",
    "local_offset": "timestamp with a local offset (+10:00, Growatt): converted to UTC",
    "clock_unset": "timestamp before 2015 or more than a day ahead (charger clock not set): reception time used",
    "string_integer": "connectorId/transactionId as a numeric string: used as the integer",
    "transaction_zero": "transactionId 0 (lbbrhzn seq 14): readings outside a transaction",
}

#: Readings are ignored (counted in ``skipped``) for these OCPP measurands: not in the vocabulary.
_MEASURANDS = {
    m.lower(): m
    for m in (
        "Current.Export",
        "Current.Import",
        "Current.Offered",
        "Energy.Active.Export.Register",
        "Energy.Active.Import.Register",
        "Energy.Reactive.Export.Register",
        "Energy.Reactive.Import.Register",
        "Energy.Active.Export.Interval",
        "Energy.Active.Import.Interval",
        "Energy.Reactive.Export.Interval",
        "Energy.Reactive.Import.Interval",
        "Frequency",
        "Power.Active.Export",
        "Power.Active.Import",
        "Power.Factor",
        "Power.Offered",
        "Power.Reactive.Export",
        "Power.Reactive.Import",
        "RPM",
        "SoC",
        "Temperature",
        "Voltage",
    )
}

#: measurand -> (metric, {unit (lower case): factor to the metric's unit}, unit assumed when missing)
_MAPPED: Mapping[str, tuple[str, Mapping[str, float], str]] = {
    "Energy.Active.Import.Register": ("ev_energy", {"wh": 1.0, "kwh": 1000.0}, "wh"),
    "Power.Active.Import": ("ev_power", {"w": 1.0, "kw": 1000.0}, "w"),
    "Current.Import": ("current", {"a": 1.0}, "a"),
    "Voltage": ("voltage", {"v": 1.0}, "v"),
    "SoC": ("soc", {"percent": 1.0, "%": 1.0}, "percent"),
}

_UNIT_SPELLING = {
    "wh": "Wh",
    "kwh": "kWh",
    "w": "W",
    "kw": "kW",
    "a": "A",
    "v": "V",
    "percent": "Percent",
}

#: Which of several values of one metric in one meterValue wins: the lower rank. A periodic sample describes
#: the moment; Transaction.Begin/End samples repeat the start/stop register (and, on chargers that restart the
#: register per session, may be 0 while the periodic one is not).
_CONTEXT_RANK = {
    "Sample.Periodic": 0,
    "Sample.Clock": 1,
    "Trigger": 2,
    "Other": 3,
    "Transaction.End": 4,
    "Transaction.Begin": 5,
    "Interruption.Begin": 6,
    "Interruption.End": 6,
}
#: Outlet (default) is what went to the car; Cable is close; Inlet is the charger's grid side (includes its own
#: consumption); EV is the car's own value (SoC); Body is the charger's enclosure (temperature).
_LOCATION_RANK = {"Outlet": 0, "Cable": 1, "Inlet": 2, "EV": 0, "Body": 3}

_PHASES = {"l1": "L1", "l2": "L2", "l3": "L3", "l1-n": "L1", "l2-n": "L2", "l3-n": "L3"}
_LINE_TO_LINE = {"l1-l2", "l2-l3", "l3-l1"}
_SQRT3 = math.sqrt(3.0)
#: a line-to-neutral voltage below this is a phase that is not connected (0 V on L3 of a single-phase car)
_DEAD_PHASE_V = 50.0
#: earliest plausible charger clock (2015-01-01T00:00:00Z): OCPP 1.6 was published in 2015
_EARLIEST_TS = 1420070400.0
_FUTURE_TOLERANCE_S = 86400.0


@dataclass(frozen=True, slots=True)
class MeterBatch:
    """What one list of ``meterValue`` entries gave: Readings, the quirks normalised, the samples skipped."""

    readings: tuple[Reading, ...]
    quirks: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(slots=True)
class _Candidate:
    rank: tuple[int, int]
    phase: str | None  # None (total), L1..L3, or "LL" (line-to-line)
    value: float
    context: str


@dataclass(slots=True)
class _Acc:
    quirks: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def quirk(self, name: str) -> None:
        if name not in self.quirks:
            self.quirks.append(name)


def parse_int(value: object, name: str, *, quirks: list[str] | None = None) -> int:
    """An OCPP integer field; a numeric string is accepted (quirk ``string_integer``)."""
    if isinstance(value, bool):
        raise ParseError(f"type:{name}", detail=f"{name} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
        if quirks is not None and "string_integer" not in quirks:
            quirks.append("string_integer")
        return int(value)
    raise ParseError(f"type:{name}", detail=f"{name} must be an integer, got {type(value).__name__}")


def parse_timestamp(value: object, *, received_at: float | None = None, quirks: list[str] | None = None) -> float:
    """An OCPP ISO 8601 timestamp -> POSIX seconds (UTC).

    ``Z``, ``+00:00`` and local offsets are accepted; no offset means UTC; more than 6 fractional digits are cut.
    With ``received_at``, an implausible time (charger clock not set) is replaced by the reception time.
    """
    if not isinstance(value, str):
        raise ParseError("type:timestamp", detail=f"timestamp must be a string, got {type(value).__name__}")
    text = value.strip()
    m = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?", text
    )
    if m is None:
        raise ParseError("format:timestamp", detail=f"not an ISO 8601 timestamp: {text[:40]!r}")
    date, clock, frac, offset = m.groups()
    if len(clock) == 5:
        clock += ":00"
    iso = f"{date}T{clock}" + (f".{(frac + '000000')[:6]}" if frac else "")
    if offset is None:
        _note(quirks, "naive_timestamp")
        iso += "+00:00"
    elif offset in ("Z", "z"):
        iso += "+00:00"
    else:
        sign, rest = offset[0], offset[1:].replace(":", "")
        hh, mm = rest[:2], rest[2:] or "00"
        if (hh, mm) != ("00", "00"):
            _note(quirks, "local_offset")
        iso += f"{sign}{hh}:{mm}"
    try:
        ts = datetime.fromisoformat(iso).astimezone(UTC).timestamp()
    except (ValueError, OverflowError) as err:
        raise ParseError("format:timestamp", detail=f"{text[:40]!r}: {err}") from None
    if received_at is not None and (ts < _EARLIEST_TS or ts > received_at + _FUTURE_TOLERANCE_S):
        _note(quirks, "clock_unset")
        return received_at
    return ts


def _note(quirks: list[str] | None, name: str) -> None:
    if quirks is not None and name not in quirks:
        quirks.append(name)


def _number(raw: object, acc: _Acc) -> float | None:
    if isinstance(raw, bool):
        acc.skipped.append("value_type")
        return None
    if isinstance(raw, int | float):
        acc.quirk("numeric_value")
        value = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            acc.quirk("empty_value")
            acc.skipped.append("empty_value")
            return None
        if "," in text and "." not in text and text.count(",") == 1:
            acc.quirk("comma_decimal")
            text = text.replace(",", ".")
        if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?", text):
            acc.skipped.append("value_not_numeric")
            return None
        value = float(text)
    else:
        acc.skipped.append("value_type")
        return None
    if not math.isfinite(value):
        acc.skipped.append("value_not_finite")
        return None
    return value


def _sample(sv: object, acc: _Acc, found: dict[str, list[_Candidate]], invalid: set[str]) -> None:
    if not isinstance(sv, dict):
        acc.skipped.append("sample_not_object")
        return
    measurand_raw = sv.get("measurand", "Energy.Active.Import.Register")
    if not isinstance(measurand_raw, str):
        acc.skipped.append("measurand_type")
        return
    measurand = _MEASURANDS.get(measurand_raw.strip().lower())
    if measurand is None:
        acc.skipped.append("measurand_unknown")
        return
    if measurand != measurand_raw:
        acc.quirk("measurand_case")
    mapped = _MAPPED.get(measurand)
    if mapped is None:
        acc.skipped.append(f"unmapped:{measurand}")
        return
    metric, factors, natural = mapped
    if sv.get("format", "Raw") == "SignedData":
        acc.skipped.append("signed_data")
        return
    value = _number(sv.get("value"), acc)
    if value is None:
        invalid.add(metric)  # a total built from the other phases would be wrong
        return
    unit_raw = sv.get("unit")
    if unit_raw is None:
        # OCPP 1.6: a missing unit means Wh, which only fits energy measurands.
        if metric != "ev_energy":
            acc.quirk("unit_missing")
        unit = natural
    elif isinstance(unit_raw, str):
        unit = unit_raw.strip().lower()
        if unit in _UNIT_SPELLING and _UNIT_SPELLING[unit] != unit_raw:
            acc.quirk("unit_case")
    else:
        acc.skipped.append("unit_type")
        return
    factor = factors.get(unit)
    if factor is None:
        acc.skipped.append(f"unit_mismatch:{measurand}")
        return
    if unit == "kwh":
        acc.quirk("kwh_register")
    elif unit == "kw":
        acc.quirk("kw_power")
    value *= factor
    location = sv.get("location", "Outlet")
    loc_rank = _LOCATION_RANK.get(location, 3) if isinstance(location, str) else 3
    if metric == "soc":
        loc_rank = 0  # SoC is the car's, wherever the charger says it measured it
    elif location in ("EV", "Body"):
        acc.skipped.append(f"location:{location}")
        return
    context = sv.get("context", "Sample.Periodic")
    context = context if isinstance(context, str) else "Other"
    phase_raw = sv.get("phase")
    phase: str | None = None
    if phase_raw is not None:
        key = phase_raw.strip().lower() if isinstance(phase_raw, str) else ""
        if key in _PHASES:
            phase = _PHASES[key]
            if (metric == "voltage" and key in ("l1", "l2", "l3")) or (metric == "current" and "-n" in key):
                acc.quirk("phase_notation")
        elif key in _LINE_TO_LINE and metric == "voltage":
            phase = "LL"
        else:
            acc.skipped.append(f"phase:{metric}")
            return
    found.setdefault(metric, []).append(_Candidate((loc_rank, _CONTEXT_RANK.get(context, 3)), phase, value, context))


def _choose(metric: str, cands: list[_Candidate], acc: _Acc, *, partial: bool) -> tuple[float, str] | None:
    """One value per metric from the candidates of one meterValue entry (see :data:`QUIRKS`)."""
    best_loc = min(c.rank[0] for c in cands)
    cands = [c for c in cands if c.rank[0] == best_loc]
    totals = [c for c in cands if c.phase is None]
    if metric in ("ev_energy", "soc") and len(totals) > 1 and len({c.value for c in totals}) > 1:
        acc.quirk("duplicate_register")
    if totals:
        pick = min(totals, key=lambda c: c.rank)
        return pick.value, pick.context
    if metric == "soc" or partial:
        return None
    ctx = min(cands, key=lambda c: c.rank).context
    by_phase: dict[str, float] = {}
    for c in sorted(cands, key=lambda c: c.rank, reverse=True):
        if c.phase is not None and c.phase != "LL":
            by_phase[c.phase] = c.value
    if metric == "voltage":
        live = [v for v in by_phase.values() if v >= _DEAD_PHASE_V]
        if live:
            acc.quirk("phase_only")
            return sum(live) / len(live), ctx
        ll = [c.value for c in cands if c.phase == "LL" and c.value >= _DEAD_PHASE_V * _SQRT3]
        if ll:
            acc.quirk("line_to_line")
            return sum(ll) / len(ll) / _SQRT3, ctx
        return (0.0, ctx) if by_phase else None
    if not by_phase:
        return None
    acc.quirk("phase_only")
    if metric == "current":
        return max(by_phase.values()), ctx
    return sum(by_phase.values()), ctx


def normalise_meter_values(
    meter_value: object,
    *,
    device: str,
    subject: str,
    connector: int,
    transaction_id: int | None,
    received_at: float | None = None,
) -> MeterBatch:
    """Readings from an OCPP 1.6 ``meterValue`` list (MeterValues.req, StopTransaction.req ``transactionData``).

    One Reading per metric and meterValue entry. ``extra`` carries ``connector``, ``context`` and, inside a
    transaction, ``transaction``. Raises :class:`ParseError` (reason ``type:...``/``missing:...``/``format:...``)
    when the structure is broken; skips single samples that are unusable.
    """
    if not isinstance(meter_value, list):
        raise ParseError("type:meterValue", detail="meterValue must be an array")
    acc = _Acc()
    out: list[Reading] = []
    for entry in meter_value:
        if not isinstance(entry, dict):
            raise ParseError("type:meterValue", detail="meterValue entries must be objects")
        if "timestamp" not in entry:
            raise ParseError("missing:timestamp", detail="meterValue entry without timestamp")
        ts = parse_timestamp(entry["timestamp"], received_at=received_at, quirks=acc.quirks)
        samples = entry.get("sampledValue")
        if samples is None:
            raise ParseError("missing:sampledValue", detail="meterValue entry without sampledValue")
        if not isinstance(samples, list):
            raise ParseError("type:sampledValue", detail="sampledValue must be an array")
        found: dict[str, list[_Candidate]] = {}
        invalid: set[str] = set()
        for sv in samples:
            _sample(sv, acc, found, invalid)
        for metric, cands in found.items():
            chosen = _choose(metric, cands, acc, partial=metric in invalid)
            if chosen is None:
                continue
            value, context = chosen
            if metric == "ev_energy" and value < 0:
                acc.skipped.append("negative_register")
                continue
            if metric == "soc" and not 0.0 <= value <= 100.0:
                acc.skipped.append("soc_range")
                continue
            extra = {"connector": str(connector), "context": context}
            if transaction_id is not None:
                extra["transaction"] = str(transaction_id)
            r = reading(device, subject, metric, value, ts)
            out.append(Reading(r.device, r.subject, r.metric, r.value, r.unit, r.ts, extra))
    return MeterBatch(tuple(out), tuple(acc.quirks), tuple(acc.skipped))


def transaction_of(value: object, quirks: list[str] | None = None) -> int | None:
    """``transactionId`` of MeterValues.req: absent or 0 (lbbrhzn seq 14) means outside a transaction."""
    if value is None:
        return None
    tx = parse_int(value, "transactionId", quirks=quirks)
    if tx == 0:
        _note(quirks, "transaction_zero")
        return None
    return tx


def normalise_meter_values_payload(
    payload: object, *, device_prefix: str, subject: str, received_at: float | None = None
) -> tuple[int, int | None, MeterBatch]:
    """A whole MeterValues.req payload -> (connectorId, transactionId or None, batch).

    The Readings' device is ``<device_prefix>-<connectorId>``.
    """
    if not isinstance(payload, dict):
        raise ParseError("format:payload", detail="payload must be an object")
    if "connectorId" not in payload:
        raise ParseError("missing:connectorId", detail="MeterValues without connectorId")
    quirks: list[str] = []
    connector = parse_int(payload["connectorId"], "connectorId", quirks=quirks)
    if connector < 0:
        raise ParseError("value:connectorId", detail="connectorId must be >= 0")
    tx = transaction_of(payload.get("transactionId"), quirks)
    if "meterValue" not in payload:
        raise ParseError("missing:meterValue", detail="MeterValues without meterValue")
    batch = normalise_meter_values(
        payload["meterValue"],
        device=f"{device_prefix}-{connector}",
        subject=subject,
        connector=connector,
        transaction_id=tx,
        received_at=received_at,
    )
    merged = tuple(dict.fromkeys([*quirks, *batch.quirks]))
    return connector, tx, MeterBatch(batch.readings, merged, batch.skipped)


def summarise(readings: Sequence[Reading]) -> tuple[float | None, float | None, float | None]:
    """(latest ev_energy register Wh, its time, highest ev_power W) of a batch, for the sessions store."""
    energy = [r for r in readings if r.metric == "ev_energy"]
    power = [r.value for r in readings if r.metric == "ev_power"]
    last = max(energy, key=lambda r: r.ts) if energy else None
    return (last.value if last else None), (last.ts if last else None), (max(power) if power else None)

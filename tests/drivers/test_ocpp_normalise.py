"""Sans-IO OCPP 1.6 parts: the meter-value normaliser (fixtures and quirks), framing and its CALLERROR codes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ocpp.normalise import (
    QUIRKS,
    normalise_meter_values,
    normalise_meter_values_payload,
    parse_timestamp,
)
from drivers.ocpp.protocol import CALL, FrameError, parse_frame
from kyojo.contract.vocab import ParseError, Reading
from tests.kit import DATA

FIXTURES = DATA / "ocpp" / "session_fixtures.jsonl"
RECEIVED = 1_800_000_000.0  # 2027-01-15: after every fixture timestamp


def fixture(seq: int) -> dict[str, Any]:
    for line in FIXTURES.read_text().splitlines():
        rec = json.loads(line)
        if rec["seq"] == seq:
            payload: dict[str, Any] = rec["frame"][3]
            return payload
    raise KeyError(seq)


def values(readings: tuple[Reading, ...]) -> dict[str, float]:
    by_metric = {r.metric: r.value for r in readings}
    assert len(by_metric) == len(readings), "one Reading per metric per meterValue entry"
    return by_metric


def norm(payload: dict[str, Any]) -> tuple[int, int | None, Any]:
    return normalise_meter_values_payload(payload, device_prefix="cp1", subject="home1", received_at=RECEIVED)


TS_2021 = 1624292109.0  # 2021-06-21T16:15:09Z


# ---------------------------------------------------------------------------------------------------------------
# Third-party fixtures (lbbrhzn/ocpp), full expected results
# ---------------------------------------------------------------------------------------------------------------


def test_alfen_periodic_eighteen_samples() -> None:
    """seq 9: empty power values (total and L1) -> no ev_power at all (a sum of L2+L3 would be a lie)."""
    connector, tx, batch = norm(fixture(9))
    assert (connector, tx) == (1, 1)
    assert values(batch.readings) == {"ev_energy": 1305590.0, "current": 20.0, "voltage": 228.0}
    r = batch.readings[0]
    assert (r.device, r.subject, r.unit, r.ts) == ("cp1-1", "home1", "Wh", TS_2021)
    assert dict(r.extra) == {"connector": "1", "context": "Sample.Periodic", "transaction": "1"}
    assert {"empty_value", "kwh_register", "duplicate_register", "phase_only"} <= set(batch.quirks)
    assert batch.skipped.count("empty_value") == 2
    assert "unmapped:Frequency" in batch.skipped and "unmapped:Temperature" in batch.skipped


def test_line_to_line_voltages_become_line_to_neutral() -> None:
    _, _, batch = norm(fixture(10))
    v = values(batch.readings)["voltage"]
    assert v == pytest.approx((395.9 + 396.3 + 398.9) / 3 / math.sqrt(3))
    assert batch.quirks == ("line_to_line",)


def test_swapped_phase_notation() -> None:
    _, _, batch = norm(fixture(11))
    assert values(batch.readings) == {"voltage": 230.0, "current": 23.0}
    assert "phase_notation" in batch.quirks


def test_register_in_kwh() -> None:
    _, _, batch = norm(fixture(12))
    assert values(batch.readings) == {"ev_energy": 11000.0}


def test_clock_aligned_without_transaction_and_defaults() -> None:
    """seq 13: no transactionId, no unit (-> Wh), location Inlet; seq 14: transactionId 0 means none."""
    connector, tx, batch = norm(fixture(13))
    assert (connector, tx) == (1, None)
    assert values(batch.readings) == {"ev_energy": 67230012.0}
    assert "transaction" not in batch.readings[0].extra
    _, tx, batch = norm(fixture(14))
    assert tx is None and "transaction_zero" in batch.quirks
    assert values(batch.readings) == {
        "voltage": 228.49,
        "ev_power": 0.0,
        "ev_energy": 1101452.0,
        "current": 0.054,
    }


# ---------------------------------------------------------------------------------------------------------------
# Quirks from the cited issue threads, written as our own cases
# ---------------------------------------------------------------------------------------------------------------


def mv(*samples: dict[str, Any], ts: str = "2026-01-05T14:30:07+10:00") -> list[dict[str, Any]]:
    return [{"timestamp": ts, "sampledValue": list(samples)}]


def test_growatt_duplicate_register_and_local_offset() -> None:
    """Register as Sample.Periodic and Transaction.Begin (0) in one entry; +10:00 offset -> UTC."""
    batch = normalise_meter_values(
        mv(
            {"value": "0", "context": "Transaction.Begin", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "646", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
        ),
        device="d",
        subject="s",
        connector=1,
        transaction_id=1767583807,
    )
    assert values(batch.readings) == {"ev_energy": 646.0, "ev_power": 7200.0}
    assert batch.readings[0].ts == 1767587407.0  # 2026-01-05T04:30:07Z
    assert {"duplicate_register", "local_offset", "kw_power"} <= set(batch.quirks)


def test_soc_numbers_lowercase_units_and_phase_power_sum() -> None:
    batch = normalise_meter_values(
        mv(
            {"value": 80, "measurand": "SoC", "unit": "percent", "location": "EV"},
            {"value": "2300.5", "measurand": "Power.Active.Import", "unit": "W", "phase": "L1"},
            {"value": "2300,5", "measurand": "Power.Active.Import", "unit": "w", "phase": "L2"},
            {"value": "16", "measurand": "Current.Import", "phase": "L1"},
            {"value": "16.5", "measurand": "Current.Import", "phase": "L2"},
            {"value": "12.5", "unit": "KWH"},
            {"value": "abc", "measurand": "Voltage", "unit": "V"},
            {"value": "1", "measurand": "SoC", "unit": "Wh"},
            {"value": "n", "format": "SignedData"},
        ),
        device="d",
        subject="s",
        connector=2,
        transaction_id=None,
    )
    assert values(batch.readings) == {"soc": 80.0, "ev_power": 4601.0, "current": 16.5, "ev_energy": 12500.0}
    assert {"numeric_value", "unit_case", "comma_decimal", "phase_only", "unit_missing"} <= set(batch.quirks)
    assert {"value_not_numeric", "unit_mismatch:SoC", "signed_data"} <= set(batch.skipped)


def test_unset_charger_clock_uses_reception_time() -> None:
    quirks: list[str] = []
    assert parse_timestamp("1970-01-01T00:00:10Z", received_at=RECEIVED, quirks=quirks) == RECEIVED
    assert quirks == ["clock_unset"]
    assert parse_timestamp("2021-06-21T16:15:09") == TS_2021  # no offset: UTC
    assert parse_timestamp("2021-06-21T16:15:09.1234567Z") == pytest.approx(TS_2021 + 0.123456)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "format:payload"),
        ({"meterValue": []}, "missing:connectorId"),
        ({"connectorId": "one", "meterValue": []}, "type:connectorId"),
        ({"connectorId": 1}, "missing:meterValue"),
        ({"connectorId": 1, "meterValue": {}}, "type:meterValue"),
        ({"connectorId": 1, "meterValue": [{"sampledValue": []}]}, "missing:timestamp"),
        ({"connectorId": 1, "meterValue": [{"timestamp": "yesterday", "sampledValue": []}]}, "format:timestamp"),
        ({"connectorId": 1, "meterValue": [{"timestamp": "2021-06-21T16:15:09Z"}]}, "missing:sampledValue"),
        ({"connectorId": 1, "transactionId": True, "meterValue": []}, "type:transactionId"),
    ],
)
def test_structural_errors_are_parse_errors(payload: Any, reason: str) -> None:
    with pytest.raises(ParseError) as exc:
        norm(payload)
    assert exc.value.reason == reason


def test_quirks_table_names_what_the_normaliser_reports() -> None:
    assert all(isinstance(v, str) and v for v in QUIRKS.values())


# ---------------------------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------------------------


def test_parse_frame_call() -> None:
    f = parse_frame('[2,"19223201","Heartbeat",{}]')
    assert (f.type_id, f.unique_id, f.action, f.payload) == (CALL, "19223201", "Heartbeat", {})


# ---------------------------------------------------------------------------------------------------------------
# Hypothesis: random payloads never raise anything but ParseError
# ---------------------------------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "12.5", "1e400", "-0", "NaN", "Infinity", "2021-06-21T16:15:09Z", "99999-01-01T00:00:00Z"]),
)
any_json = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
sample = st.fixed_dictionaries(
    {},
    optional={
        "value": st.one_of(st.text(max_size=10), st.floats(), st.integers(), st.sampled_from(["", "230.0", "1,5"])),
        "unit": st.one_of(st.sampled_from(["Wh", "kWh", "W", "kW", "A", "V", "Percent", "percent", "kwh"]), any_json),
        "measurand": st.one_of(st.sampled_from(["SoC", "Voltage", "Power.Active.Import", "Current.Import"]), any_json),
        "phase": st.one_of(st.sampled_from(["L1", "L2-N", "L1-L2", "N"]), any_json),
        "location": st.one_of(st.sampled_from(["Outlet", "Inlet", "EV", "Body"]), any_json),
        "context": st.one_of(st.sampled_from(["Sample.Periodic", "Transaction.Begin"]), any_json),
        "format": st.one_of(st.sampled_from(["Raw", "SignedData"]), any_json),
    },
)
meter_value_entry = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": st.one_of(
            st.sampled_from(["2026-01-05T14:30:07+10:00", "2021-06-21T16:15:09Z", "2021-13-45T99:99:99Z"]), any_json
        ),
        "sampledValue": st.one_of(st.lists(sample, max_size=6), any_json),
    },
)
payloads = st.one_of(
    any_json,
    st.fixed_dictionaries(
        {},
        optional={
            "connectorId": st.one_of(st.integers(-2, 3), any_json),
            "transactionId": st.one_of(st.integers(-2, 2**40), any_json),
            "meterValue": st.one_of(st.lists(meter_value_entry, max_size=3), any_json),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(payloads)
def test_normaliser_raises_only_parse_error(payload: Any) -> None:
    try:
        _, _, batch = norm(payload)
    except ParseError:
        return
    for r in batch.readings:
        assert math.isfinite(r.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60), any_json.map(json.dumps)))
def test_frames_raise_only_frame_error(raw: str | bytes) -> None:
    uid: str | None = "ok"
    try:
        parse_frame(raw)
    except FrameError as err:
        uid = err.unique_id
    assert uid is None or 0 < len(uid) <= 36

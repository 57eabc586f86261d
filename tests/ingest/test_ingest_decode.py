"""The ingester's fast path never accepts what the contract (kyojo.contract.wire.decode_batch) refuses, and builds
the same lines as the slow path when both accept."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_ingest.decode import BatchDecoder
from kyojo.contract.wire import WireError, decode_batch

TOPIC = "kyojo/v1/gw-1/agg/energy"


def good() -> dict[str, Any]:
    return {
        "v": 1,
        "gateway": "gw-1",
        "seq": 3,
        "sent": 1_700_000_000_123,
        "consent": "c-1",
        "purpose": "community-energy",
        "category": "energy",
        "audit_head": "abc",
        "items": [
            {"metric": "power", "subject": "hh-1", "device": "plug-1", "start": 1_700_000_000_000, "window_s": 60,
             "count": 60, "mean": 12.5, "min": 1, "max": 30.25, "last": 11.0},
            {"metric": "energy", "subject": "hh-1", "device": "meter", "start": 1_700_000_000_000, "window_s": 60,
             "count": 1, "last": 1234567, "delta": 0.125, "mean": None},
        ],
    }  # fmt: skip


#: shared across examples, so the fast path's caches (validated identifiers, series prefixes keyed by
#: (metric, device, subject)) are warm with earlier, possibly different, documents
_WARM = BatchDecoder()


def check(topic: str, payload: bytes, dec: BatchDecoder | None = None) -> str:
    """Return 'fast', 'slow' or the rejection cause; assert fast and contract agree."""
    dec = dec if dec is not None else BatchDecoder()
    fast = dec.fast(topic, payload)
    try:
        model = decode_batch(topic, payload)
    except WireError as err:
        cause = err.cause
    else:
        cause = None
    if cause is not None:
        assert fast is None, f"fast path accepted what the contract refuses ({cause})"
        with pytest.raises(WireError):
            dec.decode(topic, payload)
        return cause
    slow = dec.from_model(model)
    if fast is None:
        return "slow"
    assert fast == slow
    return "fast"


def mutate(path: tuple[Any, ...], value: Any = ..., delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(good())
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


CASES: list[tuple[str, dict[str, Any] | bytes, str]] = [
    (TOPIC, good(), "fast"),
    (TOPIC, mutate(("audit_head",), delete=True), "fast"),
    (TOPIC, mutate(("items", 0, "mean"), 5), "fast"),  # int where a float goes: pydantic converts
    (TOPIC, mutate(("v",), 2), "schema_version"),
    (TOPIC, mutate(("v",), True), "slow"),  # True == 1 for the contract's version check and Literal[1]
    (TOPIC, mutate(("v",), delete=True), "schema_version"),
    (TOPIC, mutate(("gateway",), "gw-2"), "gateway_mismatch"),
    (TOPIC, mutate(("category",), "ev"), "category_mismatch"),
    (TOPIC, mutate(("category",), "nope"), "invalid"),
    (TOPIC, mutate(("seq",), -1), "invalid"),
    (TOPIC, mutate(("seq",), 1.0), "slow"),  # pydantic lax mode accepts an integral float
    (TOPIC, mutate(("seq",), "3"), "slow"),  # the contract is lax: a numeric string passes as an int
    (TOPIC, mutate(("sent",), True), "slow"),
    (TOPIC, mutate(("consent",), "bad id"), "invalid"),
    (TOPIC, mutate(("consent",), "c\n"), "invalid"),
    (TOPIC, mutate(("purpose",), "x" * 65), "invalid"),
    (TOPIC, mutate(("audit_head",), "x" * 129), "invalid"),
    (TOPIC, mutate(("audit_head",), 5), "invalid"),
    (TOPIC, mutate(("extra",), 1), "invalid"),
    (TOPIC, mutate(("items",), []), "invalid"),
    (TOPIC, mutate(("items",), "x"), "invalid"),
    (TOPIC, mutate(("items", 0, "metric"), "horsepower"), "invalid"),
    (TOPIC, mutate(("items", 0, "metric"), "heart_rate"), "fast"),  # valid contract; consent check catches it
    (TOPIC, mutate(("items", 0, "subject"), ""), "invalid"),
    (TOPIC, mutate(("items", 0, "device"), "-dev"), "invalid"),
    (TOPIC, mutate(("items", 0, "start"), -1), "invalid"),
    (TOPIC, mutate(("items", 0, "start"), 10**30), "invalid"),
    (TOPIC, mutate(("items", 0, "window_s"), 0), "invalid"),
    (TOPIC, mutate(("items", 0, "window_s"), 86_401), "invalid"),
    (TOPIC, mutate(("items", 0, "count"), 0), "invalid"),
    (TOPIC, mutate(("items", 0, "last"), delete=True), "invalid"),
    (TOPIC, mutate(("items", 0, "last"), None), "invalid"),
    (TOPIC, mutate(("items", 0, "last"), "1.5"), "slow"),  # lax: numeric string -> float
    (TOPIC, mutate(("items", 0, "last"), 2**60), "slow"),
    (TOPIC, mutate(("items", 0, "mean"), True), "slow"),
    (TOPIC, mutate(("items", 0, "x"), 1), "invalid"),
    (TOPIC, mutate(("items", 0), [1]), "invalid"),
    (TOPIC, b"{", "bad_json"),
    (TOPIC, b"[]", "invalid"),
    (TOPIC, b'{"v": 1, "v": 2}', "schema_version"),
    ("kyojo/v1/gw-1/agg", good(), "category_mismatch"),  # the contract reads the missing category as ""
    ("kyojo/v1/gw-1/agg/energy/x", good(), "category_mismatch"),
    ("kyojo/v2/gw-1/agg/energy", good(), "bad_topic"),
    ("kyojo/v1/gw-1/consent/energy", good(), "bad_topic"),
]


@pytest.mark.parametrize(("topic", "doc", "expected"), CASES)
def test_fast_path_agrees_with_contract(topic: str, doc: dict[str, Any] | bytes, expected: str) -> None:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    result = check(topic, payload)
    if expected == "slow":
        assert result in ("slow", "fast")  # accepted by the contract either way
    elif expected == "invalid" and result == "slow":
        pytest.fail("expected a rejection")
    else:
        assert result == expected


def test_oversize_is_refused_by_both() -> None:
    payload = json.dumps(good()).encode() + b" " * (256 * 1024)
    assert check(TOPIC, payload) == "oversize"


_json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=70),
)  # fmt: skip


def _paths() -> list[tuple[Any, ...]]:
    doc = good()
    paths: list[tuple[Any, ...]] = [(k,) for k in doc]
    for i, item in enumerate(doc["items"]):
        paths += [("items", i, k) for k in item]
    return paths


@settings(max_examples=400, deadline=None)
@given(
    edits=st.lists(st.tuples(st.sampled_from(_paths()), _json_scalar, st.booleans()), min_size=1, max_size=3),
    topic=st.sampled_from([TOPIC, "kyojo/v1/gw-1/agg/ev", "kyojo/v1/gw-2/agg/energy"]),
)
def test_fast_path_never_accepts_more_than_the_contract(
    edits: list[tuple[tuple[Any, ...], Any, bool]], topic: str
) -> None:
    doc = good()
    for path, value, delete in edits:
        target: Any = doc
        for key in path[:-1]:
            try:
                target = target[key]
            except (KeyError, IndexError, TypeError):  # an earlier edit replaced the container
                target = None
                break
        if not isinstance(target, dict):
            continue
        if delete:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    check(topic, json.dumps(doc).encode())
    check(topic, json.dumps(doc).encode(), _WARM)
    check(TOPIC, json.dumps(good()).encode(), _WARM)  # keeps the good series in the warm caches

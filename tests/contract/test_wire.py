"""The wire contract: what a receiver accepts and the stable cause of every refusal."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kyojo.contract.wire import (
    MAX_PAYLOAD_BYTES,
    WireError,
    agg_topic,
    consent_topic,
    decode_batch,
    decode_consent,
)

ITEM = {
    "metric": "power",
    "subject": "home-1",
    "device": "plug-1",
    "start": 1_717_200_000_000,
    "window_s": 60,
    "count": 6,
    "mean": 10.0,
    "min": 9.0,
    "max": 11.0,
    "last": 10.0,
}
BATCH = {
    "v": 1,
    "gateway": "gw-1",
    "seq": 7,
    "sent": 1,
    "consent": "c-1",
    "purpose": "community-energy",
    "category": "energy",
    "items": [ITEM],
}
CONSENT = {
    "v": 1,
    "gateway": "gw-1",
    "id": "c-1",
    "subject": "home-1",
    "purpose": "community-energy",
    "categories": ["energy"],
    "status": "active",
    "given_at": "2024-06-01T00:00:00Z",
}


def enc(doc: object) -> bytes:
    return orjson.dumps(doc)


def test_valid_batch_and_consent_decode() -> None:
    batch = decode_batch(agg_topic("gw-1", "energy"), enc(BATCH))
    assert (batch.seq, batch.items[0].mean) == (7, 10.0)
    record = decode_consent(consent_topic("gw-1", "c-1"), enc(CONSENT))
    assert record.categories == ["energy"]


@pytest.mark.parametrize(
    ("topic", "payload", "cause"),
    [
        ("kyojo/v1/gw-1/agg/energy", b"{not json", "bad_json"),
        ("kyojo/v1/gw-1/agg/energy", b"[1, 2]", "invalid"),
        ("kyojo/v1/gw-1/agg/energy", enc({**BATCH, "v": 2}), "schema_version"),
        ("kyojo/v1/gw-1/agg/energy", enc({k: v for k, v in BATCH.items() if k != "v"}), "schema_version"),
        ("kyojo/v1/gw-2/agg/energy", enc(BATCH), "gateway_mismatch"),
        ("kyojo/v1/gw-1/agg/health", enc(BATCH), "category_mismatch"),
        ("kyojo/v2/gw-1/agg/energy", enc(BATCH), "bad_topic"),
        ("kyojo/v1/gw-1/status", enc(BATCH), "bad_topic"),
        ("kyojo/v1/gw-1/agg/energy", enc({**BATCH, "items": []}), "invalid"),
        ("kyojo/v1/gw-1/agg/energy", enc({**BATCH, "items": [{**ITEM, "metric": "mood"}]}), "invalid"),
        ("kyojo/v1/gw-1/agg/energy", enc({**BATCH, "items": [{**ITEM, "subject": "名前"}]}), "invalid"),
        ("kyojo/v1/gw-1/agg/energy", enc({**BATCH, "extra": 1}), "invalid"),
        ("kyojo/v1/gw-1/agg/energy", enc({**BATCH, "seq": -1}), "invalid"),
        ("kyojo/v1/gw-1/agg/energy", b" " * (MAX_PAYLOAD_BYTES + 1), "oversize"),
    ],
)
def test_refusals_have_stable_causes(topic: str, payload: bytes, cause: str) -> None:
    with pytest.raises(WireError) as info:
        decode_batch(topic, payload)
    assert info.value.cause == cause


def test_consent_topic_must_name_the_record() -> None:
    with pytest.raises(WireError) as info:
        decode_consent(consent_topic("gw-1", "c-2"), enc(CONSENT))
    assert info.value.cause == "gateway_mismatch"


@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch("kyojo/v1/gw-1/agg/energy", payload)


@given(st.text(max_size=80))
def test_random_topics_only_ever_raise_wire_error(topic: str) -> None:
    if topic == "kyojo/v1/gw-1/agg/energy":
        assert decode_batch(topic, enc(BATCH)).gateway == "gw-1"
        return
    with pytest.raises(WireError):
        decode_batch(topic, enc(BATCH))


@pytest.mark.parametrize("bad", ["gw-1\n", "\ngw-1", "gw 1", "gw/1", "_gw", "g" * 65, "gw-1\x00"])
def test_identifiers_match_as_a_whole(bad: str) -> None:
    """One identifier rule everywhere (kyojo.contract.vocab.valid_id / ID_PATTERN): a trailing newline is no id."""
    from kyojo.contract.vocab import valid_id
    from provisioning import pki

    assert not valid_id(bad)
    with pytest.raises(pki.PkiError):
        pki._check_id(bad)  # the CA refuses it as a certificate name too
    doc = {"v": 1, "gateway": bad, "seq": 0, "sent": 0, "consent": "c1", "purpose": "p", "category": "energy",
           "items": [{"metric": "power", "subject": "s", "device": "d", "start": 0, "window_s": 60, "count": 1,
                      "last": 1.0}]}  # fmt: skip
    with pytest.raises(WireError):
        decode_batch(f"kyojo/v1/{bad}/agg/energy", orjson.dumps(doc))

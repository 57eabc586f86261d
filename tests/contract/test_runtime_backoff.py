"""kyojo.runtime.backoff (the one backoff, full jitter) and cloud_ingest.influx's error type (the one the old
InfluxDB clients had)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_ingest.erasure import EraseError
from cloud_ingest.influx import InfluxError, InfluxV1Connection, ident
from cloud_ingest.writer import RetryPolicy, WriteError
from kyojo.runtime.backoff import MAX_EXPONENT, Backoff, ceiling, jittered


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(1e-3, 10.0),
    spread=st.floats(1.0, 1e4),
    multiplier=st.floats(1.0, 4.0),
    attempts=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
)
def test_full_jitter_property(base: float, spread: float, multiplier: float, attempts: int, seed: int) -> None:
    """Every retry loop's delay is ``U(0, 1) * min(cap, base * multiplier**n)`` (full jitter, "Exponential Backoff
    And Jitter", AWS Architecture Blog): the stateful Backoff, the stateless ``jittered`` that the ingester's
    RetryPolicy and the lean MQTT client call, all from the same draws."""
    cap = base * spread
    b, rng = Backoff(base, cap, random.Random(seed), multiplier=multiplier), random.Random(seed)
    for n in range(attempts):
        d = ceiling(n, base, cap, multiplier=multiplier)
        assert d == min(cap, base * multiplier ** min(n, MAX_EXPONENT))
        delay = b.next()
        assert delay == d * rng.random()  # the formula, draw for draw
        assert 0.0 <= delay <= d <= cap
        assert (
            jittered(n, base, cap, multiplier=multiplier, rng=random.Random(seed)) == d * random.Random(seed).random()
        )
    b.reset()
    assert b.attempt == 0 and 0.0 <= b.next() <= base


def test_full_jitter_covers_the_whole_interval() -> None:
    """Not equal jitter (``[d/2, d]``): once capped, the draws fill ``[0, cap]``, mean ``cap/2``."""
    b = Backoff(0.1, 2.0, random.Random(1))
    full = [b.next() for _ in range(4000)][10:]
    assert min(full) < 0.02 and max(full) > 1.98
    assert abs(sum(full) / len(full) - 1.0) < 0.05
    policy = RetryPolicy(initial=0.1, maximum=1.0, multiplier=3.0)
    assert all(0.0 <= policy.delay(1) <= 0.3 for _ in range(50))
    assert min(policy.delay(5) for _ in range(500)) < 0.1
    with pytest.raises(ValueError, match="base"):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(1.0, 2.0, multiplier=0.5)


def test_one_error_type() -> None:
    assert issubclass(WriteError, InfluxError) and issubclass(EraseError, InfluxError)
    assert WriteError("x", retriable=False, status=503).retriable is False  # explicit wins, as the ingester uses it
    assert InfluxError("x", status=503).retriable and InfluxError("x", status=429).retriable
    assert not InfluxError("x", status=400).retriable and InfluxError("x").retriable
    assert ident('a"b\\c') == '"a\\"b\\\\c"'


def test_connection_url_and_auth() -> None:
    conn = InfluxV1Connection("https://influx.example/base/", username="u", password="p", default_port=8086)
    assert (conn.https, conn.host, conn.port) == (True, "influx.example", 8086)
    assert conn.target("/write", {"db": "d b"}) == "/base/write?db=d+b"
    assert conn.headers == {"Authorization": "Basic dTpw"}
    assert InfluxV1Connection("http://h", token="t").headers == {"Authorization": "Token t"}
    assert InfluxV1Connection("http://h").port == 80
    with pytest.raises(ValueError, match="http"):
        InfluxV1Connection("ftp://h")

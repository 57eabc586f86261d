"""kyojo.runtime.backoff (the one backoff) and cloud_ingest.influx's error type: the behaviour the three old
backoffs and the old InfluxDB clients had."""

from __future__ import annotations

import random

import pytest

from cloud_ingest.erasure import EraseError
from cloud_ingest.influx import InfluxError, InfluxV1Connection, ident
from cloud_ingest.writer import RetryPolicy, WriteError
from drivers.backoff import Backoff as DriversBackoff
from kyojo.runtime.backoff import Backoff, jittered


def test_drivers_backoff_is_the_runtime_one_with_the_same_draws() -> None:
    assert DriversBackoff is Backoff
    b, rng = Backoff(1.0, 60.0, random.Random(7)), random.Random(7)
    for n in range(12):
        d = min(60.0, 1.0 * 2.0**n)
        assert b.next() == d / 2 + rng.uniform(0, d / 2)  # the old drivers/backoff.py formula, bit for bit
    b.reset()
    assert 0.5 <= b.next() <= 1.0


def test_jitter_bounds() -> None:
    rng = random.Random(1)
    full = [jittered(n, 0.1, 2.0, jitter=1.0, rng=rng) for n in range(200)]
    assert all(0.0 <= d <= 2.0 for d in full) and min(full) < 0.1
    assert [jittered(n, 0.1, 2.0, jitter=0.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    policy = RetryPolicy(initial=0.1, maximum=1.0, multiplier=3.0, jitter=0.5)
    assert all(0.15 <= policy.delay(1) <= 0.3 for _ in range(50))
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1.0, 2.0, jitter=1.5)


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

"""Line protocol and the InfluxDB writers, against the real InfluxDB 1.6.7 where it can answer."""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_ingest.lineproto import LineBuilder, escape_measurement, escape_tag, line, quote_string
from cloud_ingest.scope import Scope
from cloud_ingest.writer import InfluxV1Writer, InfluxV2Writer, RetryPolicy, WriteError, write_with_retry
from kyojo.contract.wire import AggregateBatch
from provisioning.local import InfluxDB

# ------------------------------------------------------------------------------------------------------------
# line protocol
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "raw", "escaped"),
    [
        (escape_measurement, "cpu load", r"cpu\ load"),
        (escape_measurement, "a,b", r"a\,b"),
        (escape_measurement, "a=b", "a=b"),  # '=' is legal in a measurement
        (escape_tag, "a b", r"a\ b"),
        (escape_tag, "a,b", r"a\,b"),
        (escape_tag, "a=b", r"a\=b"),
        (escape_tag, "plain-id_1.2", "plain-id_1.2"),
        (quote_string, 'say "hi"', r'"say \"hi\""'),
        (quote_string, "back\\slash", r'"back\\slash"'),
    ],
)
def test_escaping_table(func: Any, raw: str, escaped: str) -> None:
    assert func(raw) == escaped


def test_generic_line_sorts_tags_and_types_fields() -> None:
    text = line("m", {"z": "1", "a": "x y"}, {"i": 3, "f": 1.5, "s": 'q"', "b": True, "n": None, "x": math.nan}, 7)
    assert text == r'm,a=x\ y,z=1 i=3i,f=1.5,s="q\"",b=true 7'
    with pytest.raises(ValueError, match="at least one field"):
        line("m", {}, {"n": None})


def test_aggregate_item_line() -> None:
    batch = AggregateBatch.model_validate(
        {
            "gateway": "gw-1",
            "seq": 0,
            "sent": 0,
            "consent": "c1",
            "purpose": "p",
            "category": "energy",
            "items": [
                {"metric": "energy", "subject": "hh", "device": "m1", "start": 5, "window_s": 60, "count": 2,
                 "last": 10, "delta": 0.5},
            ],
        }
    )  # fmt: skip
    assert LineBuilder(scope=Scope(bytes(16))).batch_lines(batch) == [
        # no gateway tag: it would let an analyst join a household's purposes; the household tag is the cloud's
        # keyed BLAKE2b of (gateway, purpose) (golden value: a changed derivation would split every series)
        "energy,category=energy,device=m1,household=h-1af4a55816ea177c0445,purpose=p,subject=hh count=2i,window_s=60i,"
        "last=10.0,delta=0.5 5"
    ]


# tag values: no newline (line separator), no trailing backslash (would escape the separator), not empty
_tag_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"), min_size=1, max_size=20
)
_field_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@pytest.mark.influx
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    meas=_tag_text.filter(lambda s: not s.startswith(("_", "#")) and s.strip() == s),
    tag=_tag_text,
    fval=_finite,
    ival=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    sval=_field_text,
    ts=st.integers(min_value=0, max_value=4_000_000_000_000),
)
def test_roundtrip_through_real_influxdb(
    influxdb: InfluxDB, influx_db: str, meas: str, tag: str, fval: float, ival: int, sval: str, ts: int
) -> None:
    """Whatever we escape, InfluxDB parses back to the same measurement, tag, fields and time."""
    influxdb.query("DROP SERIES FROM /.*/", db=influx_db)
    text = line(meas, {"k e,y=": tag}, {"f": fval, "i": ival, "s": sval}, ts)
    influxdb.write_lines(text, db=influx_db)
    rows = influxdb.query_rows("SELECT * FROM /.*/", db=influx_db)
    assert len(rows) == 1, (text, rows)
    row = rows[0]
    assert row["_measurement"] == meas
    assert row["k e,y="] == tag
    assert float(row["f"]) == fval  # InfluxDB prints 4.8e16 as 48...0: compare as floats
    assert row["i"] == ival
    assert row["s"] == sval
    assert row["time"] == ts


def test_a_measurement_that_would_be_a_comment_is_refused() -> None:
    """Found by the round trip above: ``#...`` starts a comment line, and InfluxDB answers 204 having stored
    nothing. Refused, not silently lost."""
    with pytest.raises(ValueError, match="comment"):
        line("#", {"t": "a"}, {"f": 1.0}, 0)


# ------------------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.influx
def test_v1_writer_writes_and_keeps_the_connection(influxdb: InfluxDB, influx_db: str) -> None:
    writer = InfluxV1Writer(influxdb.url, influx_db)
    try:
        writer.write(b"m,t=a v=1 1000")
        writer.write(b"m,t=a v=2 2000\nm,t=b v=3 2000")
        writer.write(b"m,t=a v=1 1000")  # same point again: overwritten, not doubled
    finally:
        writer.close()
    rows = influxdb.query_rows('SELECT count("v") FROM "m"', db=influx_db)
    assert rows[0]["count"] == 3


@pytest.mark.influx
@pytest.mark.parametrize(
    ("db", "body", "status"),
    [
        ("exists", b"not line protocol", 400),
        ("exists", b'm v=1 1000\nm v="s" 2000', 400),  # field type conflict: partial write
        ("does_not_exist", b"m v=1 1000", 404),
    ],
)
def test_v1_writer_4xx_is_not_retriable(influxdb: InfluxDB, influx_db: str, db: str, body: bytes, status: int) -> None:
    writer = InfluxV1Writer(influxdb.url, influx_db if db == "exists" else db)
    try:
        with pytest.raises(WriteError) as info:
            write_with_retry(writer, body, RetryPolicy(initial=0.01))  # would loop for ever if it retried
    finally:
        writer.close()
    assert info.value.status == status
    assert info.value.retriable is False


def test_v1_writer_connection_refused_is_retriable() -> None:
    from tests.kit import free_port

    writer = InfluxV1Writer(f"http://127.0.0.1:{free_port()}", "db", timeout=1)
    with pytest.raises(WriteError) as info:
        writer.write(b"m v=1 1")
    assert info.value.retriable is True
    writer.close()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers with the queued statuses and records each request (path, headers, body)."""

    statuses: list[int]
    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status = self.statuses.pop(0) if self.statuses else 204
        self.send_response(status)
        payload = b'{"error":"boom"}' if status >= 300 else b""
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_http() -> Iterator[type[_Recorder]]:
    """A tiny local HTTP server. Used only for what the real InfluxDB 1.6.7 cannot show on demand:
    a 5xx answer, and the request shape of the v2 API (no 2.x server is packaged by Debian here)."""
    handler = type("Handler", (_Recorder,), {"statuses": [], "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_v1_writer_retries_5xx_then_succeeds(fake_http: type[_Recorder]) -> None:
    # A fake on purpose: real InfluxDB cannot be made to answer 500 on demand.
    fake_http.statuses[:] = [500, 503]
    writer = InfluxV1Writer(fake_http.url, "db", "rp1", username="u", password="p")  # type: ignore[attr-defined]
    retries: list[int] = []
    try:
        n = write_with_retry(writer, b"m v=1 1", RetryPolicy(initial=0.01), on_retry=lambda e, a: retries.append(a))
    finally:
        writer.close()
    assert n == 2
    assert retries == [0, 1]
    assert len(fake_http.requests) == 3
    req = fake_http.requests[-1]
    assert req["path"] == "/write?db=db&precision=ms&rp=rp1"
    assert req["headers"]["Authorization"] == "Basic dTpw"
    assert req["body"] == b"m v=1 1"


def test_retry_policy_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(initial=0.1, maximum=1.0)
    delays = [policy.delay(a) for a in range(200)]
    assert all(0.0 <= d <= min(1.0, 0.1 * 2**a) for a, d in enumerate(delays))
    assert len(set(delays)) == len(delays)  # jittered: no two retries wait the same
    assert min(delays[10:]) < 0.5 < max(delays[10:])  # full jitter: the whole [0, maximum] once capped


def test_retry_attempts_exhausted_raises(fake_http: type[_Recorder]) -> None:
    fake_http.statuses[:] = [500] * 5
    writer = InfluxV1Writer(fake_http.url, "db")  # type: ignore[attr-defined]
    try:
        with pytest.raises(WriteError) as info:
            write_with_retry(writer, b"m v=1 1", RetryPolicy(initial=0.001, attempts=3))
    finally:
        writer.close()
    assert info.value.status == 500
    assert info.value.retriable is True
    assert len(fake_http.requests) == 3


@pytest.mark.influx
def test_v2_writer_against_influxdb_1_6_raises_404_not_silence(influxdb: InfluxDB) -> None:
    writer = InfluxV2Writer(influxdb.url, "org", "bucket", "token")
    try:
        with pytest.raises(WriteError) as info:
            writer.write(b"m v=1 1")
    finally:
        writer.close()
    assert info.value.status == 404
    assert info.value.retriable is False


def test_v2_writer_request_shape(fake_http: type[_Recorder]) -> None:
    # No InfluxDB 2.x is packaged by Debian here: check the request against a recording server instead.
    writer = InfluxV2Writer(fake_http.url, "my-org", "my-bucket", "s3cret")  # type: ignore[attr-defined]
    try:
        writer.write(b"m,t=a v=1 1000\nm,t=b v=2 1000")
        fake_http.statuses[:] = [503]
        with pytest.raises(WriteError) as info:
            writer.write(b"m v=1 1")
    finally:
        writer.close()
    assert info.value.retriable is True
    assert info.value.status == 503
    req = fake_http.requests[0]
    assert req["path"].startswith("/api/v2/write?")
    query = dict(p.split("=", 1) for p in req["path"].split("?", 1)[1].split("&"))
    assert query == {"org": "my-org", "bucket": "my-bucket", "precision": "ms"}
    assert req["headers"]["Authorization"] == "Token s3cret"
    assert req["body"] == b"m,t=a v=1 1000\nm,t=b v=2 1000"

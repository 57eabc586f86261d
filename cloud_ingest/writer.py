"""InfluxDB writers: line protocol in, HTTP status out, with typed errors and a bounded retry policy.

HTTP facts relied on:

- v1 API ``POST /write?db=<db>&rp=<rp>&precision=ms``: ``204 No Content`` when every point was accepted;
  ``400`` for unparsable lines and for a "partial write" (e.g. a field type conflict: the good points of
  the request ARE stored, the bad ones dropped); ``401``/``403`` for credentials; ``404`` when the database
  does not exist; ``413`` when the body is too large; ``5xx`` when the server is unwell (retry later).
- v2 API ``POST /api/v2/write?org=&bucket=&precision=ms`` with ``Authorization: Token <token>``; same status
  semantics. InfluxDB 1.6.7 has no such endpoint and answers 404.

A write is all-or-nothing from our point of view: only a 2xx lets the ingester acknowledge the MQTT messages
whose points were in the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cloud_ingest.influx import InfluxError, InfluxV1Connection, is_retriable
from kyojo.runtime.backoff import jittered

log = logging.getLogger(__name__)


class WriteError(InfluxError):
    """A write InfluxDB did not accept. ``retriable`` is True for 5xx, 429, timeouts and connection errors."""

    def __init__(self, message: str, *, retriable: bool, status: int | None = None, body: str = "") -> None:
        super().__init__(message, status=status, body=body, retriable=retriable)


class Writer(Protocol):
    """What the ingester needs from a writer: write one body of line protocol, or raise WriteError."""

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


def classify(status: int, body: str) -> WriteError | None:
    """Map an HTTP status to None (success) or the WriteError to raise."""
    if 200 <= status < 300:
        return None
    message = f"InfluxDB answered {status}: {body[:300]}"
    return WriteError(message, retriable=is_retriable(status), status=status, body=body)


class InfluxV1Writer:
    """Writes to the InfluxDB 1.x API (``/write``) over one keep-alive HTTP connection
    (:class:`cloud_ingest.influx.InfluxV1Connection`).

    Not thread-safe: one writer per writing thread.
    """

    def __init__(
        self,
        url: str,
        db: str,
        rp: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._http = InfluxV1Connection(
            url, username=username, password=password, ca=ca, timeout=timeout, keep_alive=True, error=WriteError
        )
        self.url = url
        query = {"db": db, "precision": "ms"}
        if rp:
            query["rp"] = rp
        self._path = self._http.target("/write", query)
        self._headers = {**self._http.headers, "Content-Type": "text/plain; charset=utf-8"}

    def write(self, body: bytes) -> None:
        """POST one body; raise WriteError unless InfluxDB answered 2xx."""
        status, data = self._http.request("POST", self._path, body, self._headers)
        if not 200 <= status < 300:
            error = classify(status, data.decode("utf-8", "replace"))
            if error is not None:
                raise error

    def close(self) -> None:
        """Close the keep-alive connection (the next write reconnects)."""
        self._http.close()


class InfluxV2Writer:
    """Writes to the InfluxDB 2.x API (``/api/v2/write``) through influxdb-client, synchronously.

    influxdb-client's default batching mode reports failures only to a callback (they would be silent here),
    so this uses the SYNCHRONOUS write API and passes line-protocol text, never ``Point`` objects.
    """

    def __init__(self, url: str, org: str, bucket: str, token: str, *, timeout: float = 10.0) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = url
        self._org = org
        self._bucket = bucket
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout * 1000))
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        """Write one body; raise WriteError unless the server answered 2xx."""
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            precision: Any = WritePrecision.MS  # a str constant; the stubs want the class
            self._api.write(bucket=self._bucket, org=self._org, record=body, write_precision=precision)
        except ApiException as err:
            raise classify(int(err.status or 0), str(err.body or err.reason or "")) or WriteError(
                str(err), retriable=True
            ) from err
        except (HTTPError, OSError) as err:
            raise WriteError(f"cannot write to {self.url}: {err!r}", retriable=True) from err

    def close(self) -> None:
        """Release the HTTP pool."""
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (:func:`kyojo.runtime.backoff.jittered`): uniform in ``[0, d]``,
    ``d = min(maximum, initial * multiplier**n)``.

    ``attempts=None`` retries for ever (until the stop event is set).
    """

    initial: float = 0.05
    maximum: float = 5.0
    multiplier: float = 2.0
    attempts: int | None = None

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        return jittered(attempt, self.initial, self.maximum, multiplier=self.multiplier)


def write_with_retry(
    writer: Writer,
    body: bytes,
    policy: RetryPolicy,
    stop: threading.Event | None = None,
    on_retry: Callable[[WriteError, int], Any] | None = None,
) -> int:
    """Write, retrying retriable errors with backoff. Returns the number of retries made.

    Raises the WriteError when it is not retriable, when ``policy.attempts`` is exhausted, or when ``stop`` is
    set while waiting.
    """
    attempt = 0
    while True:
        try:
            writer.write(body)
            return attempt
        except WriteError as err:
            if not err.retriable or (policy.attempts is not None and attempt + 1 >= policy.attempts):
                raise
            if on_retry is not None:
                on_retry(err, attempt)
            wait = policy.delay(attempt)
            attempt += 1
            if stop is not None:
                if stop.wait(wait):
                    raise
            else:
                time.sleep(wait)


def join_lines(lines: Sequence[str]) -> bytes:
    """Lines to one request body."""
    return "\n".join(lines).encode()

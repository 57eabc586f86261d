"""The InfluxDB 1.x HTTP API, once: one connection class and one error type for every v1 client of the cloud.

Users: the ingester's hot write path (:class:`cloud_ingest.writer.InfluxV1Writer`, one keep-alive connection),
erasure and rollups (:class:`cloud_ingest.erasure.InfluxV1Admin`), ``kyojo query`` and ``kyojo ingest init-db``
(:class:`cloud_ingest.analysis.run.InfluxQL`). The test harness's own client
(``provisioning/services/influxdb.py``) stays separate on purpose: it is the harness, not the product.

HTTP facts relied on: ``POST /write?db=&rp=&precision=`` and ``POST /query`` (``db``, ``q``, ``epoch`` in the
query string or as a form body) answer 2xx on success; ``/query`` reports InfluxQL errors as ``"error"`` in
the document or in one of its ``results``; ``5xx`` and ``429`` mean "come back later".

Every InfluxQL identifier built from a flag or a setting goes through :func:`ident` (double-quoted, ``\\`` and
``"`` escaped), so a name is a name, never InfluxQL.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from kyojo.contract.errors import KyojoError


def is_retriable(status: int | None) -> bool:
    """Whether a request that failed with ``status`` (None: no answer, a timeout or a connection error) may be
    retried later: 5xx, 429 (too many requests) and no answer at all."""
    return status is None or status >= 500 or status == 429


class InfluxError(KyojoError):
    """InfluxDB refused a request (``status``, ``body``) or could not be reached (``status`` None).

    ``retriable`` defaults to :func:`is_retriable` of the status.
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: str = "", retriable: bool | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.retriable = is_retriable(status) if retriable is None else retriable
        super().__init__(message)


def ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted (``"`` and ``\\`` escaped): an operator's flag can name a
    measurement, field or database, never smuggle a statement."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxV1Connection:
    """One HTTP(S) connection to an InfluxDB 1.x API (or a 2.x/3.x v1-compatibility endpoint).

    ``https://`` URLs use TLS (``ca``: a CA bundle to trust, e.g. a private CA); ``username``/``password`` are
    sent as HTTP Basic, ``token`` as ``Authorization: Token <token>``. ``keep_alive=True`` keeps the connection
    open between requests (reopened after an error or when the server closes it); ``False`` opens one per
    request. ``default_port`` applies when the URL names none (None: 80/443). Failures raise ``error`` (a
    subclass of :class:`InfluxError`, so each client keeps its own exception type).

    Not thread-safe: one connection per thread.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        ca: str | None = None,
        timeout: float = 10.0,
        keep_alive: bool = True,
        default_port: int | None = None,
        error: type[InfluxError] = InfluxError,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or default_port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.error = error
        #: the authentication header(s) every request carries; callers add their own Content-Type
        self.headers: dict[str, str] = {}
        if username is not None:
            basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        elif token:
            self.headers["Authorization"] = f"Token {token}"
        # None: http.client's default context (system CAs, ALPN http/1.1)
        self._ssl = ssl.create_default_context(cafile=ca) if self.https and ca else None
        self._conn: http.client.HTTPConnection | None = None

    def target(self, endpoint: str, params: Mapping[str, str] | None = None) -> str:
        """The request target of ``endpoint`` (``/write``, ``/query``) under the URL's path, with its query."""
        return f"{self.prefix}{endpoint}?{urlencode(params)}" if params else f"{self.prefix}{endpoint}"

    def _open(self) -> http.client.HTTPConnection:
        if self.https:
            self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
        else:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(
        self, method: str, target: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request; return the status and the body, whatever the status.

        ``headers`` replaces :attr:`headers` (pass ``{**conn.headers, ...}`` to add some). A timeout, a
        connection error or a malformed answer closes the connection and raises ``error`` (retriable, no
        status).
        """
        conn = self._conn if self._conn is not None else self._open()
        try:
            conn.request(method, target, body=body, headers=self.headers if headers is None else headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError as err:
            self.close()
            raise self.error(f"timeout talking to InfluxDB at {self.url}: {err}", retriable=True) from err
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise self.error(f"InfluxDB unreachable at {self.url}: {err!r}", retriable=True) from err
        if not self.keep_alive or resp.will_close:
            self.close()
        return resp.status, data

    def post(self, endpoint: str, params: Mapping[str, str], body: bytes = b"") -> bytes:
        """POST with ``params`` in the query string; the answer's body, or ``error`` unless it was 2xx."""
        status, data = self.request("POST", self.target(endpoint, params), body)
        if not 200 <= status < 300:
            text = data.decode("utf-8", "replace")
            raise self.error(f"InfluxDB {status}: {data[:300]!r}", status=status, body=text)
        return data

    def query(self, params: Mapping[str, str], *, form: bool = False) -> list[dict[str, Any]]:
        """``POST /query`` (``params``: ``db``, ``q``, optionally ``epoch``), in the query string or, with
        ``form``, as a form body. Returns the document's ``results``; raises ``error`` on any InfluxQL error."""
        if form:
            headers = {**self.headers, "Content-Type": "application/x-www-form-urlencoded"}
            status, data = self.request("POST", self.target("/query"), urlencode(params).encode(), headers)
            if not 200 <= status < 300:
                text = data.decode("utf-8", "replace")
                raise self.error(f"InfluxDB {status}: {data[:300]!r}", status=status, body=text)
        else:
            data = self.post("/query", params)
        doc = json.loads(data)
        if "error" in doc:
            raise self.error(f"InfluxQL error: {doc['error']}", status=200, body=str(doc["error"]), retriable=False)
        results: list[dict[str, Any]] = doc.get("results", [])
        for r in results:
            if "error" in r:
                raise self.error(f"InfluxQL error: {r['error']}", status=200, body=str(r["error"]), retriable=False)
        return results

    def close(self) -> None:
        """Close the connection (the next request reopens it)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

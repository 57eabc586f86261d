"""A real VictoriaMetrics (Debian's ``victoria-metrics``, single node) on loopback: :class:`VictoriaMetrics`.

What the cloud side relies on (VictoriaMetrics 1.79, Debian bookworm; proven by tests/ingest/test_victoria.py):

- ``POST /write?db=<db>&precision=ms`` takes InfluxDB line protocol and answers 204, so the ingester's v1 writer
  (:class:`cloud_ingest.writer.InfluxV1Writer`) writes to it unchanged. Each field becomes its own series named
  ``<measurement>_<field>`` (``power_mean``, ``power_last`` ...); the tags become labels, plus ``db=<db>``.
- Numbers and booleans are kept. A string field (an event's ``event_id``) becomes a sample of value 0: the event
  is still counted, its text is lost.
- VictoriaMetrics stores every sample it receives: the same series and timestamp written twice is TWO samples
  unless deduplication is on. ``-dedup.minScrapeInterval=1ms`` keeps the last sample per series and millisecond,
  which is InfluxDB's "same measurement + tags + timestamp overwrites" for Kyojo's millisecond timestamps:
  a redelivered batch does not double. It is on by default here (``dedup``).
- Samples become visible to queries only after an in-memory buffer is flushed (about a second);
  ``GET /internal/force_flush`` flushes it now (tests use it instead of waiting).
"""

import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

from provisioning.services.errors import ServiceError
from provisioning.services.process import _Service, free_port


class VictoriaMetrics(_Service):
    """``victoria-metrics`` with its data under ``workdir/data`` and its log in ``workdir/victoria-metrics.log``.

    ``dedup``: the ``-dedup.minScrapeInterval`` value ("" turns deduplication off, to show what it is for).
    ``retention``: ``-retentionPeriod`` (Kyojo's purposes keep data for up to 730 days; samples older than the
    retention are refused, so it must cover a gateway's longest outage too).
    """

    name = "victoria-metrics"
    package = "victoria-metrics"

    def __init__(
        self,
        workdir: Path,
        http_port: int | None = None,
        *,
        host: str = "127.0.0.1",
        dedup: str = "1ms",
        retention: str = "100y",
    ) -> None:
        super().__init__(workdir, host, http_port if http_port is not None else free_port(host))
        self.dedup = dedup
        self.retention = retention

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8428`` (the ingester's ``influx_url``)."""
        return f"http://{self._host}:{self._port}"

    @property
    def log_path(self) -> Path:
        """stdout/stderr of the process."""
        return self.workdir / "victoria-metrics.log"

    def _write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)

    def _command(self, binary: str) -> list[str]:
        cmd = [
            binary,
            f"-httpListenAddr={self._host}:{self._port}",
            f"-storageDataPath={self.workdir / 'data'}",
            f"-retentionPeriod={self.retention}",
            "-loggerLevel=WARN",
            "-search.latencyOffset=0s",  # tests query what they just wrote
        ]
        if self.dedup:
            cmd.append(f"-dedup.minScrapeInterval={self.dedup}")
        return cmd

    def _ready(self) -> bool:
        try:
            status, _ = self._request("GET", "/health", timeout=0.5)
        except OSError:
            return False
        return status == 200

    def start(self, timeout: float = 30.0) -> None:
        """Spawn victoria-metrics and wait until ``GET /health`` answers 200."""
        super().start(timeout)

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request(method, path, body=body)
            with conn.getresponse() as resp:
                return resp.status, resp.read()
        finally:
            conn.close()

    def force_flush(self) -> None:
        """Make every sample received so far visible to queries."""
        status, raw = self._request("GET", "/internal/force_flush")
        if status != 200:
            raise ServiceError(f"force_flush: HTTP {status}: {raw[:200]!r}")

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of the series matching the selector ``match`` (``/api/v1/export``): one dict per series,
        ``{"metric": {labels}, "values": [...], "timestamps": [ms ...]}``."""
        path = "/api/v1/export?" + urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, raw = self._request("GET", path)
        if status != 200:
            raise ServiceError(f"export {match!r}: HTTP {status}: {raw[:200]!r}")
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def samples(self, match: str) -> int:
        """Number of stored samples of the series matching ``match``."""
        return sum(len(s["timestamps"]) for s in self.export(match))

    def query(self, promql: str, at_ms: int) -> list[dict[str, Any]]:
        """An instant query (``/api/v1/query``, MetricsQL) at ``at_ms``; the ``result`` list."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at_ms / 1000:.3f}"})
        status, raw = self._request("GET", f"/api/v1/query?{params}")
        if status != 200:
            raise ServiceError(f"query {promql!r}: HTTP {status}: {raw[:200]!r}")
        result: list[dict[str, Any]] = json.loads(raw)["data"]["result"]
        return result

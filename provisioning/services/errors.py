"""The errors the local services raise: :class:`ServiceError` and its HTTP flavour :class:`InfluxDBError`."""

from kyojo.contract.errors import KyojoError

#: Lines of a service log quoted in a ServiceError.
_LOG_TAIL_LINES = 20


class ServiceError(KyojoError, RuntimeError):
    """A local service is missing, failed to start, or failed while running."""


class InfluxDBError(ServiceError):
    """InfluxDB answered an HTTP request with an error (bad query, bad line protocol, missing database)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

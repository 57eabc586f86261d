"""The error base every part raises on purpose, and the errors of the shared vocabulary (stdlib only)."""

from __future__ import annotations

__all__ = ["KyojoError", "ParseError", "ReadingError"]


class KyojoError(Exception):
    """Base of every error Kyojo raises on purpose."""


class ParseError(KyojoError, ValueError):
    """Bytes, a sentence, a frame or a payload that a parser cannot turn into Readings.

    ``reason`` is a short stable cause (used as a counter label); ``raw`` is the offending input.
    """

    def __init__(
        self, reason: str, *, raw: bytes | str | None = None, device: str | None = None, detail: str = ""
    ) -> None:
        self.reason = reason
        self.raw = raw
        self.device = device
        self.detail = detail
        msg = reason if not detail else f"{reason}: {detail}"
        if device:
            msg = f"{device}: {msg}"
        super().__init__(msg)


class ReadingError(KyojoError, ValueError):
    """A Reading that breaks the vocabulary (unknown metric, wrong unit, non-finite value)."""

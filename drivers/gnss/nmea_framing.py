"""Byte framing: :class:`NmeaDecoder` turns arbitrary serial chunks into decoded sentences, counting rejects.

It takes binary noise, run-together and truncated sentences, CR, LF or CRLF, never raises on bad input and
counts each reject by reason in :attr:`NmeaDecoder.stats`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.gnss.nmea_parse import parse_sentence
from drivers.gnss.nmea_sentences import (
    MAX_SENTENCE,
    NmeaError,
    Reject,
    Sentence,
    UnsupportedSentence,
    unknown_values,
)

# ----------------------------------------------------------------------------------------------------------
# Stream decoder
# ----------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DecoderStats:
    """What the stream decoder saw. ``rejects`` counts by :class:`Reject` value (``unsupported`` excluded)."""

    bytes: int = 0
    sentences: int = 0  # decoded
    by_type: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    unsupported: Counter[str] = field(default_factory=Counter)  # well-formed, not ours: by address field
    #: sentences decoded although a field held a value the parser does not know, by ``<TYPE>.<field>``
    reserved_values: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "sentences": self.sentences,
            "by_type": dict(sorted(self.by_type.items())),
            "rejects": dict(sorted(self.rejects.items())),
            "unsupported": dict(sorted(self.unsupported.items())),
            "reserved_values": dict(sorted(self.reserved_values.items())),
        }


class NmeaDecoder:
    """Bytes as they arrive -> decoded sentences. Never raises on input; counts what it drops.

    Lines end at CR or LF. Within a line every ``$`` starts a sentence, so two sentences run together
    (``...*1E$GPRMC,...``) both get their chance, and a sentence interrupted by the next ``$`` fails its own
    checks (``truncated``). Text before the first ``$`` of a line is ``noise`` unless blank. A partial line
    waits for more bytes; :meth:`flush` decodes it at the end of a stream.
    """

    def __init__(self, *, on_unknown: Callable[[str, str], None] | None = None) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()
        self.last_error: NmeaError | None = None
        #: called with (``<TYPE>.<field>``, value) for each unknown value kept (the transport logs, rate-limited)
        self.on_unknown = on_unknown

    def feed(self, data: bytes) -> list[Sentence]:
        """Decode every complete line in ``data`` (plus what was buffered)."""
        self.stats.bytes += len(data)
        self._buf += data
        out: list[Sentence] = []
        start = 0
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n:
            b = buf[i]
            if b in (0x0A, 0x0D):
                if i > start:
                    self._line(bytes(buf[start:i]), out)
                start = i + 1
            i += 1
        rest = buf[start:]
        if len(rest) > MAX_SENTENCE:
            # no line end in sight: keep only from the last '$' (a sentence may be arriving), drop the rest
            cut = rest.rfind(b"$")
            keep = rest[cut:] if cut >= 0 and len(rest) - cut <= MAX_SENTENCE else b""
            self._line(bytes(rest[: len(rest) - len(keep)]), out)
            rest = bytearray(keep)
        self._buf = bytearray(rest)
        return out

    def flush(self) -> list[Sentence]:
        """End of stream: decode the partial last line (usually a truncated sentence)."""
        out: list[Sentence] = []
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf = bytearray()
        return out

    def reset(self) -> None:
        """Forget a partial line (e.g. after a reconnect); keeps the counters."""
        self._buf = bytearray()

    def _line(self, line: bytes, out: list[Sentence]) -> None:
        parts = line.split(b"$")
        head = parts[0]
        if head.strip(b" \t\x00"):
            self._reject(NmeaError(Reject.NOISE, raw=head, detail=f"{len(head)} bytes"))
        last = len(parts) - 1
        for k, part in enumerate(parts[1:], start=1):
            if k < last and b"*" not in part:
                # the next '$' arrived before this sentence's checksum: it was cut off
                self._reject(NmeaError(Reject.TRUNCATED, raw=b"$" + part, detail="interrupted by '$'"))
                continue
            self._one(b"$" + part, out)

    def _one(self, raw: bytes, out: list[Sentence]) -> None:
        try:
            s = parse_sentence(raw)
        except UnsupportedSentence as err:
            self.stats.unsupported[err.sentence_type] += 1
            return
        except NmeaError as err:
            self._reject(err)
            return
        self.stats.sentences += 1
        self.stats.by_type[type(s).__name__] += 1
        for name, value in unknown_values(s).items():
            self.stats.reserved_values[name] += 1
            if self.on_unknown is not None:
                self.on_unknown(name, value)
        out.append(s)

    def _reject(self, err: NmeaError) -> None:
        self.stats.rejects[err.reason] += 1
        self.last_error = err

"""The errors of the BLE parsers: one base (:class:`BleParseError`, a :class:`kyojo.contract.errors.ParseError`) and a
subclass per cause, each with the byte ``offset`` where decoding stopped."""

from __future__ import annotations

from kyojo.contract.vocab import ParseError


class BleParseError(ParseError):
    """A characteristic value that cannot be decoded.

    ``reason`` is a stable label (a counter key), ``detail`` the human message, ``offset`` the byte offset in
    the value where the problem was found, ``characteristic`` the 16-bit UUID when known.
    """

    reason_label = "invalid"

    def __init__(
        self,
        detail: str,
        *,
        offset: int,
        raw: bytes | None = None,
        characteristic: int | None = None,
        device: str | None = None,
    ) -> None:
        self.offset = offset
        self.characteristic = characteristic
        super().__init__(self.reason_label, raw=raw, device=device, detail=detail)


class Truncated(BleParseError):
    """A field announced by the flags (or always present) does not fit in the value."""

    reason_label = "truncated"

    def __init__(self, *, need: int, offset: int, have: int, raw: bytes | None = None) -> None:
        self.need = need
        self.have = have
        super().__init__(f"need {need} bytes at offset {offset}, have {have}", offset=offset, raw=raw)


class TrailingBytes(BleParseError):
    """Bytes left after the last field the flags announce (strict length policy)."""

    reason_label = "trailing_bytes"


class BadLength(BleParseError):
    """A fixed-size characteristic (Date Time, Current Time, Battery Level) with the wrong size."""

    reason_label = "length"


class Inconsistent(BleParseError):
    """Fields that contradict each other (e.g. the RR-Interval flag with no or an odd number of RR bytes).

    A value reserved for future use is never this error: it is decoded and reported
    (:func:`drivers.ble.gatt.reserved_values`).
    """

    reason_label = "inconsistent"


class UnknownCharacteristic(BleParseError):
    """A characteristic UUID this package has no decoder for (or a malformed UUID)."""

    reason_label = "unknown_characteristic"

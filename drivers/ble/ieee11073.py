"""IEEE 11073-20601 number formats used by the health profiles (BPS, HTS, GLS, PLXS).

- SFLOAT (16 bit): bits 15..12 exponent, 4-bit two's complement (-8..7); bits 11..0 mantissa, 12-bit two's
  complement. value = mantissa x 10**exponent.
- FLOAT (32 bit): bits 31..24 exponent, signed 8 bit; bits 23..0 mantissa, signed 24 bit.

The exponent is plain two's complement, **not** biased (some libraries add a bias of 8 / 128 and decode
``62 00`` wrongly). Special values exist only with exponent 0 (``0x77FF`` is 2047e7, a number): NaN, NRes
("not at this resolution"), +INF, -INF and one reserved word; they decode to :class:`Special`, never to a float,
so that no special value can be mistaken for a measurement.
"""

from __future__ import annotations

from enum import StrEnum


class Special(StrEnum):
    """An IEEE-11073 special value (its string is the name used in the test vectors)."""

    NAN = "NaN"
    NRES = "NRes"
    POS_INF = "+INF"
    NEG_INF = "-INF"
    RESERVED = "RESERVED"


#: a decoded SFLOAT/FLOAT: a finite float, or a special value
Number = float | Special

# Special mantissas (exponent 0): 2**11-1 NaN, -2**11 NRes, 2**11-2 +INF, -(2**11-2) -INF, -(2**11-1) reserved
_SFLOAT_SPECIAL: dict[int, Special] = {
    0x07FF: Special.NAN,
    0x0800: Special.NRES,
    0x07FE: Special.POS_INF,
    0x0802: Special.NEG_INF,
    0x0801: Special.RESERVED,
}
# The same for FLOAT with 24-bit mantissas.
_FLOAT_SPECIAL: dict[int, Special] = {
    0x007FFFFF: Special.NAN,
    0x00800000: Special.NRES,
    0x007FFFFE: Special.POS_INF,
    0x00800002: Special.NEG_INF,
    0x00800001: Special.RESERVED,
}


def _scale(mantissa: int, exponent: int) -> float:
    # Divide for negative exponents: 189 / 10 is the double nearest 18.9, 189 * 0.1 is not.
    if exponent >= 0:
        return float(mantissa * 10**exponent)
    divisor: int = 10**-exponent
    return mantissa / divisor


def sfloat_from_word(word: int) -> Number:
    """Decode a 16-bit SFLOAT given as an unsigned integer (0..0xFFFF)."""
    if not 0 <= word <= 0xFFFF:
        raise ValueError(f"SFLOAT word out of range: {word}")
    special = _SFLOAT_SPECIAL.get(word)
    if special is not None:
        return special
    mantissa = word & 0x0FFF
    if mantissa >= 0x0800:
        mantissa -= 0x1000
    exponent = word >> 12
    if exponent >= 0x8:
        exponent -= 0x10
    return _scale(mantissa, exponent)


def float_from_word(word: int) -> Number:
    """Decode a 32-bit FLOAT given as an unsigned integer (0..0xFFFFFFFF)."""
    if not 0 <= word <= 0xFFFFFFFF:
        raise ValueError(f"FLOAT word out of range: {word}")
    special = _FLOAT_SPECIAL.get(word)
    if special is not None:
        return special
    mantissa = word & 0x00FFFFFF
    if mantissa >= 0x00800000:
        mantissa -= 0x01000000
    exponent = word >> 24
    if exponent >= 0x80:
        exponent -= 0x100
    return _scale(mantissa, exponent)


def decode_sfloat(data: bytes) -> Number:
    """Decode exactly two little-endian bytes as an SFLOAT (ValueError on any other length)."""
    if len(data) != 2:
        raise ValueError(f"SFLOAT is exactly 2 bytes, got {len(data)}")
    return sfloat_from_word(int.from_bytes(data, "little"))


def decode_float(data: bytes) -> Number:
    """Decode exactly four little-endian bytes as a FLOAT (ValueError on any other length)."""
    if len(data) != 4:
        raise ValueError(f"FLOAT is exactly 4 bytes, got {len(data)}")
    return float_from_word(int.from_bytes(data, "little"))
